"""Space files: every bad input is a ConfigError naming the file and the param path."""

from pathlib import Path

import pytest

from harmonica.config import ConfigError, load_config
from harmonica.sweep.space import apply_overrides, load_space, read_space
from tests.sweep.conftest import TINY_SPACE, write_space

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def demo_cfg():
    return load_config("demo")


@pytest.mark.parametrize("name", ["anti_collapse", "anti_collapse_pareto", "ar_scheduled_sampling"])
def test_shipped_space_files_validate(name, demo_cfg):
    space = load_space(ROOT / "projects" / "sweeps" / f"{name}.yaml", demo_cfg)
    assert space.params and space.trials_default
    assert all(k.startswith(f"training.{space.kind}.") for k in space.params)


def _error(tmp_path: Path, demo_cfg, **changes) -> str:
    path = write_space(tmp_path, **changes)
    with pytest.raises(ConfigError) as info:
        load_space(path, demo_cfg)
    msg = str(info.value)
    assert str(path) in msg, msg
    return msg


def _params(**specs):
    return {"params": {**TINY_SPACE["params"], **specs}}


def test_unknown_knob_names_the_closest_valid_key(tmp_path, demo_cfg):
    msg = _error(tmp_path, demo_cfg, **_params(**{"training.nar.codebook_entropy_wieght": {"type": "float", "low": 0.0, "high": 0.1}}))
    assert "unknown key 'training.nar.codebook_entropy_wieght'" in msg
    assert "did you mean 'training.nar.codebook_entropy_weight'" in msg
    msg = _error(tmp_path, demo_cfg, **_params(**{"trainng.nar.lr": {"type": "float", "low": 0.1, "high": 0.2}}))
    assert "did you mean 'training'" in msg


def test_empty_range(tmp_path, demo_cfg):
    msg = _error(tmp_path, demo_cfg, **_params(**{"training.nar.lr": {"type": "float", "low": 1e-3, "high": 1e-3}}))
    assert "params 'training.nar.lr'" in msg and "empty range: low=0.001 must be < high=0.001" in msg
    msg = _error(tmp_path, demo_cfg, **_params(**{"training.nar.warmup_steps": {"type": "int", "low": 20, "high": 5}}))
    assert "params 'training.nar.warmup_steps'" in msg and "empty range" in msg


def test_log_scale_needs_a_positive_low_bound(tmp_path, demo_cfg):
    msg = _error(tmp_path, demo_cfg, **_params(**{"training.nar.usage_entropy_weight": {"type": "float", "low": 0.0, "high": 0.5, "log": True}}))
    assert "params 'training.nar.usage_entropy_weight'" in msg and "log scale needs low > 0" in msg
    msg = _error(tmp_path, demo_cfg, **_params(**{"training.nar.lr": {"type": "float", "low": -1e-3, "high": 1e-3, "log": True}}))
    assert "log scale needs low > 0, got low=-0.001" in msg


def test_bad_categorical(tmp_path, demo_cfg):
    msg = _error(tmp_path, demo_cfg, **_params(**{"training.nar.scheduler_type": {"type": "categorical", "choices": []}}))
    assert "params 'training.nar.scheduler_type'" in msg and "non-empty `choices`" in msg
    msg = _error(tmp_path, demo_cfg, **_params(**{"training.nar.scheduler_type": {"type": "categorical", "low": 0, "high": 1}}))
    assert "takes only `choices`" in msg
    msg = _error(tmp_path, demo_cfg, **_params(**{"training.nar.scheduler_type": {"type": "categorical", "choices": ["cosine", "sine"]}}))
    assert "params 'training.nar.scheduler_type' = sine" in msg and "training.nar.scheduler_type" in msg


def test_values_outside_the_config_schema_and_wrong_types(tmp_path, demo_cfg):
    msg = _error(tmp_path, demo_cfg, **_params(**{"training.nar.label_smoothing": {"type": "float", "low": 0.0, "high": 1.0}}))
    assert "params 'training.nar.label_smoothing' = 1.0" in msg and "less than 1" in msg
    msg = _error(tmp_path, demo_cfg, **_params(**{"training.nar.warmup_steps": {"type": "float", "low": 1, "high": 5}}))
    assert "use type: int" in msg
    msg = _error(tmp_path, demo_cfg, **_params(**{"training.nar.warmup_steps": {"type": "int", "low": 1.5, "high": 5}}))
    assert "integer low" in msg


def test_keys_outside_the_searchable_scope(tmp_path, demo_cfg):
    msg = _error(tmp_path, demo_cfg, **_params(**{"codec.n_q": {"type": "int", "low": 2, "high": 8}}))
    assert "'codec.n_q' cannot be searched" in msg and "token cache" in msg
    msg = _error(tmp_path, demo_cfg, **_params(**{"training.ar.lr": {"type": "float", "low": 1e-4, "high": 1e-3}}))
    assert "did you mean 'training.nar.lr'" in msg
    msg = _error(tmp_path, demo_cfg, **_params(**{"training.nar.collapse": {"type": "float", "low": 0.1, "high": 0.2}}))
    assert "is a section, not a knob" in msg
    msg = _error(tmp_path, demo_cfg, **_params(**{"training.nar.val_every": {"type": "int", "low": 1, "high": 5}}))
    assert "bookkeeping" in msg and "fixed" in msg
    # nested training knobs and the trained model's architecture are searchable
    ok = write_space(tmp_path, "ok.yaml", **_params(**{"training.nar.collapse.util_floor": {"type": "float", "low": 0.05, "high": 0.2},
                                                       "model.nar.dropout": {"type": "float", "low": 0.0, "high": 0.3}}))
    load_space(ok, demo_cfg)


def test_objective_metric_and_fixed_errors(tmp_path, demo_cfg):
    msg = _error(tmp_path, demo_cfg, objective={"type": "single", "metric": "val/lss"})
    assert "'val/lss' is not a validation metric" in msg
    msg = _error(tmp_path, demo_cfg, objective={"type": "single", "metric": "val/cb0/util_pred"})
    assert "NAR predicts codebooks [1, 2, 3], not cb0" in msg
    msg = _error(tmp_path, demo_cfg, objective={"type": "multi", "metrics": [{"name": "val/loss"}]})
    assert "objective.metrics" in msg and "at least 2" in msg
    msg = _error(tmp_path, demo_cfg, objective={"type": "pareto"})
    assert "objective" in msg and "single" in msg and "multi" in msg
    msg = _error(tmp_path, demo_cfg, fixed={"training.nar.totl_steps": 10})
    assert "did you mean 'training.nar.total_steps'" in msg
    msg = _error(tmp_path, demo_cfg, fixed={"training.nar.warmup_steps": 5000})
    assert "fixed" in msg and "warmup_steps=5000 must be < total_steps" in msg
    msg = _error(tmp_path, demo_cfg, objective={"type": "multi", "metrics": [{"name": "val/loss"}, {"name": "val/util_pred_median", "direction": "maximize"}]},
                 pruner="median")
    assert "cannot prune multi-objective" in msg
    msg = _error(tmp_path, demo_cfg, knobs={"a": 1})
    assert "knobs" in msg and "Extra inputs are not permitted" in msg


def test_missing_space_file_suggests_a_name(tmp_path, demo_cfg):
    write_space(tmp_path, "anti_collapse.yaml")
    with pytest.raises(ConfigError, match="did you mean .*anti_collapse.yaml"):
        read_space(tmp_path / "anti_colapse.yaml")


def test_apply_overrides_is_the_last_layer(demo_cfg):
    cfg = apply_overrides(demo_cfg, {"training.nar.lr": 2e-3, "training.nar.collapse.util_floor": 0.2}, "test")
    assert cfg.training.nar.lr == 2e-3 and cfg.training.nar.collapse.util_floor == 0.2
    assert cfg.training.ar.lr == demo_cfg.training.ar.lr
    with pytest.raises(ConfigError, match="test: invalid config"):
        apply_overrides(demo_cfg, {"training.nar.lr": -1}, "test")
