"""A sweep on a terminal: a bar over the study's trials with the best value so far; each trial's
trainer is asked for its own step bar. Off the terminal: no bar, and the trainer is not asked."""

import io
import sys
from types import SimpleNamespace
import pytest

from harmonica.stages.sweep import run_sweep
from tests.sweep.conftest import write_space


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _train(asked: list):
    def train(cfg, kind, workdir, *, parent_run_id, on_validation, run_name, extra_tags, **kw):
        asked.append(kw.get("progress"))
        metrics = {"val_ema/loss": 1.0 / cfg.training.nar.lr, "val/util_pred_median": 0.5, "val/loss": 1.0}
        on_validation(2, metrics)
        return SimpleNamespace(run_id=None, result=SimpleNamespace(state=SimpleNamespace(step=8),
                                                                   final_metrics=metrics))
    return train


@pytest.mark.slow
def test_the_trial_bar_counts_trials_and_shows_the_best_so_far(tmp_path, sweep_workdir, tiny_sweep_cfg, monkeypatch):
    space = write_space(tmp_path, pruner="none")
    stream = Terminal()
    monkeypatch.setattr(sys, "stderr", stream)
    asked: list = []
    out = run_sweep(tiny_sweep_cfg, sweep_workdir, space, n_trials=2, study_name="bar", train_fn=_train(asked),
                    best_config_dir=tmp_path / "p", progress=True)
    text = stream.getvalue()
    assert asked == [True, True]
    assert "sweep bar" in text and "0/2" in text and "2/2" in text, text
    last = text.split("\r")[-1]
    assert f"best=#{out.best_trial} val_ema/loss=" in last and "last=#1 complete @8" in last, last

    # off the terminal: no bar (a plain line per trial instead), and the trainer is not asked for a bar
    quiet = io.StringIO()
    monkeypatch.setattr(sys, "stderr", quiet)
    asked.clear()
    run_sweep(tiny_sweep_cfg, sweep_workdir, space, n_trials=3, study_name="bar", train_fn=_train(asked),
              best_config_dir=tmp_path / "p", progress=True)
    lines = [line for line in quiet.getvalue().splitlines() if line.startswith("sweep bar: ")]
    assert asked == [None]
    assert len(lines) == 1 and lines[0].startswith("sweep bar: 3/3 trial (100%) best=#"), lines
