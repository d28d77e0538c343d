"""`mlflow run . -e main` — the MLproject's default entry point, as users type it — runs the whole pipeline,
promote step included, under the run `mlflow run` created."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.tiny import TINY, tiny_steps


@pytest.mark.slow
def test_mlflow_run_main_runs_the_pipeline_with_its_promote_step(root: Path, tmp_path, tiny_corpus,
                                                                  tiny_cache_workdir):
    work = tmp_path / "work"
    shutil.copytree(tiny_cache_workdir, work)
    uri = f"sqlite:///{work / 'mlflow.db'}"
    overrides = [*TINY, "data.corpus_format=ljspeech", f"data.corpus_dir={tiny_corpus}",
                 *tiny_steps("ar"), *tiny_steps("nar"), "eval.split=val"]
    proc = subprocess.run(
        ["mlflow", "run", str(root), "-e", "main", "--env-manager", "local", "--experiment-name", "harmonica/demo",
         "-P", "project=demo", "-P", f"workdir={work}", "-P", "overrides=" + " ".join(overrides)],
        env={**os.environ, "MLFLOW_TRACKING_URI": uri}, capture_output=True, text=True, timeout=900, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "pipeline finished" in proc.stdout and "champion:" in proc.stdout
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("harmonica/demo")
    runs = {r.data.tags.get("harmonica.stage"): r for r in client.search_runs([exp.experiment_id])}
    assert set(runs) == {"pipeline", "preprocess", "train_ar", "train_nar", "evaluate", "promote"}
    parent = runs["pipeline"]
    assert parent.data.tags.get("mlflow.project.entryPoint") == "main"  # the launcher's run holds the pipeline
    for stage, run in runs.items():
        assert run.info.status == "FINISHED", (stage, run.info.status)
        if stage != "pipeline":
            assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id, stage
    promote = runs["promote"].data.tags
    assert promote["harmonica.evaluation_run_id"] == runs["evaluate"].info.run_id
    assert promote["harmonica.decision"] in {"candidate", "champion", "refused"}
    assert parent.data.tags["pipeline.promote.run_id"] == runs["promote"].info.run_id
