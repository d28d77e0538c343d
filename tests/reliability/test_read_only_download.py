"""Case 6: a checkpoint reference that cannot be downloaded into a read-only workdir says so, instead
of claiming the run has no checkpoints."""

import subprocess

import pytest
from mlflow.tracking import MlflowClient

from harmonica.tracking.refs import CheckpointRefError, resolve_checkpoint


@pytest.fixture
def read_only_dir(tmp_path):
    src, mnt = tmp_path / "src", tmp_path / "ro"
    src.mkdir()
    mnt.mkdir()
    if subprocess.run(["mount", "--bind", str(src), str(mnt)], capture_output=True).returncode != 0:
        pytest.skip("this machine does not allow bind mounts (needs root in its own mount namespace)")
    try:
        assert subprocess.run(["mount", "-o", "remount,bind,ro", str(mnt)], capture_output=True).returncode == 0
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def test_unwritable_download_dir_is_named_not_a_missing_checkpoint(tmp_path, read_only_dir):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("x", artifact_location=str(tmp_path / "art"))
    run = client.create_run(exp)
    best = tmp_path / "best"
    best.mkdir()
    (best / "meta.json").write_text("{}")
    client.log_artifacts(run.info.run_id, str(best), "checkpoints/best")
    ok, _ = resolve_checkpoint(run.info.run_id, uri, tmp_path / "downloads")
    assert (ok / "meta.json").is_file()  # the same reference works where it can be written
    with pytest.raises(CheckpointRefError) as err:
        resolve_checkpoint(run.info.run_id, uri, read_only_dir / "downloads")
    msg = str(err.value)
    assert "writable --workdir" in msg and str(read_only_dir) in msg and "no checkpoints" not in msg
