"""The `dashboard` extra: optuna-dashboard serves a sweep's study storage (the README's command)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import optuna
import pytest

from harmonica.sweep.storage import open_storage
from harmonica.sweep.study import top_up


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _dashboard() -> str:
    found = shutil.which("optuna-dashboard") or shutil.which("optuna-dashboard", path=str(Path(sys.executable).parent))
    assert found, "optuna-dashboard is missing: pip install -e '.[dashboard]'"
    return found


@pytest.mark.slow
def test_optuna_dashboard_serves_the_sweep_study(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"  # what `harmonica sweep` makes under its workdir
    study = optuna.create_study(study_name="dash-study", storage=open_storage(url, heartbeat_interval=None))
    top_up(study, 3, baseline={"x": 0.5})
    for _ in range(3):
        trial = study.ask()
        study.tell(trial, (trial.suggest_float("x", 0.0, 1.0) - 0.3) ** 2)
    port = _free_port()
    proc = subprocess.Popen([_dashboard(), url, "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, body = time.time() + 60, None
        while body is None and time.time() < deadline:
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as resp:
                    body = json.loads(resp.read())
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.3)
        assert body is not None, "optuna-dashboard did not answer within 60 s"
        [summary] = [s for s in body["study_summaries"] if s["study_name"] == "dash-study"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/{summary['study_id']}", timeout=10) as resp:
            detail = json.loads(resp.read())
        assert len(detail["trials"]) == 3 and {t["state"] for t in detail["trials"]} == {"Complete"}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
