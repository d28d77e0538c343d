from pathlib import Path

import pytest

from harmonica.config import ConfigError, config_hash, load_config
from harmonica.config.load import parse_override, resolve_layers


def test_projects_load_and_validate():
    for name in ("base", "demo", "ljspeech", "vctk", "vctk_colab"):
        cfg = load_config(name)
        assert cfg.project == name


def test_vctk_colab_carries_the_rca_values():
    t = load_config("vctk_colab").training.ar
    assert (t.lr, t.warmup_steps, t.label_smoothing) == (5e-5, 2000, 0.05)
    assert (t.codebook_entropy_weight, t.codebook_entropy_warmup_steps) == (0.02, 10000)
    assert t.batch_size * t.grad_accum_steps == 16


def test_typo_names_full_path_and_closest_key():
    with pytest.raises(ConfigError) as err:
        load_config("demo", ["training.ar.codebook_entropy_weigth=0.1"])
    msg = str(err.value)
    assert "training.ar.codebook_entropy_weigth" in msg
    assert "did you mean 'training.ar.codebook_entropy_weight'" in msg


def test_typo_in_project_file_names_the_file(tmp_path: Path, root: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  nar:\n    speaker_conditon: prompt\n")
    with pytest.raises(ConfigError) as err:
        load_config(str(bad))
    assert "model.nar.speaker_conditon" in str(err.value)
    assert "model.nar.speaker_condition" in str(err.value)
    assert str(bad) in str(err.value)


def test_unknown_section_and_unknown_project():
    with pytest.raises(ConfigError, match="unknown key 'trainig'"):
        load_config("demo", ["trainig.ar.lr=1"])
    with pytest.raises(ConfigError, match="did you mean 'demo'"):
        load_config("dmeo")


def test_override_precedence(tmp_path: Path):
    base = load_config("base")
    demo = load_config("demo")
    assert base.training.ar.lr == 5e-5  # base.yaml
    assert demo.training.ar.lr == 1e-3  # project file beats base
    over = load_config("demo", ["training.ar.lr=2e-4"])
    assert over.training.ar.lr == 2e-4  # override beats project file
    assert over.training.nar.lr == demo.training.nar.lr  # and touches only its key
    layers = resolve_layers("demo", ["codec.n_q=4", "codec.n_q=6"])
    assert layers["codec"]["n_q"] == 6  # later overrides win


def test_override_value_parsing():
    assert parse_override("training.ar.lr=5e-5") == (["training", "ar", "lr"], 5e-5)
    assert parse_override("data.trim_silence=false")[1] is False
    assert parse_override("data.eval_speakers=[p225,p226]")[1] == ["p225", "p226"]
    with pytest.raises(ConfigError):
        parse_override("novalue")


def test_type_errors_name_the_path():
    with pytest.raises(ConfigError, match="training.nar.batch_size"):
        load_config("demo", ["training.nar.batch_size=many"])


def test_cross_field_stop_token_cap():
    # 10 s at 75 Hz = 750 frames; max_seq_len 750 leaves 749 audio positions
    with pytest.raises(ConfigError, match="stop token"):
        load_config("demo", ["data.max_duration=10", "model.ar.max_seq_len=750"])
    cfg = load_config("demo", ["data.max_duration=10", "model.ar.max_seq_len=751", "model.nar.max_seq_len=751"])
    assert cfg.max_audio_frames == 750


def test_cross_field_warmup_and_grad_accum_units():
    total = load_config("demo").training.ar.total_steps
    with pytest.raises(ConfigError, match="warmup_steps"):
        load_config("demo", [f"training.ar.warmup_steps={total + 200}"])
    with pytest.raises(ConfigError, match="optimizer steps"):
        load_config("demo", ["training.ar.scheduled_sampling=true", f"training.ar.scheduled_sampling_start={total + 300}"])
    cfg = load_config("demo", ["training.ar.grad_accum_steps=4"])
    assert cfg.training.ar.micro_steps_total == 4 * cfg.training.ar.total_steps


def test_encodec_bandwidth_checked():
    with pytest.raises(ConfigError, match="bandwidth"):
        load_config("demo", ["codec.name=encodec", "codec.bandwidth=5"])
    assert load_config("demo", ["codec.name=encodec", "codec.bandwidth=1.5"]).codec.effective_n_q == 2


def test_config_hash_ignores_non_result_keys():
    base = config_hash(load_config("demo"))
    assert config_hash(load_config("demo", ["training.ar.log_every=5"])) == base
    assert config_hash(load_config("demo", ["data.workers=2"])) == base
    assert config_hash(load_config("demo", ["tracking.experiment_prefix=x"])) == base
    assert config_hash(load_config("demo", ["training.ar.lr=2e-4"])) != base
    assert config_hash(load_config("demo", ["codec.n_q=6"])) != base
