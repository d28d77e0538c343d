"""The registry side of the seam on a real (sqlite) store: model, versions, tags, aliases, champion history."""

import json

from mlflow.tracking import MlflowClient
import pytest

from harmonica.tracking import names
from harmonica.tracking.registry import HISTORY_KEEP, ModelRegistry, describe_model
from harmonica.tracking.lock import lock_name


@pytest.mark.slow
def test_versions_tags_aliases_and_the_bounded_champion_history(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    rid = client.create_run(client.create_experiment("harmonica/t", artifact_location=str(tmp_path))).info.run_id
    reg = ModelRegistry(uri)
    assert reg.model("m") is None and reg.alias("m", "champion") is None and reg.champion_history("m") == []
    model = reg.ensure_model("m")
    assert model.tags == {names.MANAGED_BY: "harmonica promote"} and model.description == describe_model("m", [])
    assert reg.ensure_model("m").name == "m"  # idempotent
    v1 = reg.create_version("m", source=f"runs:/{rid}/model", run_id=rid, tags={names.CANDIDATE_KEY: "k1"},
                            description="(promotion in progress)")
    v2 = reg.create_version("m", source=f"runs:/{rid}/model", run_id=rid, tags={names.CANDIDATE_KEY: "k'2"})
    assert (v1.version, v2.version, v1.run_id) == ("1", "2", rid)
    assert [v.version for v in reg.find_versions("m", names.CANDIDATE_KEY, "k'2")] == ["2"]  # quoted
    assert reg.find_versions("m", names.CANDIDATE_KEY, "none") == []
    reg.set_version_tags("m", "1", {names.DECISION: "champion", names.PROMOTION_COMPLETE: "true"})
    reg.describe_version("m", "1", "x" * 6000)
    got = reg.version("m", "1")
    assert got.tags[names.DECISION] == "champion" and len(got.description) == 4900
    reg.set_alias("m", "candidate", "2")
    reg.set_alias("m", "champion", "1")
    assert reg.alias("m", "champion") == "1" and reg.version_by_alias("m", "candidate").version == "2"
    assert [(v.version, v.aliases) for v in reg.versions("m")] == [("1", ("champion",)), ("2", ("candidate",))]
    reg.delete_alias("m", "candidate")
    assert reg.alias("m", "candidate") is None
    for i in range(HISTORY_KEEP + 5):
        reg.record_champion_event("m", {"at": f"t{i}", "to": str(i), "from": None, "via": "promote", "reason": "r"})
    history = reg.champion_history("m")
    assert len(history) == HISTORY_KEEP and history[-1]["to"] == str(HISTORY_KEEP + 4)
    model = reg.model("m")
    assert model.tags[names.CHAMPION] == str(HISTORY_KEEP + 4)
    assert json.loads(model.tags[names.CHAMPION_HISTORY]) == history
    assert "Champion history (newest last):" in model.description and len(model.description) <= 4900
    with reg.lock("m", purpose="test", timeout=5) as lock:
        lock.assert_held()
        assert reg.model(lock_name("m")).tags["purpose"] == "test"
    assert reg.model(lock_name("m")) is None
