"""Cases 2 and 6 (SIGINT): resume never rewrites a run's record; kills lose and duplicate nothing."""

import os
import shlex
import signal
import subprocess
import sys
import time

import pytest

from harmonica.tracking.read import parse_image_path
from tests.reliability.helpers import cli_args, harmonica, run, runs_of


def _snapshot(client, run_id):
    r = client.get_run(run_id)
    config = client.download_artifacts(run_id, "config.yaml")
    return {"status": r.info.status, "params": dict(r.data.params), "tags": dict(r.data.tags),
            "config": open(config).read()}


@pytest.fixture
def finished_ar_run(tmp_path, tiny_corpus):
    workdir = tmp_path / "work"
    for cmd in (("preprocess", "--no-progress"), ("train", "--model-type", "ar")):
        out = run(harmonica(*cmd, "--workdir", str(workdir), *cli_args(tiny_corpus, "ar")), cwd=tmp_path)
        assert out.returncode == 0, out.stderr[-3000:]
    client, [r] = runs_of(workdir, "train_ar")
    return workdir, client, r.info.run_id


@pytest.mark.slow
def test_refused_and_failed_resumes_leave_the_run_untouched(tmp_path, tiny_corpus, finished_ar_run):
    workdir, client, run_id = finished_ar_run
    before = _snapshot(client, run_id)
    train = ("train", "--model-type", "ar", "--workdir", str(workdir), "--resume")

    refused = run(harmonica(*train, *cli_args(tiny_corpus, "ar", "training.ar.lr=0.0005")), cwd=tmp_path)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "training.ar.lr: checkpoint" in refused.stderr and "-> requested 0.0005" in refused.stderr
    assert "drop --resume" in refused.stderr and "--accept-config-change" in refused.stderr
    assert _snapshot(client, run_id) == before

    failed = run(harmonica(*train, "--accept-config-change", *cli_args(tiny_corpus, "ar", "model.ar.d_model=64")),
                 cwd=tmp_path)
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert "model.safetensors does not fit the model of this config" in failed.stderr
    assert _snapshot(client, run_id) == before

    ckpt_dir = workdir / "checkpoints" / "demo" / "ar" / run_id / "ckpt"
    model = ckpt_dir / "step_0000008" / "model.safetensors"
    model.write_bytes(model.read_bytes()[:100])  # the newest checkpoint is damaged
    accepted = run(harmonica(*train, "--accept-config-change",
                             *cli_args(tiny_corpus, "ar", "training.ar.lr=0.0005")), cwd=tmp_path)
    assert accepted.returncode == 0, accepted.stderr[-3000:]
    assert "skipping damaged checkpoint" in accepted.stderr and "step_0000008" in accepted.stderr
    after = _snapshot(client, run_id)
    assert after["config"] == before["config"] and after["params"] == before["params"]
    assert after["tags"]["harmonica.config_hash"] == before["tags"]["harmonica.config_hash"]
    assert "training.ar.lr" in after["tags"]["harmonica.resume_1.changes"]
    assert after["tags"]["harmonica.resumed_from"].endswith("step_0000004")
    assert "step_0000008: model.safetensors" in after["tags"]["harmonica.resume_skipped"]
    resumed_cfg = open(client.download_artifacts(run_id, "config.resume-1.yaml")).read()
    assert "lr: 0.0005" in resumed_cfg


def _wait_for(path_glob, root, deadline_s=300):
    deadline = time.time() + deadline_s
    while time.time() < deadline and not list(root.glob(path_glob)):
        time.sleep(0.2)
    assert list(root.glob(path_glob)), f"{path_glob} never appeared"


@pytest.mark.slow
def test_sigkill_then_resume_gives_the_histories_of_an_uninterrupted_run(tmp_path, tiny_corpus):
    workdir = tmp_path / "work"
    args = cli_args(tiny_corpus, "ar", "training.ar.total_steps=60", "training.ar.ckpt_every=20",
                    "training.ar.log_every=2", "training.ar.val_every=10", "training.ar.sample_every=60")
    pre = run(harmonica("preprocess", "--no-progress", "--workdir", str(workdir), *args), cwd=tmp_path)
    assert pre.returncode == 0, pre.stderr[-2000:]
    whole = run(harmonica("train", "--model-type", "ar", "--workdir", str(workdir), *args), cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr[-2000:]
    client, [uninterrupted] = runs_of(workdir, "train_ar")

    proc = subprocess.Popen(harmonica("train", "--model-type", "ar", "--workdir", str(workdir), *args),
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    root = workdir / "checkpoints" / "demo" / "ar"
    _wait_for("*/ckpt/step_0000020", root)
    time.sleep(0.5)  # a few steps past the checkpoint
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    resumed = run(harmonica("train", "--model-type", "ar", "--workdir", str(workdir), "--resume", *args),
                  cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _, runs = runs_of(workdir, "train_ar")
    [killed] = [r for r in runs if r.info.run_id != uninterrupted.info.run_id]
    assert killed.info.status == "FINISHED"
    for key in ("ar/loss", "lr/attention", "val/loss", "grad_norm/total", "ar/cb0/util_pred"):
        want = {m.step: m.value for m in client.get_metric_history(uninterrupted.info.run_id, key)}
        got = [(m.step, m.value) for m in client.get_metric_history(killed.info.run_id, key)]
        assert len(got) == len({s for s, _ in got}), f"{key}: duplicated steps"
        assert dict(got).keys() == want.keys(), key
        for step, value in got:
            assert value == pytest.approx(want[step], rel=1e-4, abs=1e-6), (key, step)
    heatmaps = [sorted(i.step for a in client.list_artifacts(r.info.run_id, "images")
                       if (i := parse_image_path(a.path)) is not None and i.key == "ar/util_heatmap")
                for r in (uninterrupted, killed)]
    assert heatmaps[0] == heatmaps[1] == [10, 20, 30, 40, 50, 60]  # one per validation, none logged twice


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_sigint_prints_the_exact_resume_command(tmp_path, tiny_corpus, sig, code):
    """Ctrl-C, and SIGTERM (kill, timeout, a scheduler's preemption) alike: KILLED run, resume command."""
    workdir = tmp_path / "work"
    args = cli_args(tiny_corpus, "ar", "training.ar.total_steps=400", "training.ar.ckpt_every=40",
                    "training.ar.val_every=400", "training.ar.sample_every=400")
    pre = run(harmonica("preprocess", "--no-progress", "--workdir", str(workdir), *args), cwd=tmp_path)
    assert pre.returncode == 0, pre.stderr[-2000:]
    # as from a terminal: a suite started in the background of a non-interactive shell inherits SIGINT
    # ignored, and Python then never raises KeyboardInterrupt (found when CI was launched with `&`)
    proc = subprocess.Popen(harmonica("train", "--model-type", "ar", "--workdir", str(workdir), *args),
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    _wait_for("*/ckpt/step_0000040", workdir / "checkpoints" / "demo" / "ar")
    assert proc.poll() is None, "training ended before it could be interrupted: raise total_steps"
    proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:  # hung on its way out: show where (SIGUSR1 dumps every thread)
        proc.send_signal(signal.SIGUSR1)
        time.sleep(3)
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"train did not exit within 120 s of {sig.name}; its threads:\n{err[-8000:]}")
    assert proc.returncode == code, err[-3000:]
    assert "stopping after this step" in err  # taken at a step boundary, not inside a write
    line = next(ln.strip() for ln in err.splitlines() if ln.strip().startswith("harmonica train"))
    cmd = shlex.split(line)
    assert "--resume" in cmd and str(workdir.resolve()) in cmd
    _, [r] = runs_of(workdir, "train_ar")
    assert r.info.status == "KILLED"
    cont = run([sys.executable, "-m", "harmonica.cli", *cmd[1:]], cwd=tmp_path)  # exactly as printed
    assert cont.returncode == 0, cont.stderr[-2000:]
    _, [r] = runs_of(workdir, "train_ar")
    assert r.info.status == "FINISHED" and r.data.tags["harmonica.steps"] == "400"
