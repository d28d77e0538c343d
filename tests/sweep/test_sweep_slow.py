"""End to end: the demo sweep as shipped (seeded: it must prune), and the `sweep` MLproject entry point."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from harmonica.config import load_config
from tests.sweep.conftest import tiny_sweep_overrides, write_space

ROOT = Path(__file__).resolve().parents[2]


BUNDLED_DEMO = ["data.corpus_format=demo", "text.frontend=chars", "codec.n_q=8", "codec.codebook_size=256",
                "codec.ladder_utterances=0", "training.nar.nar_stages_per_step=1"]


@pytest.mark.slow
def test_the_demo_sweep_prunes_at_least_one_trial(tmp_path):
    """The shipped anti_collapse space on the demo project over the bundled corpus (the small 8 x 256
    setting the space's `fixed` trial lengths were sized for), 6 trials, default seed: >= 1 pruned trial."""
    from harmonica.stages.sweep import run_sweep

    cfg = load_config("demo", ["tracking.system_metrics=false", *BUNDLED_DEMO])
    out = run_sweep(cfg, tmp_path / "work", ROOT / "projects" / "sweeps" / "anti_collapse.yaml", n_trials=6,
                    best_config_dir=tmp_path / "projects")
    assert out.counts["PRUNED"] >= 1 and out.counts["FAIL"] == 0
    assert out.counts["COMPLETE"] + out.counts["PRUNED"] == 6
    client = MlflowClient(out.tracking_uri)
    killed = [r for r in client.search_runs([client.get_experiment_by_name(out.experiment).experiment_id],
                                            "tags.`optuna.pruned` = 'true'")]
    assert len(killed) == out.counts["PRUNED"] and all(r.info.status == "KILLED" for r in killed)
    assert (tmp_path / "projects" / "demo_best.yaml").is_file()


def _sweep_entry_point_wired() -> bool:
    from harmonica import cli

    mlproject = yaml.safe_load((ROOT / "MLproject").read_text())
    return "sweep" in cli.main.commands and "sweep" in mlproject.get("entry_points", {})


@pytest.mark.slow
def test_mlflow_run_sweep_entry_point(tmp_path, tiny_corpus, sweep_workdir):
    assert _sweep_entry_point_wired(), "the `harmonica sweep` command / MLproject `sweep` entry point is gone"
    space = write_space(tmp_path)
    uri = f"sqlite:///{sweep_workdir / 'mlflow.db'}"
    root = tmp_path / "root"  # the best config goes to <root>/projects: not into the checkout
    shutil.copytree(ROOT / "projects", root / "projects")
    shutil.copytree(ROOT / "mlruns_config", root / "mlruns_config")
    out = subprocess.run(
        ["mlflow", "run", str(ROOT), "-e", "sweep", "--env-manager", "local", "--experiment-name", "harmonica/demo",
         "-P", f"workdir={sweep_workdir}", "-P", f"space={space}", "-P", "n_trials=2", "-P", "study=entry",
         "-P", "overrides=" + " ".join(tiny_sweep_overrides(tiny_corpus))],
        cwd=tmp_path, env={**os.environ, "MLFLOW_TRACKING_URI": uri, "HARMONICA_ROOT": str(root)}, capture_output=True, text=True, timeout=900, check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("harmonica/demo")
    [parent] = client.search_runs([exp.experiment_id], "tags.`harmonica.sweep_study` = 'entry'")
    assert parent.data.tags["mlflow.project.entryPoint"] == "sweep"  # the launcher's run is the parent
    assert parent.info.status == "FINISHED"
    children = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert sorted(c.data.tags["optuna.trial"] for c in children) == ["0", "1"]
    plots = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert "plots/optimization_history.html" in plots
    assert (root / "projects" / "demo_best.yaml").is_file()
