"""`mlflow models serve -m models:/harmonica-tts@champion --env-manager local` on loopback answers
a REST request with audio. With 8-step tiny models only the response shape and a decodable WAV are
checked (plus duration == samples / rate); whether the duration is plausible for the text is checked
in the demo acceptance run with trained models."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import soundfile as sf

from harmonica.registry.promote import promote
from tests.registry.fakes import TEST_GATES, FakeStore, copy_checkpoints
from tests.servers import free_port, stop_process_group
from tests.tiny import tiny_cfg

pytestmark = pytest.mark.slow


def _post(url: str, payload: dict, timeout: float = 120) -> tuple[int, dict, float]:
    req = urllib.request.Request(url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read()), time.perf_counter() - started
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}"), time.perf_counter() - started


def test_served_champion_answers_rest_with_audio(tmp_path, tiny_cache_workdir, tiny_corpus, tiny_checkpoints):
    workdir = tmp_path / "work"
    shutil.copytree(tiny_cache_workdir, workdir)
    cfg = tiny_cfg(tiny_corpus, *TEST_GATES)
    store = FakeStore(cfg, workdir)
    ckpts = copy_checkpoints(tiny_checkpoints, workdir / "ckpts")
    decision = promote(store.candidate(ckpts), tracking_uri=store.tracking_uri, workdir=workdir, cfg=cfg,
                       smoke_test=False)
    assert decision.champion_moved

    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": store.tracking_uri, "MLFLOW_DISABLE_TELEMETRY": "true"}
    log = tmp_path / "serve.log"
    cmd = [str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m", "models:/harmonica-tts@champion",
           "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"]
    started = time.perf_counter()
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=tmp_path,
                                start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow models serve exited {proc.returncode}:\n{log.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(f"{base}/ping", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server not ready:\n{log.read_text()[-4000:]}")
            time.sleep(0.5)
        ready = time.perf_counter() - started

        text = "the old stone house near a green hill"
        status, body, first = _post(f"{base}/invocations", {"dataframe_records": [{"text": text}]})
        assert status == 200, body
        status, body, latency = _post(f"{base}/invocations", {"dataframe_records": [{"text": text, "seed": 0}]})
        assert status == 200, body
        [row] = body["predictions"]
        assert set(row) == {"audio_b64", "sample_rate", "duration_sec", "text", "ar_frames", "gain_db"}
        assert row["text"] == text and row["sample_rate"] == 24000
        wav, sr = sf.read(io.BytesIO(base64.b64decode(row["audio_b64"])), dtype="float32")
        assert sr == 24000 and wav.size / sr == pytest.approx(row["duration_sec"])
        assert wav.size == row["ar_frames"] * 320
        # params, several rows, and a clear 4xx for an unknown speaker
        status, body, _ = _post(f"{base}/invocations", {"dataframe_records": [{"text": "hello"}, {"text": "a river"}],
                                                        "params": {"seed": 1}})
        assert status == 200 and len(body["predictions"]) == 2
        status, body, _ = _post(f"{base}/invocations", {"dataframe_records": [{"text": "hi", "speaker": "Nobody"}]})
        assert 400 <= status < 500 and "known speakers: LJ" in json.dumps(body)
        print(f"\nmodels serve ready after {ready:.1f} s; first request {first:.2f} s; "
              f"request latency {latency:.2f} s for {row['duration_sec']:.2f} s of audio")
    finally:
        stop_process_group(proc)
