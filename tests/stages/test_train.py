"""`harmonica train` as users run it: CLI subprocesses, the MLflow run, stale caches, kill + resume, DDP."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.tiny import TINY, tiny_steps


def _args(corpus: Path, kind: str, *extra: str) -> list[str]:
    return [*TINY, "data.corpus_format=ljspeech", f"data.corpus_dir={corpus}", *tiny_steps(kind), *extra]


def _run(cmd: list[str], cwd: Path, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600, **kw)


def _harmonica(*args: str) -> list[str]:
    return [sys.executable, "-m", "harmonica.cli", *args]


def _runs(workdir: Path, stage: str):
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("harmonica/demo")
    return client, client.search_runs([exp.experiment_id], f"tags.`harmonica.stage` = '{stage}'")


def _assert_checkpoint_models(client: MlflowClient, run, workdir: Path) -> None:
    """One raw + one EMA LoggedModel per saved checkpoint (steps 4 and 8), val metrics linked to them, the
    best first in a search, and run ids / models:/ references resolving to them."""
    from harmonica.tracking.refs import resolve_checkpoint

    rid, exp = run.info.run_id, run.info.experiment_id
    models = client.search_logged_models([exp], filter_string=f"source_run_id = '{rid}'")
    assert sorted(m.name for m in models) == ["nar-ema-step0000004", "nar-ema-step0000008",
                                              "nar-raw-step0000004", "nar-raw-step0000008"]
    history = {m.step: m.value for m in client.get_metric_history(rid, "val_ema/loss")}
    for m in models:
        weights, step = m.tags["harmonica.weights"], int(m.tags["harmonica.checkpoint_step"])
        assert m.model_type == "harmonica-checkpoint" and str(m.status).endswith("READY")
        assert m.params["kind"] == "nar" and m.params["config_hash"] == run.data.tags["harmonica.config_hash"]
        linked = {x.key: x for x in m.metrics}
        family = "val_ema/" if weights == "ema" else "val/"
        assert linked and all(k.startswith(family) for k in linked), sorted(linked)
        if weights == "ema":
            assert linked["val_ema/loss"].step == step and linked["val_ema/loss"].value == history[step]
            assert linked["val_ema/loss"].dataset_name == "demo-tokens"
        files = {a.path for a in client.list_logged_model_artifacts(m.model_id)}
        assert files == {"meta.json", "codec", "ema.safetensors" if weights == "ema" else "model.safetensors"}
    ranked = client.search_logged_models([exp], filter_string=f"source_run_id = '{rid}' AND tags.`harmonica.weights` = 'ema'",
                                         order_by=[{"field_name": "metrics.val_ema/loss", "ascending": True}])
    best_step = min(history, key=history.get)
    assert ranked[0].tags["harmonica.checkpoint_step"] == str(best_step)
    assert run.data.tags["harmonica.best_model_id"] == ranked[0].model_id
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    by_run = resolve_checkpoint(rid, uri, workdir / "downloads")
    assert by_run.model_id == ranked[0].model_id and by_run.run_id == rid
    by_prefix = resolve_checkpoint(rid[:8], uri, workdir / "downloads")  # what the logs print
    assert (by_prefix.model_id, by_prefix.run_id) == (by_run.model_id, rid)
    assert json.loads((by_run.path / "meta.json").read_text())["step"] == best_step
    other = next(m for m in ranked if m.model_id != ranked[0].model_id)
    by_model = resolve_checkpoint(f"models:/{other.model_id}", uri, workdir / "downloads")
    assert json.loads((by_model.path / "meta.json").read_text())["step"] != best_step
    assert (by_model.path / "ema.safetensors").is_file() and (by_model.path / "codec").is_dir()


@pytest.fixture
def workdir_with_cache(tmp_path: Path, tiny_corpus: Path) -> Path:
    workdir = tmp_path / "work"
    out = _run(_harmonica("preprocess", "--workdir", str(workdir), "--no-progress",
                          *_args(tiny_corpus, "ar")), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    return workdir


@pytest.mark.slow
def test_cli_train_records_a_complete_run_and_refuses_stale_caches(tmp_path, tiny_corpus, workdir_with_cache):
    workdir = workdir_with_cache
    ok = _run(_harmonica("train", "--model-type", "nar", "--workdir", str(workdir), *_args(tiny_corpus, "nar")),
              cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert "train_nar finished: 8 steps" in ok.stdout
    client, [run] = _runs(workdir, "train_nar")
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    assert tags["harmonica.model_kind"] == "nar" and tags["harmonica.cache_mismatch"] == "false"
    assert tags["harmonica.source_hash"] and "harmonica.git_dirty" in tags
    assert tags["mlflow.note.content"].startswith("NAR training on project 'demo'")
    assert run.inputs.dataset_inputs[0].dataset.digest == tags["harmonica.cache_fingerprint"]
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "samples", "training_summary.json", "collapse_events.jsonl"} <= arts
    assert "checkpoints" not in arts  # checkpoints are LoggedModels now, not folders re-uploaded in place
    _assert_checkpoint_models(client, run, workdir)
    wavs = [a.path for a in client.list_artifacts(run.info.run_id, "samples/step_000008")]
    assert wavs and all(p.endswith(".wav") for p in wavs)  # the spectrograms are stepped images
    images = [a.path for a in client.list_artifacts(run.info.run_id, "images")]
    assert sum(p.startswith("images/nar~util_heatmap+step+") and p.endswith(".png") for p in images) == 2
    assert sum("~spectrogram+step+8+" in p and p.endswith(".png") for p in images) == len(wavs)
    assert "nar/cb1/util_pred" in run.data.metrics and "grad_norm/total" in run.data.metrics

    stale = _run(_harmonica("train", "--model-type", "nar", "--workdir", str(workdir),
                            *_args(tiny_corpus, "nar", "codec.codebook_size=32")), cwd=tmp_path)
    assert stale.returncode != 0
    assert "codec.codebook_size: cache has 16, config says 32" in stale.stderr
    assert "--allow-cache-mismatch" in stale.stderr and "Traceback" not in stale.stderr
    forced = _run(_harmonica("train", "--model-type", "ar", "--workdir", str(workdir), "--allow-cache-mismatch",
                             *_args(tiny_corpus, "ar", "data.trim_db=-30")), cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr[-2000:]
    _, [ar_run] = _runs(workdir, "train_ar")
    assert ar_run.data.tags["harmonica.cache_mismatch"] == "true"
    assert "data.trim_db" in ar_run.data.tags["harmonica.cache_mismatch_fields"]


@pytest.mark.slow
def test_sigkill_then_resume_continues_the_same_run(tmp_path, tiny_corpus, workdir_with_cache):
    workdir = workdir_with_cache
    args = _args(tiny_corpus, "ar", "training.ar.total_steps=400", "training.ar.ckpt_every=20",
                 "training.ar.log_every=10", "training.ar.val_every=200", "training.ar.sample_every=400")
    proc = subprocess.Popen(_harmonica("train", "--model-type", "ar", "--workdir", str(workdir),
                                       "--run-name", "ar-noise-0.3", *args),
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    root = workdir / "checkpoints" / "demo" / "ar"
    deadline = time.time() + 300
    while time.time() < deadline and not list(root.glob("*/ckpt/step_0000040")):
        time.sleep(0.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    [run_dir] = list(root.glob("*"))
    steps = sorted(int(p.name.split("_")[1]) for p in (run_dir / "ckpt").glob("step_*"))
    assert steps and steps[-1] >= 40
    killed_at = steps[-1]

    resumed = _run(_harmonica("train", "--model-type", "ar", "--workdir", str(workdir), "--resume", *args),
                   cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    client, runs = _runs(workdir, "train_ar")
    assert len(runs) == 1 and runs[0].info.run_id == run_dir.name  # the same MLflow run
    history = sorted(m.step for m in client.get_metric_history(run_dir.name, "ar/loss"))
    assert history[-1] == 400 and set(range(10, 401, 10)) <= set(history)
    assert runs[0].data.tags["harmonica.resumed_from"].endswith(f"step_{killed_at:07d}")
    assert runs[0].info.status == "FINISHED"
    assert runs[0].info.run_name == "ar-noise-0.3"  # the name given at the start survives the resume


@pytest.mark.slow
def test_two_process_gloo_ddp_logs_exactly_one_run(tmp_path, tiny_corpus, workdir_with_cache):
    workdir = workdir_with_cache
    with socket.socket() as sock:  # a free loopback port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                "--master-addr", "127.0.0.1", "--master-port", str(port)]
    out = _run([*torchrun, "-m", "harmonica.cli", "train", "--model-type", "nar", "--workdir", str(workdir),
                *_args(tiny_corpus, "nar")], cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-4000:]
    client, runs = _runs(workdir, "train_nar")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.tags["harmonica.world_size"] == "2"
    assert max(m.step for m in client.get_metric_history(run.info.run_id, "nar/loss")) == 8


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["ar", "nar"])
def test_mlflow_run_train_entry_points(kind, root, tmp_path, tiny_corpus, workdir_with_cache):
    workdir = workdir_with_cache
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    out = _run(["mlflow", "run", str(root), "-e", f"train_{kind}", "--env-manager", "local",
                "--experiment-name", "harmonica/demo", "-P", f"workdir={workdir}",
                "-P", "overrides=" + " ".join(_args(tiny_corpus, kind))],
               cwd=tmp_path, env={**os.environ, "MLFLOW_TRACKING_URI": uri})
    assert out.returncode == 0, out.stderr[-3000:]
    client, runs = _runs(workdir, f"train_{kind}")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    metrics = runs[0].data.metrics
    cb = "cb0" if kind == "ar" else "cb1"
    assert {f"{kind}/{cb}/util_pred", f"{kind}/attn_entropy/layer0", "grad_norm/total", "val_ema/loss"} <= set(metrics)
    assert runs[0].data.tags["mlflow.project.entryPoint"] == f"train_{kind}"
