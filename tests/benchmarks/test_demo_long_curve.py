"""benchmarks/demo_long_curve.py end to end on the tiny cache: train, evaluate at each point, one curve run."""

import importlib.util
import json
import math
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from harmonica.config import load_config
from tests.tiny import TINY, tiny_steps

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "demo_long_curve.py"


def load_script():
    spec = importlib.util.spec_from_file_location("demo_long_curve", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_points_fall_on_kept_checkpoints():
    curve = load_script()
    assert curve.point_steps(2000, 4) == [500, 1000, 1500, 2000]
    assert curve.point_steps(10, 4) == [3, 5, 8, 10]
    with pytest.raises(ValueError, match="--points 9"):
        curve.point_steps(8, 9)
    cfg = load_config("demo_long", [])
    # every point is a checkpoint, and keep_last also covers the checkpoints of improving validations (AR every
    # 330 steps, NAR every 75): with keep_last=5 the first point's checkpoint was pruned before it was evaluated
    assert curve.checkpoint_overrides(cfg, 4) == [
        "training.ar.ckpt_every=1650", "training.ar.keep_last=21",
        "training.nar.ckpt_every=150", "training.nar.keep_last=9"]
    # uneven points: every point is still a checkpoint step, and all of them are kept
    odd = load_config("demo", [*tiny_steps("ar", total=10), *tiny_steps("nar", total=6)])
    assert curve.checkpoint_overrides(odd, 4) == ["training.ar.ckpt_every=1", "training.ar.keep_last=11",
                                                "training.nar.ckpt_every=1", "training.nar.keep_last=7"]


@pytest.mark.slow  # two trainings + two evaluates with ASR: ~2 min on 2 shared cores
def test_curve_end_to_end_on_tiny_models(tmp_path, tiny_corpus, tiny_cache_workdir, monkeypatch, capsys):
    curve = load_script()
    work = tmp_path / "work"
    shutil.copytree(tiny_cache_workdir, work)
    overrides = [*TINY, "data.corpus_format=ljspeech", f"data.corpus_dir={tiny_corpus}", "eval.split=val",
                 "eval.bootstrap_samples=0", *tiny_steps("ar"), *tiny_steps("nar")]
    # the project given as a file (the README's `-p projects/x.yaml` habit): runs and checkpoints go by its name
    project_file = SCRIPT.parents[1] / "projects" / "demo.yaml"
    monkeypatch.setattr(sys, "argv", ["demo_long_curve.py", "--project", str(project_file), "--workdir", str(work),
                                      "--points", "2", "--eval-utterances", "2", *overrides])
    curve.main()
    printed = capsys.readouterr().out
    result = json.loads(printed.strip().splitlines()[-1])["curve"]
    assert len(result) == 2 and 0 < result[0]["minutes"] <= result[1]["minutes"]

    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("harmonica/demo").experiment_id],
                              "tags.`harmonica.stage` = 'demo_long_curve'")
    assert len(runs) == 1  # the whole curve is one run
    parent = runs[0]
    assert parent.info.run_name == "demo_long_curve-demo"  # not the file's path
    for name in ("wer", "cer", "sim", "resynthesis_wer", "minutes", "percent"):
        history = sorted(client.get_metric_history(parent.info.run_id, f"curve/{name}"), key=lambda h: h.step)
        # SIM is NaN when a tiny model decodes too little at a point (an embedding needs audio): the
        # table keeps it, MLflow gets no point; every other column has both points, all finite
        assert len(history) == 2 or (name == "sim" and len(history) < 2), name
        assert all(math.isfinite(h.value) for h in history), name
        if name in result[0]:  # a column of the printed summary: MLflow holds exactly its values
            assert [h.value for h in history] == pytest.approx([r[name] for r in result]), name
    wers = client.get_metric_history(parent.info.run_id, "curve/wer")
    minutes = client.get_metric_history(parent.info.run_id, "curve/minutes")
    assert [h.step for h in wers] == [round(m.value * 60) for m in minutes]  # step = seconds of training
    assert [h.value for h in wers] == [r["wer"] for r in result]
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    stages = sorted(r.data.tags["harmonica.stage"] for r in children)
    assert stages == ["evaluate", "evaluate", "train_ar", "train_nar"]  # the cache existed: no preprocess
    evaluated = sorted((r.data.tags["harmonica.ar_step"], r.data.tags["harmonica.nar_step"])
                       for r in children if r.data.tags["harmonica.stage"] == "evaluate")
    assert evaluated == [("4", "4"), ("8", "8")]
    names = sorted(r.info.run_name for r in children if r.data.tags["harmonica.stage"] == "evaluate")
    assert len(set(names)) == 2 and "@4-" in names[0] and "@8-" in names[1]  # the points apart in the runs list

    # --rescore: the same checkpoints and minutes evaluated again (here with another decoding seed), no training
    monkeypatch.setattr(sys, "argv", ["demo_long_curve.py", "--workdir", str(work), "--eval-utterances", "2",
                                      "--rescore", parent.info.run_id, "eval.seed=7"])
    curve.main()
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["curve"]
    assert [r["minutes"] for r in again] == [r["minutes"] for r in result]
    [rescored] = client.search_runs([parent.info.experiment_id],
                                    f"tags.`harmonica.curve.rescored_from` = '{parent.info.run_id}'")
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{rescored.info.run_id}'")
    assert sorted((r.data.tags["harmonica.stage"], r.data.tags["harmonica.ar_step"]) for r in children) == [
        ("evaluate", "4"), ("evaluate", "8")]
    assert {r.data.params["eval.seed"] for r in children} == {"7"}
    assert all(r.data.metrics["eval/utterances"] == 2 for r in children if r.data.tags["harmonica.stage"] == "evaluate")
    arts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"curve.json", "plots"} <= arts
    assert [a.path for a in client.list_artifacts(parent.info.run_id, "plots")][0].endswith(".png")
    assert "WER" in printed and "resyn WER" in printed


@pytest.mark.slow  # a real process, killed while it trains: ~30 s
def test_sigterm_marks_the_curve_and_its_training_killed(tmp_path, tiny_corpus, tiny_cache_workdir):
    """`kill` of the script (a scheduler's preemption, `timeout`) ends its MLflow runs KILLED, not RUNNING
    (before run_script, the curve and train runs of a killed script stayed RUNNING in the store)."""
    work = tmp_path / "work"
    shutil.copytree(tiny_cache_workdir, work)
    overrides = [*TINY, "data.corpus_format=ljspeech", f"data.corpus_dir={tiny_corpus}",
                 *tiny_steps("ar", total=100_000), *tiny_steps("nar")]
    # the client creates and migrates mlflow.db: open it before the script starts, not beside the script's own
    # creation (found by CI: both ran MLflow's migration at once and the script died on "table already exists";
    # harmonica's processes take a lock around it, this test's client does not)
    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--project", "demo", "--workdir", str(work), "--points", "2",
                             *overrides], cwd=SCRIPT.parents[1], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            exp = client.get_experiment_by_name("harmonica/demo")
            training = exp and client.search_runs([exp.experiment_id], "tags.`harmonica.stage` = 'train_ar'")
            if training and client.get_metric_history(training[0].info.run_id, "ar/loss"):
                break  # it is inside the training loop
            time.sleep(0.5)
        assert proc.poll() is None, proc.stderr.read()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err
    assert "marked KILLED" in err
    runs = client.search_runs([client.get_experiment_by_name("harmonica/demo").experiment_id])
    status = {r.data.tags["harmonica.stage"]: r.info.status for r in runs}
    assert status == {"demo_long_curve": "KILLED", "train_ar": "KILLED"}, status
