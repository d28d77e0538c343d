"""Run several promote_worker processes released at the same instant; collect their decisions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def race(uri: str, workdir: Path, corpus: Path, evaluations: list[str], tmp: Path, timeout: float = 300,
         model_name: str = "harmonica-tts") -> list[dict]:
    go = tmp / "go"
    env = {**os.environ, "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", "PYTHONPATH": str(ROOT)}
    env.pop("MLFLOW_TRACKING_URI", None)
    procs = [
        subprocess.Popen([sys.executable, "-m", "tests.registry.promote_worker", "--uri", uri, "--workdir", str(workdir),
                          "--evaluation", e, "--corpus", str(corpus), "--go", str(go), "--model-name", model_name],
                         cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for e in evaluations
    ]
    deadline = time.monotonic() + timeout
    try:
        while not all(Path(f"{go}.ready.{e}").exists() for e in evaluations):
            dead = [p for p in procs if p.poll() is not None]
            if dead:
                raise AssertionError(f"a worker died before the start: {dead[0].stderr.read()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError("workers never got ready")
            time.sleep(0.05)
        go.touch()
        outs = []
        for p in procs:
            stdout, stderr = p.communicate(timeout=max(deadline - time.monotonic(), 1))
            assert p.returncode == 0, stderr[-4000:]
            outs.append(json.loads(stdout.strip().splitlines()[-1]))
        return outs
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
