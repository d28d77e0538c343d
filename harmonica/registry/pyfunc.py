"""`harmonica-tts`: an MLflow pyfunc model that turns text into speech with an AR + NAR EMA pair.

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
import importlib.metadata
import io
import json
import logging
import math
import shutil
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models.signature import ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

log = logging.getLogger(__name__)

MODEL_NAME = "harmonica-tts"
EMA_FILES = ("meta.json", "ema.safetensors")
OUTPUT_COLUMNS = ("audio_b64", "sample_rate", "duration_sec", "text", "ar_frames", "gain_db")
# what inference imports (training-only deps such as optuna, faster-whisper stay out)
# espeakng-loader: the phoneme text frontend phonemises request texts in the serving process
INFERENCE_PACKAGES = ("torch", "numpy", "mlflow", "pydantic", "pyyaml", "soundfile", "soxr", "safetensors",
                      "einops", "pandas", "espeakng-loader")


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


# -------------------------------------------------------------------------------------- packaging


def stage_ema_checkpoint(src: Path, dst: Path) -> Path:
    """Copy meta.json, ema.safetensors and codec/ of a checkpoint dir (nothing else)."""
    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    for name in EMA_FILES:
        if not (src / name).is_file():
            raise FileNotFoundError(f"{src / name} is missing: the registry serves EMA weights only")
        shutil.copy2(src / name, dst / name)
    if (src / "codec").is_dir():
        shutil.copytree(src / "codec", dst / "codec", dirs_exist_ok=True)
    return dst


def find_prompt_cache(nar_meta: dict[str, Any], workdir: Path | None, cfg: Any = None) -> Any:
    """The token cache the NAR was trained on (by fingerprint), else the project's cache when it
    was encoded by the same codec, else None."""
    if workdir is None:
        return None
    from harmonica.data.cache import cache_root, find_cache, is_complete, open_cache

    want = nar_meta.get("cache_fingerprint")
    root = cache_root(Path(workdir))
    for directory in sorted(root.glob("*")) if root.is_dir() else []:
        if directory.is_dir() and is_complete(directory):
            cache = open_cache(directory)
            if want and cache.fingerprint == want:
                return cache
    if cfg is not None:
        try:
            cache, _ = find_cache(cfg, Path(workdir), allow_mismatch=True)
        except (FileNotFoundError, ValueError, RuntimeError):
            return None
        if cache.contract.get("codec_fingerprint") == nar_meta["contract"].get("codec_fingerprint"):
            return cache
    return None


def default_prompts(cache: Any, prompt_frames: int) -> tuple[dict[str, Any], list[str]]:
    """Per speaker, the first prompt-split utterance (by id, as the evaluate stage picks it)."""
    if cache is None or "prompt" not in cache.splits():
        return {}, []
    tokens = cache.load_split("prompt")
    chosen: dict[str, Any] = {}
    for i in sorted(range(len(tokens)), key=lambda j: tokens.index[j]["id"]):
        _, codes, row = tokens.item(i)
        chosen.setdefault(row["speaker"], (row["id"], codes[:, :prompt_frames].to(dtype=codes.dtype).contiguous()))
    speakers = sorted(chosen)
    tensors = {f"prompt_{i}": chosen[s][1].clone() for i, s in enumerate(speakers)}
    return {"tensors": tensors, "ids": [chosen[s][0] for s in speakers]}, speakers


def write_prompts(directory: Path, cache: Any, prompt_frames: int) -> list[str]:
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    found, speakers = default_prompts(cache, prompt_frames)
    index = {"speakers": speakers, "utterances": found.get("ids", []),
             "source": str(cache.directory) if cache is not None else None,
             "cache_fingerprint": cache.fingerprint if cache is not None else None}
    if speakers:
        save_file(found["tensors"], str(directory / "prompts.safetensors"))
    (directory / "speakers.json").write_text(json.dumps(index, indent=2), encoding="utf-8")
    return speakers


def stage_code(directory: Path) -> Path:
    """A clean copy of the harmonica package (no caches, no bundled demo corpus) for code_paths."""
    import harmonica

    src = Path(harmonica.__file__).resolve().parent
    dst = Path(directory) / "harmonica"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "demo_corpus"))
    return dst


def pip_requirements(codec_name: str = "mel_rvq") -> list[str]:
    """Pinned like pyproject.toml (the installed harmonica's metadata), else the installed versions."""
    names = list(INFERENCE_PACKAGES) + (["encodec"] if codec_name == "encodec" else [])
    declared: dict[str, str] = {}
    try:
        for req in importlib.metadata.requires("harmonica") or []:
            if ";" in req:
                continue
            base = req.split("[")[0]
            for sep in ("==", ">=", "<=", "~=", ">", "<", "!="):
                base = base.split(sep)[0]
            declared[base.strip().lower()] = req.replace(" ", "")
    except importlib.metadata.PackageNotFoundError:
        pass
    out = []
    for name in names:
        if name in declared:
            out.append(declared[name])
            continue
        try:
            version = importlib.metadata.version(name).split("+")[0]
            out.append(f"{name}=={version}")
        except importlib.metadata.PackageNotFoundError:
            out.append(name)
    return out


def model_signature(default_temperature: float) -> ModelSignature:
    inputs = Schema([
        ColSpec("string", "text"),
        ColSpec("string", "speaker", required=False),
        ColSpec("string", "prompt_audio_b64", required=False),
        ColSpec("long", "seed", required=False),
        ColSpec("double", "temperature", required=False),
    ])
    outputs = Schema([
        ColSpec("string", "audio_b64"),
        ColSpec("long", "sample_rate"),
        ColSpec("double", "duration_sec"),
        ColSpec("string", "text"),
        ColSpec("long", "ar_frames"),
        ColSpec("double", "gain_db"),
    ])
    params = ParamSchema([ParamSpec("seed", "long", 0), ParamSpec("temperature", "double", default_temperature)])
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


def build_artifacts(ar_dir: Path, nar_dir: Path, out: Path, *, decode: dict[str, Any],
                    settings: dict[str, Any] | None = None, prompt_cache: Any = None) -> dict[str, str]:
    """Stage everything the model needs under `out`; -> the `artifacts` mapping for log_model."""
    from harmonica.inference.synthesize import read_checkpoint_meta

    out = Path(out)
    ar = stage_ema_checkpoint(ar_dir, out / "ar")
    nar = stage_ema_checkpoint(nar_dir, out / "nar")
    ar_meta, nar_meta = read_checkpoint_meta(ar), read_checkpoint_meta(nar)
    prompt_frames = int(nar_meta["model_config"].get("prompt_frames", 150))
    speakers = write_prompts(out / "prompts", prompt_cache, prompt_frames)
    artifacts = {"ar": str(ar), "nar": str(nar), "prompts": str(out / "prompts")}
    codec_cfg = nar_meta.get("codec_config", {})
    if codec_cfg.get("name") == "encodec" and not any((nar / "codec").glob("*.safetensors")):
        from harmonica.codec.encodec_loading import hub_checkpoint_path

        hub = hub_checkpoint_path()
        if hub.is_file():
            (out / "encodec").mkdir(parents=True, exist_ok=True)
            shutil.copy2(hub, out / "encodec" / hub.name)
            artifacts["encodec"] = str(out / "encodec")
        else:
            log.warning("the EnCodec checkpoint is not in the torch hub cache (%s): the served model will need "
                        "it there (or network access)", hub)
    (out / "settings").mkdir(parents=True, exist_ok=True)
    full = {
        "decode": decode,
        "ar_contract": ar_meta["contract"],
        "nar_contract": nar_meta["contract"],
        "sample_rate": int(nar_meta["contract"]["sample_rate"]),
        "speaker_condition": nar_meta["model_config"].get("speaker_condition"),
        "bundled_prompt_speakers": speakers,
        "ar_step": ar_meta.get("step"),
        "nar_step": nar_meta.get("step"),
        **(settings or {}),
    }
    (out / "settings" / "settings.json").write_text(json.dumps(full, indent=2, default=str), encoding="utf-8")
    artifacts["settings"] = str(out / "settings")
    return artifacts


def log_tts_model(name: str, artifacts: dict[str, str], *, decode: dict[str, Any], code_dir: Path,
                  codec_name: str, metadata: dict[str, Any] | None = None) -> Any:
    """`mlflow.pyfunc.log_model` into the active run; -> ModelInfo (model_uri models:/<model id>)."""
    temps = decode.get("temperature") or [1.0]
    with warnings.catch_warnings():
        # no input_example on purpose: MLflow would load the model and predict to validate it, which
        # promote's smoke test already does on the staged artifacts
        warnings.filterwarnings("ignore", message=".*An input example was not provided")
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=str(Path(__file__).with_name("model_code.py")),  # models from code: nothing pickled
            artifacts=artifacts,
            code_paths=[str(code_dir)],
            pip_requirements=pip_requirements(codec_name),
            signature=model_signature(float(temps[0])),
            metadata=metadata,
        )


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
                    "this model's NAR is conditioned on an acoustic prompt and bundles no default voices: "
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
