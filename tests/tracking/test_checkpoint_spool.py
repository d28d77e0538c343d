"""Checkpoints saved while the tracking server is lost: spooled, then published (or skipped if pruned) at sync."""

import json
import shutil
from pathlib import Path

from mlflow.tracking import MlflowClient
import pytest

from harmonica.tracking import names
from harmonica.tracking.checkpoints import MODEL_TYPE, CheckpointModels, publish_checkpoint
from harmonica.tracking.spool import Spool


def _checkpoint(root: Path, step: int) -> Path:
    d = root / f"step_{step:07d}"
    (d / "codec").mkdir(parents=True)
    (d / "meta.json").write_text(json.dumps({"step": step, "kind": "ar"}))
    for f in ("model.safetensors", "ema.safetensors", "codec/codec.json"):
        (d / f).write_bytes(b"x" * 8)
    return d


def test_spooled_checkpoints_are_published_at_replay_and_pruned_ones_skipped(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("x", artifact_location=(tmp_path / "art").as_uri())
    run_id = client.create_run(exp).info.run_id
    before = publish_checkpoint(client, run_id, _checkpoint(tmp_path / "ckpt", 10), kind="ar", step=10,
                                params={"kind": "ar"}, tags={})  # published while the server answered
    spool = Spool(tmp_path / "spool")
    for step in (20, 30):
        spool.checkpoint(_checkpoint(tmp_path / "ckpt", step), kind="ar", step=step,
                         params={"kind": "ar", "contract": {"n_q": 3}}, tags={"t": "v"})
    shutil.rmtree(tmp_path / "ckpt" / "step_0000020")  # keep_last pruned it before the server came back
    spool.prune({30})
    assert spool.replay(client, run_id) == 3  # two checkpoints and a prune
    models = CheckpointModels("", client).of_run(run_id)
    assert sorted((m.weights, m.step) for m in models) == [("ema", 30), ("raw", 30)]
    assert before["ema"] not in {m.model_id for m in models}  # step 10 was pruned with its directory
    ema = next(m for m in models if m.weights == "ema")
    assert client.get_logged_model(ema.model_id).params["contract"] == '{"n_q": 3}'
    assert not spool.pending


@pytest.mark.slow
def test_publishing_a_step_again_reuses_its_ready_models_and_replaces_an_unfinished_one(tmp_path):
    """A resumed run re-publishes the checkpoint it resumed from: it may have been killed before, during or after
    the upload. Each weight set ends with exactly one READY model of the step."""
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("x", artifact_location=(tmp_path / "art").as_uri())
    run_id = client.create_run(exp).info.run_id
    directory = _checkpoint(tmp_path / "ckpt", 10)
    first = publish_checkpoint(client, run_id, directory, kind="ar", step=10, params={}, tags={})
    again = publish_checkpoint(client, run_id, directory, kind="ar", step=10, params={}, tags={})
    assert again == first
    # killed mid-upload: the EMA model of the step is left PENDING, the raw one never created
    client.delete_logged_model(first["raw"])
    client.delete_logged_model(first["ema"])
    pending = client.create_logged_model(exp, name="ar-ema-step0000010", source_run_id=run_id,
                                         tags={names.CKPT_STEP_TAG: "10", names.WEIGHTS: "ema"},
                                         model_type=MODEL_TYPE).model_id
    resumed = publish_checkpoint(client, run_id, directory, kind="ar", step=10, params={}, tags={})
    assert pending not in resumed.values()
    live = client.search_logged_models([exp], filter_string=f"source_run_id = '{run_id}'")
    assert sorted((m.tags[names.WEIGHTS], str(m.status)) for m in live) == [
        ("ema", "READY"), ("raw", "READY")]
