"""Speaker similarity (SIM gate): cosine between speaker embeddings of generated and reference audio.

Backends:
- `ecapa`: speechbrain's ECAPA-TDNN (the model seed-tts-eval style SIM numbers are usually quoted
  with). Needs speechbrain (whose import needs a loadable torchaudio) and the model files, which
  come only from a hub, so offline `eval.speaker.ecapa_source` must be a local directory.
- `resemblyzer`: GE2E encoder whose weights ship in the wheel; works offline everywhere. Scores
  are not comparable with ECAPA numbers (espeak-ng voices: same voice ~0.85, male vs female ~0.6).
- `auto`: ECAPA if it loads, otherwise resemblyzer with a warning.

Encoders load lazily and once per process (`build_speaker_encoder` caches by backend and source).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import soxr

from harmonica.config.schema import SpeakerSimConfig

logger = logging.getLogger(__name__)

SPEAKER_SAMPLE_RATE = 16_000  # both backends are trained on 16 kHz speech
# Below this much voiced audio (after resemblyzer's VAD trimming) an embedding is mostly padding.
MIN_VOICED_SEC = 0.1
SILENT_PEAK = 1e-4
_ECAPA_FIX = ("install speechbrain and give eval.speaker.ecapa_source a local directory with the ECAPA "
              "files (hyperparams.yaml, embedding_model.ckpt, ...), or use eval.speaker.backend=resemblyzer")

_ENCODERS: dict[tuple[str, str], SpeakerEncoder] = {}
_REF_CACHE: dict[tuple[int, int, str], np.ndarray] = {}
_REF_CACHE_SIZE = 256


class SpeakerBackendError(RuntimeError):
    """A speaker-embedding backend cannot be imported or loaded; the message names the fix."""


class EmptyAudioError(ValueError):
    """The waveform has (almost) no voiced audio, so it has no meaningful speaker embedding."""


def _mono16k(wav: np.ndarray, sr: int) -> np.ndarray:
    x = np.nan_to_num(np.asarray(wav, dtype=np.float32).reshape(-1))
    if sr != SPEAKER_SAMPLE_RATE and x.size:
        x = soxr.resample(x, sr, SPEAKER_SAMPLE_RATE, quality="HQ").astype(np.float32, copy=False)
    return x


def _unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32).reshape(-1)
    n = float(np.linalg.norm(v))
    if not np.isfinite(n) or n == 0.0:
        raise EmptyAudioError("speaker embedding has zero norm (no usable speech in the input)")
    return v / n


class SpeakerEncoder:
    """Base class: `embed(wav, sr)` returns an L2-normalised 1-D float32 embedding.

    Raises EmptyAudioError (a ValueError) for input without usable speech instead of returning a
    zero vector, which would silently score as SIM 0 (or NaN) downstream.
    """

    name: str = "base"

    def embed(self, wav: np.ndarray, sr: int) -> np.ndarray:
        raise NotImplementedError

    def load(self) -> SpeakerEncoder:
        """Load weights now (raises SpeakerBackendError); otherwise they load on first embed."""
        return self


class ResemblyzerEncoder(SpeakerEncoder):
    """resemblyzer.VoiceEncoder (GE2E, 256-dim) on CPU; weights ship with the package."""

    name = "resemblyzer"

    def __init__(self) -> None:
        self._encoder: Any = None

    def load(self) -> ResemblyzerEncoder:
        if self._encoder is None:
            try:
                with warnings.catch_warnings():  # webrtcvad imports the deprecated pkg_resources
                    warnings.simplefilter("ignore")
                    from resemblyzer import VoiceEncoder
            except Exception as e:
                raise SpeakerBackendError(f"cannot import resemblyzer ({type(e).__name__}: {e}); "
                                          "pip install resemblyzer==0.1.4") from e
            self._encoder = VoiceEncoder(device="cpu", verbose=False)
        return self

    def embed(self, wav: np.ndarray, sr: int) -> np.ndarray:
        self.load()
        from resemblyzer import preprocess_wav

        x = _mono16k(wav, sr)
        # A webrtcvad window is 30 ms; shorter input cannot be analysed at all.
        if x.size < SPEAKER_SAMPLE_RATE * 0.03:
            raise EmptyAudioError(
                f"audio too short for a speaker embedding ({x.size / SPEAKER_SAMPLE_RATE:.3f} s)")
        if float(np.abs(x).max()) < SILENT_PEAK:  # resemblyzer's volume normalisation divides by 0
            raise EmptyAudioError("silent audio (peak < -80 dBFS) has no speaker embedding")
        # Its VAD packs samples as int16: values past full scale (an over-driven generation) would wrap.
        x = preprocess_wav(np.clip(x, -1.0, 1.0))  # volume normalisation + VAD trimming of long silences
        if x.size < MIN_VOICED_SEC * SPEAKER_SAMPLE_RATE:
            raise EmptyAudioError(f"only {x.size / SPEAKER_SAMPLE_RATE:.3f} s of voiced audio "
                                  f"(< {MIN_VOICED_SEC} s) for a speaker embedding")
        return _unit(self._encoder.embed_utterance(x))


def _import_speechbrain_classifier() -> Any:
    try:
        from speechbrain.inference.speaker import (
            EncoderClassifier,  # speechbrain >= 1.0
        )
    except ImportError:
        from speechbrain.pretrained import EncoderClassifier  # speechbrain 0.5
    return EncoderClassifier


def _cache_root() -> Path:
    return Path(os.environ.get("HARMONICA_CACHE", Path.home() / ".cache" / "harmonica"))


class EcapaEncoder(SpeakerEncoder):
    """speechbrain ECAPA-TDNN (192-dim) from a hub name or a local directory."""

    name = "ecapa"

    def __init__(self, source: str) -> None:
        self.source = source
        self._model: Any = None

    def load(self) -> EcapaEncoder:
        if self._model is not None:
            return self
        try:
            classifier_cls = _import_speechbrain_classifier()
        except Exception as e:  # ImportError, or OSError when torchaudio's CUDA libs cannot load
            raise SpeakerBackendError(f"ECAPA speaker backend unavailable: cannot import speechbrain "
                                      f"({type(e).__name__}: {e}). Fix: {_ECAPA_FIX}") from e
        src = Path(self.source).expanduser()
        source = str(src.resolve()) if src.is_dir() else self.source
        savedir = _cache_root() / "ecapa" / re.sub(r"[^A-Za-z0-9_.-]+", "_", source.strip("/"))
        try:
            model = classifier_cls.from_hparams(source=source, savedir=str(savedir),
                                                run_opts={"device": "cpu"})
        except Exception as e:  # hub/network errors, missing files in a local dir
            raise SpeakerBackendError(f"cannot load ECAPA model from {self.source!r} "
                                      f"({type(e).__name__}: {e}). Fix: {_ECAPA_FIX}") from e
        if model is None:
            raise SpeakerBackendError(f"speechbrain returned no model for {self.source!r}. Fix: {_ECAPA_FIX}")
        model.eval()
        self._model = model
        return self

    def embed(self, wav: np.ndarray, sr: int) -> np.ndarray:
        self.load()
        import torch

        x = _mono16k(wav, sr)
        if x.size < SPEAKER_SAMPLE_RATE * MIN_VOICED_SEC or float(np.abs(x).max(initial=0.0)) < SILENT_PEAK:
            raise EmptyAudioError("audio too short or silent for a speaker embedding")
        with torch.inference_mode():
            emb = self._model.encode_batch(torch.from_numpy(x)[None])
        return _unit(emb.squeeze().cpu().numpy())


def build_speaker_encoder(cfg: SpeakerSimConfig) -> SpeakerEncoder:
    """The process-wide, loaded encoder for `cfg`; `auto` tries ECAPA then falls back to resemblyzer.

    Raises SpeakerBackendError when the requested backend (ecapa or resemblyzer) cannot load.
    """
    key = (cfg.backend, cfg.ecapa_source if cfg.backend in ("auto", "ecapa") else "")
    enc = _ENCODERS.get(key)
    if enc is not None:
        return enc
    if cfg.backend == "resemblyzer":
        enc = ResemblyzerEncoder().load()
    elif cfg.backend == "ecapa":
        enc = EcapaEncoder(cfg.ecapa_source).load()
    else:
        try:
            enc = EcapaEncoder(cfg.ecapa_source).load()
        except SpeakerBackendError as e:
            logger.warning("eval.speaker.backend=auto: ECAPA unavailable, falling back to resemblyzer "
                           "(SIM values are not comparable with ECAPA-based numbers). Reason: %s", e)
            enc = _ENCODERS.get(("resemblyzer", "")) or ResemblyzerEncoder().load()
            _ENCODERS[("resemblyzer", "")] = enc
    _ENCODERS[key] = enc
    return enc


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two vectors; 0.0 if either has zero norm."""
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    b = np.asarray(b, dtype=np.float64).reshape(-1)
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


def speaker_similarity(encoder: SpeakerEncoder, generated_wav: np.ndarray, reference_wav: np.ndarray,
                       sr: int) -> float:
    """Cosine between embeddings of a generated utterance and the speaker's reference audio.

    Raises EmptyAudioError (a ValueError) when either side has no usable speech: there is no
    meaningful score then, and the caller decides (the eval suite records NaN and leaves the case
    to the failure detectors rather than averaging a made-up 0 into SIM).
    """
    return cosine(encoder.embed(generated_wav, sr), _reference_embedding(encoder, reference_wav, sr))


def _reference_embedding(encoder: SpeakerEncoder, wav: np.ndarray, sr: int) -> np.ndarray:
    # One reference serves many generations (every utterance of a speaker, every baseline), so
    # its embedding is memoised by content; hashing a few seconds of audio costs microseconds.
    x = np.ascontiguousarray(wav, dtype=np.float32)
    key = (id(encoder), sr, hashlib.blake2b(x.tobytes(), digest_size=16).hexdigest())
    emb = _REF_CACHE.get(key)
    if emb is None:
        emb = encoder.embed(x, sr)
        if len(_REF_CACHE) >= _REF_CACHE_SIZE:
            _REF_CACHE.pop(next(iter(_REF_CACHE)))  # drop the oldest entry
        _REF_CACHE[key] = emb
    return emb
