"""Case 6: a checkpoint reference that cannot be downloaded into a read-only workdir says so, instead
of claiming the run has no checkpoints."""

import pytest
from mlflow.tracking import MlflowClient

from harmonica.tracking.refs import CheckpointRefError, resolve_checkpoint


@pytest.mark.slow
def test_unwritable_download_dir_is_named_not_a_missing_checkpoint(tmp_path, read_only_dir):
    ro = read_only_dir()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("x", artifact_location=str(tmp_path / "art"))
    run = client.create_run(exp)
    best = tmp_path / "best"
    best.mkdir()
    (best / "meta.json").write_text("{}")
    client.log_artifacts(run.info.run_id, str(best), "checkpoints/best")
    ok = resolve_checkpoint(run.info.run_id, uri, tmp_path / "downloads").path
    assert (ok / "meta.json").is_file()  # the same reference works where it can be written
    with pytest.raises(CheckpointRefError) as err:
        resolve_checkpoint(run.info.run_id, uri, ro / "downloads")
    msg = str(err.value)
    assert "writable --workdir" in msg and str(ro) in msg and "no checkpoints" not in msg
