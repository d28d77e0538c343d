"""The MLflow interface of a tiny pipeline — metric, param and tag keys, artifact paths, registry tags and
aliases, per stage — is exactly the committed list (tests/tracking/name_set.json).

Runs are where users compare work in the MLflow UI, and existing runs must keep reading the same way:
a refactor that renames or drops a key fails here. A deliberate change rewrites the list with
`HARMONICA_WRITE_NAME_SET=1 pytest tests/tracking/test_name_set.py` and shows up in the diff.
"""

import json
import os
import re
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.tiny import run_tiny_pipeline

BASELINE = Path(__file__).with_name("name_set.json")
# tags MLflow itself sets from the environment (user, source file, git remote): not harmonica's interface
ENVIRONMENT_TAGS = ("mlflow.user", "mlflow.source.", "mlflow.gitRepoURL", "mlflow.databricks")


def _artifacts(client: MlflowClient, run_id: str, path: str | None = None) -> list[str]:
    out = []
    for f in client.list_artifacts(run_id, path):
        out.extend(_artifacts(client, run_id, f.path) if f.is_dir else [_stable(f.path)])
    return out


def _stable(path: str) -> str:
    """A stepped image's file (images/<key>+step+<n>+timestamp+<ms>+<uuid>...) without its time and uuid:
    the key and the step are the interface."""
    return re.sub(r"\+timestamp\+\d+\+[0-9a-f-]{36}", "+timestamp+<ms>+<uuid>", path)


def name_set(tracking_uri: str) -> dict:
    client = MlflowClient(tracking_uri)
    stages: dict[str, dict[str, list[str]]] = {}
    for exp in client.search_experiments():
        for run in client.search_runs([exp.experiment_id]):
            stage = run.data.tags.get("harmonica.stage", "?")
            assert stage not in stages, f"two {stage} runs in one pipeline"
            stages[stage] = {
                "metrics": sorted(run.data.metrics),
                "params": sorted(run.data.params),
                "tags": sorted(t for t in run.data.tags if not t.startswith(ENVIRONMENT_TAGS)),
                "artifacts": sorted(_artifacts(client, run.info.run_id)),
            }
    registry = {}
    for rm in client.search_registered_models():
        versions = client.search_model_versions(f"name = '{rm.name}'")
        registry[rm.name] = {
            "model_tags": sorted(rm.tags),
            "aliases": sorted(rm.aliases),
            "version_tags": sorted({t for v in versions for t in v.tags}),
        }
    return {"stages": stages, "registry": registry}


@pytest.mark.slow
def test_tiny_pipeline_names_are_the_committed_ones(tmp_path, tiny_corpus, tiny_cache_workdir):
    work = tmp_path / "work"
    proc = run_tiny_pipeline(work, tiny_corpus, tiny_cache_workdir)
    assert "promote" in proc.stdout and "champion:" in proc.stdout, proc.stdout[-2000:]
    got = name_set(f"sqlite:///{work / 'mlflow.db'}")
    assert set(got["stages"]) == {"pipeline", "preprocess", "train_ar", "train_nar", "evaluate", "promote"}
    if os.environ.get("HARMONICA_WRITE_NAME_SET") == "1":
        BASELINE.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    want = json.loads(BASELINE.read_text())
    for stage in sorted(set(want["stages"]) | set(got["stages"])):
        for family in ("metrics", "params", "tags", "artifacts"):
            w = set(want["stages"].get(stage, {}).get(family, []))
            g = set(got["stages"].get(stage, {}).get(family, []))
            assert g == w, f"{stage} {family}: missing {sorted(w - g)}, new {sorted(g - w)}"
    assert got["registry"] == want["registry"]
