"""Case 5 and 6: values and inputs that used to pass validation or crash loading it."""

import os
import shutil

import pytest
from click.testing import CliRunner

from harmonica.cli import main
from harmonica.config import ConfigError, HarmonicaConfig, load_config
from harmonica.config.load import flatten
from harmonica.data.corpora import prepare_corpus
from harmonica.tracking.adapter import Tracker, WorkdirMovedError
from tests.tiny import TINY

FLOAT_KEYS = sorted(k for k, v in flatten(HarmonicaConfig().model_dump(mode="json")).items() if isinstance(v, float))


def test_the_schema_has_floats_to_check():
    assert len(FLOAT_KEYS) > 40 and "training.ar.lr" in FLOAT_KEYS and "data.max_duration" in FLOAT_KEYS


@pytest.mark.parametrize("bad", ["inf", "-inf", "nan", ".inf"])
@pytest.mark.slow
def test_every_float_in_the_schema_rejects_inf_and_nan(bad):
    for key in FLOAT_KEYS:
        with pytest.raises(ConfigError, match=rf"{key}: Input should be a finite number"):
            load_config("demo", [f"{key}={bad}"])
    with pytest.raises(ConfigError, match="finite"):
        load_config("demo", [f"training.ar.betas=[0.9, {bad}]"])
    with pytest.raises(ConfigError, match="finite"):
        load_config("demo", [f"eval.decode.temperature=[{bad}, 0.0]"])


def test_a_non_utf8_or_unreadable_project_file_is_one_clear_error(tmp_path):
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("description: caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8 text .* save the file as UTF-8"):
        load_config(str(bad))
    out = CliRunner().invoke(main, ["train", "--model-type", "ar", "--project", str(bad)])
    assert out.exit_code == 1 and "not UTF-8" in out.output and out.exception.__class__ is SystemExit
    if os.geteuid() != 0:  # root reads anything
        locked = tmp_path / "locked.yaml"
        locked.write_text("description: x\n")
        locked.chmod(0)
        with pytest.raises(ConfigError, match="cannot be read"):
            load_config(str(locked))


def test_a_looping_corpus_and_zero_workers_are_usage_errors(tmp_path):
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    out = CliRunner().invoke(main, ["preprocess", "--corpus", str(tmp_path / "a"), "--workdir", str(tmp_path / "w")])
    assert out.exit_code == 2 and "is a symlink loop" in out.output
    out = CliRunner().invoke(main, ["preprocess", "--workers", "0", "--workdir", str(tmp_path / "w")])
    assert out.exit_code == 2 and "'--workers': 0 is not in the range x>=1" in out.output
    assert not (tmp_path / "w").exists()


def test_a_read_only_workdir_is_one_clear_error(read_only_dir, tiny_corpus, tiny_cache_workdir):
    args = ["--workdir", str(read_only_dir(tiny_cache_workdir)), *TINY, "data.corpus_format=ljspeech",
            f"data.corpus_dir={tiny_corpus}"]
    for cmd in (["preprocess", "--no-progress"], ["train", "--model-type", "ar"]):  # cache reused / found
        out = CliRunner().invoke(main, [*cmd, *args])
        assert out.exit_code == 1 and "is not writable" in out.output and "Traceback" not in out.output, out.output


@pytest.mark.slow
def test_a_moved_workdir_is_detected_with_the_fix(tmp_path):
    cfg = load_config("demo", ["tracking.system_metrics=false"])
    old = tmp_path / "old"
    with Tracker(cfg, old).run("preprocess", "r"):
        pass
    shutil.move(old, tmp_path / "new")
    with pytest.raises(WorkdirMovedError, match="moved or copied .* tracking.experiment_prefix"):
        with Tracker(cfg, tmp_path / "new").run("preprocess", "r2"):
            pass
    with Tracker(load_config("demo", ["tracking.system_metrics=false", "tracking.experiment_prefix=moved"]),
                 tmp_path / "new").run("preprocess", "r3") as run:
        assert str(tmp_path / "new") in run.client.get_run(run.run_id).info.artifact_uri


def test_malformed_ljspeech_rows_are_rejected_as_malformed(tmp_path, tiny_corpus):
    corpus = shutil.copytree(tiny_corpus, tmp_path / "c")
    meta = corpus / "metadata.csv"
    lines = meta.read_text(encoding="utf-8").splitlines()
    first_id = lines[0].split("|")[0]
    lines[0] = f"{first_id}|a stray|column|{lines[0].split('|')[2]}"
    meta.write_text("\n".join(lines) + "\n", encoding="utf-8")
    cfg = load_config("demo", ["data.corpus_format=ljspeech"])
    manifests = prepare_corpus("ljspeech", corpus, cfg.data)
    [rej] = [r for r in manifests.rejected if r.id == first_id]
    assert rej.reason == "malformed_row" and "4 columns" in rej.detail
    assert first_id not in {u.id for u in manifests.utterances}
