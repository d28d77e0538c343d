"""What the pruner sees: the objective at each validation, the worst value while the trial violates the
constraint (a collapsed trial is the first one stopped), and the baseline's rungs (it competes, never pruned)."""

from __future__ import annotations

import math

import optuna
import pytest

from harmonica.sweep.space import read_space
from harmonica.sweep.study import TrialPrunedRun, ValidationReporter
from tests.sweep.conftest import write_space

FLOOR = {"metric": "val/util_pred_median", "min": 0.1}


def _space(tmp_path, direction="minimize", constraint=FLOOR, pruner=None):
    objective = {"type": "single", "metric": "val_ema/loss", "direction": direction}
    if constraint:
        objective["constraint"] = constraint
    return read_space(write_space(tmp_path, objective=objective, pruner=pruner or {"type": "successive_halving"}))


def _trial(pruner=None):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(pruner=pruner or optuna.pruners.NopPruner())
    return study, study.ask()


@pytest.mark.parametrize(("direction", "worst"), [("minimize", math.inf), ("maximize", -math.inf)])
def test_a_validation_that_violates_the_constraint_reports_the_worst_value(tmp_path, direction, worst):
    space = _space(tmp_path, direction)
    _, trial = _trial()
    reporter = ValidationReporter(trial, space, tracker=None, prune=True)
    reporter(10, {"val_ema/loss": 5.2, "val/util_pred_median": 0.3})   # feasible: the objective itself
    reporter(20, {"val_ema/loss": 5.1, "val/util_pred_median": 0.05})  # collapsed: the worst value
    reporter(30, {"val_ema/loss": 5.0, "val/util_pred_median": float("nan")})  # unmeasured counts as violated
    reporter(40, {"val_ema/loss": 4.9, "val/util_pred_median": 0.1})   # back at the floor: feasible again
    assert trial.storage.get_trial(trial._trial_id).intermediate_values == {10: 5.2, 20: worst, 30: worst, 40: 4.9}
    assert reporter.last_metrics["val_ema/loss"] == 4.9  # what the run logs is untouched


def test_constraint_aware_pruning_can_be_switched_off_and_needs_a_constraint(tmp_path):
    for space, aware in ((_space(tmp_path), False), (_space(tmp_path, constraint=None), True)):
        _, trial = _trial()
        ValidationReporter(trial, space, tracker=None, prune=True, constraint_aware=aware)(
            10, {"val_ema/loss": 5.2, "val/util_pred_median": 0.01})
        assert trial.storage.get_trial(trial._trial_id).intermediate_values == {10: 5.2}
    spec = read_space(write_space(tmp_path, pruner={"type": "successive_halving", "constraint_aware": False})).pruner
    assert spec.constraint_aware is False


def _halving_after_one_trial(tmp_path, loss: float):
    """A successive-halving study (first rung: step 10) whose first trial reached the rung with `loss`."""
    space = _space(tmp_path)
    study, first = _trial(optuna.pruners.SuccessiveHalvingPruner(min_resource=10, reduction_factor=2))
    ValidationReporter(first, space, tracker=None, prune=True)(10, {"val_ema/loss": loss, "val/util_pred_median": 0.4})
    study.tell(first, loss)
    return space, study


def test_a_collapsed_trial_loses_its_rung_to_a_worse_but_feasible_one(tmp_path):
    space, study = _halving_after_one_trial(tmp_path, 5.5)
    collapsed = study.ask()  # a lower loss, but under the floor: stopped at the first rung
    with pytest.raises(TrialPrunedRun):
        ValidationReporter(collapsed, space, tracker=None, prune=True)(
            10, {"val_ema/loss": 5.3, "val/util_pred_median": 0.02})
    study.tell(collapsed, state=optuna.trial.TrialState.PRUNED)
    plain = study.ask()  # the same trial judged by loss alone would go on
    ValidationReporter(plain, space, tracker=None, prune=True, constraint_aware=False)(
        10, {"val_ema/loss": 5.3, "val/util_pred_median": 0.02})


def test_the_baseline_competes_in_the_rungs_but_is_never_pruned(tmp_path):
    space, study = _halving_after_one_trial(tmp_path, 5.0)
    baseline = study.ask()
    reporter = ValidationReporter(baseline, space, tracker=None, prune=False)  # worse than the rung: kept anyway
    reporter.final_step = 30
    reporter(10, {"val_ema/loss": 5.4, "val/util_pred_median": 0.4})
    reporter(30, {"val_ema/loss": 5.3, "val/util_pred_median": 0.4})  # the last step: nothing decided
    attrs = study._storage.get_trial(baseline._trial_id).system_attrs
    assert attrs["completed_rung_0"] == 5.4 and "completed_rung_1" not in attrs
