"""mel_rvq: residual k-means over log-mel frames, decoded with Griffin-Lim.

A training-free codec that works offline: `fit` learns ``n_q`` residual codebooks of
``codebook_size`` centroids on log-mel frames of training audio; `decode` sums the centroids,
maps log-mel back to a linear magnitude (pseudo-inverse of the filterbank, clamped >= 0, plus a
few projected-gradient NNLS steps) and runs fast Griffin-Lim. DSP conventions: `harmonica.codec.mel`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from harmonica.codec.base import (
    Codec,
    ParamValue,
    check_settings,
    hash_settings,
    hash_tensors,
    read_state_json,
    write_state_json,
)
from harmonica.codec.kmeans import (
    FrameReservoir,
    residual_dequantize,
    residual_kmeans,
    residual_quantize,
)
from harmonica.codec.mel import MelAnalyzer
from harmonica.config.schema import CodecConfig

log = logging.getLogger(__name__)

ALGORITHM_VERSION = "mel_rvq/1"  # bump when a code change alters codes for the same settings
CODEBOOKS_FILE = "mel_rvq_codebooks.safetensors"
NNLS_ITERS = 8  # refinement of the pinv magnitude; cheap and lowers the mel mismatch


class MelRVQCodec(Codec):
    """Residual k-means tokenizer of log-mel frames (see module docstring)."""

    name = "mel_rvq"

    def __init__(self, cfg: CodecConfig) -> None:
        self.cfg = cfg
        self.sample_rate = cfg.sample_rate
        self.n_q = cfg.n_q
        self.sizes = cfg.stage_sizes
        self.codebook_size = self.sizes[0]  # the largest; stage s uses entries [0, sizes[s])
        self.mel = MelAnalyzer(cfg.sample_rate, cfg.n_fft, cfg.hop_length, cfg.n_mels)
        self.codebooks: torch.Tensor | None = None  # [n_q, K, n_mels]
        self.counts: torch.Tensor | None = None  # [n_q, K] fit-time usage, for diagnostics
        self._fingerprint: str | None = None

    # ------------------------------------------------------------------ properties

    @property
    def hop_length(self) -> int:
        return self.cfg.hop_length

    @property
    def stage_sizes(self) -> list[int]:
        return list(self.sizes)

    @property
    def pretrained(self) -> bool:
        return self.codebooks is not None

    @property
    def needs_fit(self) -> bool:
        return self.codebooks is None

    # ------------------------------------------------------------------ fitting

    def features(self, wav: np.ndarray) -> torch.Tensor:
        """Log-mel frames ``[ceil(T/hop), n_mels]`` of one waveform."""
        return self.mel.log_mel(self._check_wav(wav))

    def latent(self, wav: np.ndarray) -> torch.Tensor:
        return self.features(wav)  # [T, n_mels]

    def fit(self, wavs: Iterable[np.ndarray]) -> None:
        """(Re)fit the codebooks on at most ``kmeans_max_frames`` seeded-sampled frames."""
        pool = FrameReservoir(self.cfg.kmeans_max_frames, self.cfg.seed)
        for wav in wavs:
            pool.add(self.features(wav).numpy())
        frames = pool.sample()  # [N, n_mels]
        if frames.shape[0] < self.codebook_size:  # [N, n_mels]
            log.warning(
                "mel_rvq: fitting %d centroids on only %d frames; many entries will repeat",
                self.codebook_size, frames.shape[0],
            )
        self.codebooks, self.counts = residual_kmeans(
            frames, self.n_q, self.sizes, self.cfg.kmeans_iters, self.cfg.seed
        )
        self._fingerprint = None

    # ------------------------------------------------------------------ coding

    def encode(self, wav: np.ndarray) -> np.ndarray:
        self._require_fitted()
        codes = residual_quantize(self.features(wav), self.codebooks, self.sizes)  # [n_q, T]
        return codes.numpy().astype(np.int64, copy=False)

    def quantized_log_mel(self, codes: np.ndarray) -> torch.Tensor:
        """Codes ``[k, T]`` -> reconstructed log-mel ``[T, n_mels]`` (before Griffin-Lim)."""
        if self.codebooks is None:
            raise RuntimeError("mel_rvq: no codebooks (fit or load_state first)")
        return residual_dequantize(self._check_codes(codes), self.codebooks)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        return self.decode_latent(self.quantized_log_mel(codes))

    def stage_embeddings(self, stage: int) -> torch.Tensor:
        if self.codebooks is None:
            raise RuntimeError("mel_rvq: no codebooks (fit or load_state first)")
        return self.codebooks[stage, : self.sizes[stage]]  # [K_s, n_mels]

    def decode_latent(self, latent: torch.Tensor) -> np.ndarray:
        """Log-mel ``[T, n_mels]`` -> Griffin-Lim waveform."""
        mag = self.mel.magnitude(latent, nnls_iters=NNLS_ITERS)  # [n_freq, T]
        wav = self.mel.griffin_lim(mag, self.cfg.griffin_lim_iters, self.cfg.seed)  # [T*hop]
        return wav.numpy().astype(np.float32, copy=False)

    # ------------------------------------------------------------------ identity/state

    def settings(self) -> dict[str, Any]:
        """Everything that changes the codes for given codebooks (and the codebook fit)."""
        c = self.cfg
        return {
            "algorithm": ALGORITHM_VERSION,
            "name": self.name,
            "sample_rate": c.sample_rate,
            "n_q": c.n_q,
            "codebook_size": self.codebook_size,
            # only when sizes differ per stage, so uniform codecs keep their fingerprints
            **({"codebook_sizes": self.sizes} if c.codebook_sizes else {}),
            "n_mels": c.n_mels,
            "n_fft": c.n_fft,
            "hop_length": c.hop_length,
        }

    def _fit_settings(self) -> dict[str, Any]:
        # only influence the codebooks, which are hashed themselves; recorded for provenance
        c = self.cfg
        return {"kmeans_iters": c.kmeans_iters, "kmeans_max_frames": c.kmeans_max_frames, "seed": c.seed}

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            state = "unfitted" if self.codebooks is None else hash_tensors({"codebooks": self.codebooks})
            self._fingerprint = hash_settings(self.settings(), state)
        return self._fingerprint

    def save_state(self, directory: Path) -> None:
        if self.codebooks is None:
            raise RuntimeError("mel_rvq: nothing to save, the codec is not fitted")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {"codebooks": self.codebooks.contiguous()}
        if self.counts is not None:
            tensors["counts"] = self.counts.contiguous()
        save_file(tensors, str(directory / CODEBOOKS_FILE))
        write_state_json(
            directory,
            {
                "settings": self.settings(),
                "fit": self._fit_settings(),
                "tensors": CODEBOOKS_FILE,
                "fingerprint": self.fingerprint(),
            },
        )

    def load_state(self, directory: Path) -> None:
        directory = Path(directory)
        payload = read_state_json(directory)
        check_settings(payload["settings"], self.settings(), directory)
        tensors = load_file(str(directory / payload["tensors"]))
        books = tensors["codebooks"].float()
        if tuple(books.shape) != (self.n_q, self.codebook_size, self.cfg.n_mels):
            raise ValueError(f"{directory}: codebooks have shape {tuple(books.shape)}")
        self.codebooks, self.counts = books, tensors.get("counts")
        self._fingerprint = None
        if payload.get("fingerprint") not in (None, self.fingerprint()):
            raise ValueError(f"{directory}: codebooks do not match the recorded fingerprint")

    def describe(self) -> dict[str, ParamValue]:
        c = self.cfg
        return {
            **super().describe(),
            **({"codec.codebook_sizes": ",".join(map(str, self.sizes))} if c.codebook_sizes else {}),
            "codec.n_mels": c.n_mels,
            "codec.n_fft": c.n_fft,
            "codec.mel_scale": "slaney",
            "codec.kmeans_iters": c.kmeans_iters,
            "codec.kmeans_max_frames": c.kmeans_max_frames,
            "codec.griffin_lim_iters": c.griffin_lim_iters,
            "codec.seed": c.seed,
        }
