"""`harmonica-tts`: the MLflow pyfunc model that turns text into speech with an AR + NAR EMA pair.

Why this module imports mlflow (the one exception to "only harmonica/tracking/ imports mlflow", see
harmonica.tracking.MLFLOW_OUTSIDE_TRACKING): MLflow itself loads this class when it serves or loads
the model (`mlflow models serve`, `mlflow.pyfunc.load_model`), so it must subclass
`mlflow.pyfunc.PythonModel`, and a bad request must raise an `MlflowException` to become an HTTP 400.
model_code.py next to it is the models-from-code entry MLflow executes (`mlflow.models.set_model`).
Everything else about the model (staging its files, logging it, registering it) happens elsewhere:
harmonica.registry.package and harmonica.tracking.models.

What the logged model holds (artifacts):
    ar/, nar/     EMA-only copies of the two checkpoint directories: meta.json (contract, model /
                  codec / text configs, speakers), ema.safetensors and codec/ (codec state: fitted
                  codebooks or weights). No raw weights, optimizer or trainer state.
    prompts/      prompts.safetensors (one default acoustic prompt [n_q, P] per speaker, from the
                  token cache's held-out prompt split) + speakers.json; empty when no cache is at hand
    settings/     settings.json: decode settings the candidate was evaluated with, both contracts,
                  sample rate, provenance of the package
    code/         the harmonica package itself (code_paths), so `mlflow models serve` needs no install
    (encodec/)    only for an unmodified pretrained EnCodec codec: its published checkpoint, copied
                  into the torch hub cache on load so serving works offline

Input (DataFrame or `dataframe_records`): text (str, required); speaker (str, optional: a bundled
speaker name); prompt_audio_b64 (str, optional: base64 WAV of the target voice, any rate);
seed (long, optional); temperature (double, optional: AR sampling temperature). Params `seed` and
`temperature` give request-wide defaults; row values win.

Output: one row per input row: audio_b64 (base64 16-bit PCM mono WAV), sample_rate, duration_sec,
text, ar_frames, gain_db (the peak ceiling's attenuation in dB, <= 0: no audio leaves past
decode.peak_ceiling_db, by default the corpus's -1 dBFS peak, so none is clipped silently).
Semantics: a model that emits its stop token at once yields an empty (0-sample, duration 0) but
valid WAV — a weak model's answer, not an error.

Voice: a NAR with speaker_condition=prompt uses prompt_audio_b64 when given, else the bundled
prompt of `speaker` (default: the first bundled speaker); speaker_condition=embedding uses the
speaker's table index (unknown speaker name -> error listing the known ones).
"""

from __future__ import annotations

import base64
import io
import json
import math
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

# the signature (name, MLflow type, required) the model is logged with; predict answers these columns
INPUTS = (("text", "string", True), ("speaker", "string", False), ("prompt_audio_b64", "string", False),
          ("seed", "long", False), ("temperature", "double", False))
OUTPUTS = (("audio_b64", "string"), ("sample_rate", "long"), ("duration_sec", "double"), ("text", "string"),
           ("ar_frames", "long"), ("gain_db", "double"))
OUTPUT_COLUMNS = tuple(name for name, _ in OUTPUTS)


class ServingInputError(MlflowException):
    """A request the model cannot answer (unknown speaker, missing prompt, empty text): HTTP 400."""

    def __init__(self, message: str) -> None:
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)


# -------------------------------------------------------------------------------------- wav <-> b64


def encode_wav_b64(wav: np.ndarray, sample_rate: int) -> str:
    import soundfile as sf

    buf = io.BytesIO()
    data = np.clip(np.asarray(wav, dtype=np.float32).reshape(-1), -1.0, 1.0)
    sf.write(buf, data, sample_rate, format="WAV", subtype="PCM_16")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def decode_wav_b64(text: str) -> tuple[np.ndarray, int]:
    """-> (float32 mono waveform, sample rate)."""
    import soundfile as sf

    try:
        data, sr = sf.read(io.BytesIO(base64.b64decode(text, validate=False)), dtype="float32", always_2d=True)
    except Exception as exc:  # noqa: BLE001  (soundfile raises several types)
        raise ServingInputError(f"prompt_audio_b64 is not a base64-encoded audio file: {exc}") from None
    return data.mean(axis=1), int(sr)


# -------------------------------------------------------------------------------------- the model


def _present(value: Any) -> bool:
    if value is None:
        return False
    if isinstance(value, float) and math.isnan(value):
        return False
    try:
        import pandas as pd

        if value is pd.NA or value is pd.NaT:
            return False
    except ImportError:  # pragma: no cover
        pass
    return not (isinstance(value, str) and not value.strip())


def with_ar_temperature(decode: dict[str, Any], temperature: float) -> dict[str, Any]:
    """Replace the AR (first-codebook) temperature; the NAR codebooks keep theirs."""
    temps = list(decode.get("temperature") or [1.0, 0.0])
    rest = temps[1:] or temps[-1:]
    return {**decode, "temperature": [float(temperature), *rest]}


class HarmonicaTTS(mlflow.pyfunc.PythonModel):
    """Loads once per process (load_context); predict() is serialised by a lock (one CPU model)."""

    def load_context(self, context: Any) -> None:
        import torch
        from safetensors.torch import load_file

        from harmonica.config.schema import DecodeConfig
        from harmonica.inference.synthesize import Synthesizer

        arts = context.artifacts
        if arts.get("encodec"):
            from harmonica.codec.encodec_loading import hub_checkpoint_path

            hub = hub_checkpoint_path()
            src = Path(arts["encodec"]) / hub.name
            if src.is_file() and not hub.is_file():
                hub.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, hub)
        self.settings = json.loads((Path(arts["settings"]) / "settings.json").read_text(encoding="utf-8"))
        self.decode_base = DecodeConfig.model_validate(self.settings["decode"]).model_dump(mode="json")
        self.synth = Synthesizer(Path(arts["ar"]), Path(arts["nar"]), weights="ema",
                                 decode=DecodeConfig.model_validate(self.decode_base))
        index = json.loads((Path(arts["prompts"]) / "speakers.json").read_text(encoding="utf-8"))
        self.prompt_speakers: list[str] = list(index.get("speakers", []))
        self.prompts: dict[str, torch.Tensor] = {}
        if self.prompt_speakers:
            tensors = load_file(str(Path(arts["prompts"]) / "prompts.safetensors"))
            self.prompts = {s: tensors[f"prompt_{i}"].long() for i, s in enumerate(self.prompt_speakers)}
        self.speaker_table: dict[str, int] = dict(self.synth.nar_meta.get("speakers") or {})
        self._lock = threading.Lock()

    # ---------------------------------------------------------------------------------- helpers
    def _voice(self, speaker: str | None, prompt_b64: str | None) -> tuple[Any, int | None]:
        """-> (acoustic prompt [n_q, P] or None, speaker index or None)."""
        condition = self.synth.speaker_condition
        if condition == "prompt":
            if prompt_b64:
                wav, sr = decode_wav_b64(prompt_b64)
                with tempfile.NamedTemporaryFile(suffix=".wav") as tmp:
                    import soundfile as sf

                    sf.write(tmp.name, wav, sr, subtype="FLOAT")
                    return self.synth.prompt_from_wav(tmp.name), None
            if not self.prompts:
                raise ServingInputError(
                    "this model is conditioned on an acoustic prompt and bundles no default voices: "
                    "pass prompt_audio_b64 (base64 WAV, a few seconds of the target voice)"
                )
            name = speaker or self.prompt_speakers[0]
            if name not in self.prompts:
                raise ServingInputError(f"unknown speaker {name!r}; known speakers: {', '.join(self.prompt_speakers)} "
                                        "(or pass prompt_audio_b64)")
            return self.prompts[name], None
        if condition == "embedding":
            if speaker is None:
                return None, 0
            if speaker not in self.speaker_table:
                raise ServingInputError(f"unknown speaker {speaker!r}; known speakers: "
                                        f"{', '.join(sorted(self.speaker_table)) or '(none)'}")
            return None, int(self.speaker_table[speaker])
        return None, None

    def _one(self, text: Any, speaker: Any, prompt_b64: Any, seed: int, temperature: float | None) -> dict[str, Any]:
        from harmonica.config.schema import DecodeConfig

        if not _present(text) or not isinstance(text, str):
            raise ServingInputError("every row needs a non-empty `text`")
        prompt, index = self._voice(speaker if _present(speaker) else None,
                                    prompt_b64 if _present(prompt_b64) else None)
        decode = self.decode_base if temperature is None else with_ar_temperature(self.decode_base, temperature)
        with self._lock:
            self.synth.decode = DecodeConfig.model_validate(decode)
            wav, info = self.synth.synthesize(text, prompt=prompt, speaker=index, seed=int(seed))
        sr = int(self.synth.sample_rate)
        return {"audio_b64": encode_wav_b64(wav, sr), "sample_rate": sr, "duration_sec": float(wav.size) / sr,
                "text": text, "ar_frames": int(info.get("ar_frames", 0)),
                "gain_db": float(info.get("gain_db", 0.0))}

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        # (a DataFrame type hint: MLflow infers no schema from it; the explicit signature rules)
        df = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        if "text" not in df.columns:
            raise ServingInputError("the input needs a `text` column")
        params = params or {}
        default_seed = int(params["seed"]) if _present(params.get("seed")) else 0
        default_temp = float(params["temperature"]) if _present(params.get("temperature")) else None
        rows = []
        for rec in df.to_dict("records"):
            seed = int(rec["seed"]) if _present(rec.get("seed")) else default_seed
            temp = float(rec["temperature"]) if _present(rec.get("temperature")) else default_temp
            rows.append(self._one(rec.get("text"), rec.get("speaker"), rec.get("prompt_audio_b64"), seed, temp))
        return pd.DataFrame(rows, columns=list(OUTPUT_COLUMNS))
