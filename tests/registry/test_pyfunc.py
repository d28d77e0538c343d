"""The `harmonica-tts` pyfunc: loaded by alias from the registry, it speaks; the package is EMA-only."""

from __future__ import annotations

import base64
import io
import json
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import yaml
from mlflow.exceptions import MlflowException

from harmonica.registry.promote import promote
from tests.registry.fakes import TEST_GATES, FakeStore, copy_checkpoints
from tests.tiny import tiny_cfg

TEXTS = ["a quiet river", "hello world", "the old stone house near a green hill"]


@pytest.fixture(scope="module")
def champion(tmp_path_factory, tiny_cache_workdir, tiny_checkpoints, tiny_corpus):
    """A SQLite store with one promoted champion (smoke test on), MLFLOW_TRACKING_URI pointing at it."""
    workdir = tmp_path_factory.mktemp("pyfunc") / "work"
    shutil.copytree(tiny_cache_workdir, workdir)
    cfg = tiny_cfg(tiny_corpus, *TEST_GATES)
    store = FakeStore(cfg, workdir)
    ckpts = copy_checkpoints(tiny_checkpoints, workdir / "ckpts")
    decision = promote(store.candidate(ckpts), tracking_uri=store.tracking_uri, workdir=workdir, cfg=cfg)
    assert decision.champion_moved and "smoke test" in decision.text()
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", store.tracking_uri)
    mlflow.set_tracking_uri(store.tracking_uri)
    model = mlflow.pyfunc.load_model("models:/harmonica-tts@champion")
    yield store, decision, model
    mp.undo()
    mlflow.set_tracking_uri(None)


def wav_of(b64: str) -> tuple[np.ndarray, int]:
    data, sr = sf.read(io.BytesIO(base64.b64decode(b64)), dtype="float32")
    return data, sr


@pytest.mark.slow
def test_champion_loaded_by_alias_returns_decodable_audio(champion):
    _, _, model = champion
    out = model.predict(pd.DataFrame({"text": TEXTS}))
    assert list(out.columns) == ["audio_b64", "sample_rate", "duration_sec", "text", "ar_frames", "gain_db"]
    assert list(out["text"]) == TEXTS and (out["sample_rate"] == 24000).all()
    for row in out.itertuples():
        wav, sr = wav_of(row.audio_b64)
        assert sr == 24000 and wav.size / sr == pytest.approx(row.duration_sec)
        assert row.gain_db <= 0.0  # the peak ceiling's attenuation, recorded
        if wav.size:  # never past the -1 dBFS ceiling (+ 16-bit rounding)
            assert np.abs(wav).max() <= 10 ** (-1 / 20) + 1e-4
        assert wav.size == row.ar_frames * 320  # mel_rvq hop length: one AR frame = 320 samples
    assert (out["duration_sec"] > 0).any(), "the tiny model stopped at once on every text"


def test_speakers_prompt_audio_seed_and_temperature(champion, tiny_corpus):
    _, _, model = champion
    base = model.predict(pd.DataFrame({"text": ["hello"], "speaker": ["LJ"], "seed": [0]}))
    same = model.predict(pd.DataFrame({"text": ["hello"]}))  # default speaker = the first bundled one
    assert base["audio_b64"][0] == same["audio_b64"][0]
    with pytest.raises(MlflowException, match="unknown speaker 'Nobody'; known speakers: LJ"):
        model.predict(pd.DataFrame({"text": ["hello"], "speaker": ["Nobody"]}))
    with pytest.raises(MlflowException, match="non-empty `text`"):
        model.predict(pd.DataFrame({"text": [""]}))
    ref = next(Path(tiny_corpus).rglob("*.wav"))
    b64 = base64.b64encode(ref.read_bytes()).decode()
    voiced = model.predict(pd.DataFrame({"text": ["hello"], "prompt_audio_b64": [b64]}))
    assert wav_of(voiced["audio_b64"][0])[1] == 24000
    with pytest.raises(MlflowException, match="not a base64-encoded audio file"):
        model.predict(pd.DataFrame({"text": ["hello"], "prompt_audio_b64": [base64.b64encode(b"junk").decode()]}))
    hot = model.predict(pd.DataFrame({"text": ["hello", "hello"], "seed": [1, 2], "temperature": [1.5, 0.7]}))
    assert len(hot) == 2
    by_param = model.predict(pd.DataFrame({"text": ["hello"]}), params={"seed": 1, "temperature": 1.5})
    assert by_param["audio_b64"][0] == hot["audio_b64"][0]  # row values and params mean the same


def test_model_package_is_ema_only_with_code_prompts_and_pinned_requirements(champion, tmp_path):
    _, decision, _ = champion
    local = Path(mlflow.artifacts.download_artifacts("models:/harmonica-tts@champion", dst_path=str(tmp_path)))
    arts = local / "artifacts"
    for kind in ("ar", "nar"):
        names = {p.name for p in (arts / kind).iterdir()}
        assert names == {"meta.json", "ema.safetensors", "codec"}, names
    assert json.loads((arts / "prompts" / "speakers.json").read_text())["speakers"] == ["LJ"]
    assert (arts / "prompts" / "prompts.safetensors").is_file()
    settings = json.loads((arts / "settings" / "settings.json").read_text())
    assert settings["decode_source"] == "the evaluate run's config.yaml"
    assert settings["evaluation_run_id"] == decision.evaluation_run_id
    assert (local / "code" / "harmonica" / "registry" / "pyfunc.py").is_file()
    assert not list((local / "code").rglob("demo_corpus")) and not list((local / "code").rglob("__pycache__"))
    reqs = (local / "requirements.txt").read_text().split()
    assert "torch==2.13.0" in reqs and "mlflow==3.17.2" in reqs and not any("optuna" in r for r in reqs)
    mlmodel = yaml.safe_load((local / "MLmodel").read_text())
    inputs = json.loads(mlmodel["signature"]["inputs"])
    assert [(c["name"], c["type"], c.get("required", True)) for c in inputs] == [
        ("text", "string", True), ("speaker", "string", False), ("prompt_audio_b64", "string", False),
        ("seed", "long", False), ("temperature", "double", False)]
    size = sum(p.stat().st_size for p in arts.rglob("*") if p.is_file())
    assert size < 2_000_000  # EMA weights of the tiny pair + codebooks + prompts
