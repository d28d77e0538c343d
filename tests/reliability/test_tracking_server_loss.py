"""Case 3: an unreachable, silent or lost tracking server: fail fast, block nothing, lose nothing."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from mlflow.tracking import MlflowClient

from tests.reliability.helpers import cli_args, harmonica, run
from tests.servers import free_port


def _env(uri: str) -> dict[str, str]:
    return {**os.environ, "MLFLOW_TRACKING_URI": uri}


def _startup_seconds(tmp_path, corpus) -> float:
    """What the same command needs to import everything and fail on a bad value (a loaded CI box is slow)."""
    started = time.monotonic()
    out = run(harmonica("preprocess", "--no-progress", "--workdir", str(tmp_path / "b"), *cli_args(corpus),
                        "data.max_duration=inf"), cwd=tmp_path, timeout=120)
    assert out.returncode == 1
    return time.monotonic() - started


@pytest.mark.slow
def test_a_refused_port_is_one_clear_error_within_15_s(tmp_path, tiny_corpus):
    uri = f"http://127.0.0.1:{free_port()}"
    baseline = _startup_seconds(tmp_path, tiny_corpus)
    started = time.monotonic()
    out = run(harmonica("preprocess", "--no-progress", "--workdir", str(tmp_path / "w"), *cli_args(tiny_corpus)),
              cwd=tmp_path, env=_env(uri), timeout=60)
    assert time.monotonic() - started < baseline + 15
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert f"the MLflow tracking server {uri} is unreachable" in out.stderr and "MLFLOW_TRACKING_URI" in out.stderr


@pytest.mark.slow
def test_a_silent_server_is_one_clear_error_within_15_s(tmp_path, tiny_corpus):
    baseline = _startup_seconds(tmp_path, tiny_corpus)
    with socket.socket() as silent:  # accepts connections (backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        out = run(harmonica("preprocess", "--no-progress", "--workdir", str(tmp_path / "w"), "tracking.health_timeout=3",
                            *cli_args(tiny_corpus)), cwd=tmp_path, env=_env(uri), timeout=60)
        assert time.monotonic() - started < baseline + 15
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "did not answer within 3s" in out.stderr and "tracking.health_timeout" in out.stderr


def _start_server(tmp_path, port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
           "--artifacts-destination", str(tmp_path / "server-artifacts")]
    log = open(tmp_path / "server.log", "a")
    proc = subprocess.Popen(cmd, stdout=log, stderr=log, start_new_session=True,
                            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return proc
        except OSError:
            time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError("mlflow server did not start: " + (tmp_path / "server.log").read_text()[-2000:])


def _stop(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):  # already stopped (a failed assertion between kill and restart)
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
def test_server_killed_during_training_then_sync_gives_the_uninterrupted_histories(tmp_path, tiny_corpus):
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    workdir = tmp_path / "work"
    args = cli_args(tiny_corpus, "ar", "training.ar.total_steps=80", "training.ar.ckpt_every=10",
                    "training.ar.log_every=2", "training.ar.val_every=20", "training.ar.sample_every=80")
    sampled = [*args, "tracking.system_metrics=true"]  # MLflow's own monitor, one sample a second
    sampled_env = {**_env(uri), "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1"}
    server = _start_server(tmp_path, port)
    try:
        pre = run(harmonica("preprocess", "--no-progress", "--workdir", str(workdir), *args), cwd=tmp_path, env=_env(uri))
        assert pre.returncode == 0, pre.stderr[-2000:]
        whole = run(harmonica("train", "--model-type", "ar", "--workdir", str(workdir), *args), cwd=tmp_path,
                    env=_env(uri))
        assert whole.returncode == 0, whole.stderr[-2000:]
        root = workdir / "checkpoints" / "demo" / "ar"
        before = {d.name for d in root.iterdir()}
        train = subprocess.Popen(harmonica("train", "--model-type", "ar", "--workdir", str(workdir), *sampled),
                                 cwd=tmp_path, env=sampled_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 300
        while time.time() < deadline and not [p for p in root.glob("*/ckpt/step_*") if p.parts[-3] not in before]:
            time.sleep(0.1)
        _stop(server)  # the server dies in the middle of the training
        lost_at = time.monotonic()
        _, err = train.communicate(timeout=300)
        assert time.monotonic() - lost_at < 120, "a lost server blocked the training or its exit"
        assert train.returncode == 1 and "Traceback" not in err
        assert "was lost during run" in err and "harmonica sync" in err
        assert "stopped answering" in err
        [spool] = list(root.glob("*/spool"))
        run_id = spool.parent.name
        assert (spool / "ops.jsonl").stat().st_size > 0
        assert '"system/cpu_utilization_percentage"' in (spool / "ops.jsonl").read_text()  # sampled while lost
        assert (root / run_id / "ckpt" / "step_0000080").is_dir()  # training went on to the end

        server = _start_server(tmp_path, port)
        synced = run(harmonica("sync", run_id, "--workdir", str(workdir)), cwd=tmp_path, env=_env(uri))
        assert synced.returncode == 0, synced.stderr[-2000:]
        assert "sent" in synced.stdout and (spool / "ops.jsonl").stat().st_size == 0
        client = MlflowClient(uri)
        lost_run = client.get_run(run_id)
        assert lost_run.info.status == "FINISHED"
        [other] = [r for r in client.search_runs([lost_run.info.experiment_id], "tags.`harmonica.stage` = 'train_ar'")
                   if r.info.run_id != run_id]
        for key in ("ar/loss", "val/loss", "lr/attention"):
            want = {m.step: m.value for m in client.get_metric_history(other.info.run_id, key)}
            got = [(m.step, m.value) for m in client.get_metric_history(run_id, key)]
            assert len(got) == len({s for s, _ in got}) and dict(got).keys() == want.keys(), key
            for step, value in got:
                assert value == pytest.approx(want[step], rel=1e-4, abs=1e-6), (key, step)
        system = sorted(m.step for m in client.get_metric_history(run_id, "system/cpu_utilization_percentage"))
        assert system == list(range(len(system))) and len(system) >= 3, system  # no gap, no duplicate
        arts = {a.path for a in client.list_artifacts(run_id)}
        assert {"config.yaml", "training_summary.json"} <= arts
        # the checkpoints saved while the server was away are published as models at sync, pruned like the rest
        kept = {int(p.name.split("_")[1]) for p in (root / run_id / "ckpt").glob("step_*")}
        models = client.search_logged_models([lost_run.info.experiment_id], filter_string=f"source_run_id = '{run_id}'")
        published = {(m.tags["harmonica.weights"], int(m.tags["harmonica.checkpoint_step"])) for m in models
                     if str(m.status).endswith("READY")}
        assert published == {(w, s) for w in ("raw", "ema") for s in kept} and 80 in kept
    finally:
        _stop(server)
