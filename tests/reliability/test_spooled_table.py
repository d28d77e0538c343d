"""An eval table logged while the tracking server is lost is spooled and, after the sync, is the same
artifact (and the same table tag for the UI's artifact view) as one logged while it was up."""

import json

from mlflow.tracking import MlflowClient
import pytest

from harmonica.tracking.adapter import Run
from harmonica.tracking.spool import Spool

TABLE = {"utt_id": ["a", "b"], "wer": [0.25, 1.0], "text": ["hello there", "a quiet river"]}


@pytest.mark.slow
def test_a_table_logged_during_an_outage_arrives_identical_after_sync(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("t", artifact_location=str(tmp_path / "art"))
    live, lost = (client.create_run(exp).info.run_id for _ in range(2))
    Run(client, live, async_logging=False).log_table(TABLE, "eval_table.json")

    spool = Spool(tmp_path / "spool")
    run = Run(client, lost, async_logging=False, spool=spool, uri="http://127.0.0.1:1")
    run.lost, run._next_probe = "server gone", float("inf")  # as after a failed request and a dead health probe
    run.log_table(TABLE, "eval_table.json")
    assert spool.pending and client.list_artifacts(lost) == []  # nothing reached the store, nothing was dropped

    assert spool.replay(client, lost) > 0
    files = {}
    for rid in (live, lost):
        path = client.download_artifacts(rid, "eval_table.json", str(tmp_path / rid))
        files[rid] = json.loads(open(path).read())
    assert files[lost] == files[live]
    tags = [json.loads(client.get_run(r).data.tags["mlflow.loggedArtifacts"]) for r in (live, lost)]
    assert tags[0] == tags[1] == [{"path": "eval_table.json", "type": "table"}]
