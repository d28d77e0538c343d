"""The `Codec` interface shared by every audio tokenizer backend.

Frame rule (all backends): a waveform of ``T`` samples becomes ``ceil(T / hop)`` frames, where
``hop = sample_rate / frame_rate`` samples. Frame ``i`` covers samples ``[i*hop, (i+1)*hop)``;
the input is zero-padded at the end to a whole number of frames. ``decode`` of ``T_frames``
frames returns exactly ``T_frames * hop`` samples, so ``encode(decode(codes))`` keeps ``T_frames``.
"""

from __future__ import annotations

import abc
import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

STATE_JSON = "codec.json"
STATE_FORMAT = 1

ParamValue = str | int | float | bool


def num_frames(num_samples: int, hop: int) -> int:
    """Frames for ``num_samples`` samples: ``ceil(num_samples / hop)``."""
    return -(-int(num_samples) // int(hop))


def smooth_frames(latent: torch.Tensor, kernel: Sequence[float]) -> torch.Tensor:
    """A latent ``[T, D]`` convolved along time with `kernel` (odd length, normalised to sum 1, edges
    replicated) -> ``[T, D]``. Frame-wise quantisation error is white in time while speech spectra
    change smoothly at codec frame rates: a short low-pass removes much of the former and little of
    the latter. An empty or one-tap kernel returns the latent unchanged."""
    if len(kernel) <= 1:
        return latent
    if len(kernel) % 2 == 0 or min(kernel) < 0 or sum(kernel) <= 0:
        raise ValueError(f"smoothing kernel {list(kernel)}: odd length, non-negative taps, positive sum")
    k = torch.tensor(kernel, dtype=latent.dtype) / float(sum(kernel))  # [W]
    r = len(kernel) // 2
    padded = torch.cat([latent[:1].expand(r, -1), latent, latent[-1:].expand(r, -1)])  # [T+2r, D]
    return sum(k[j] * padded[j: j + latent.shape[0]] for j in range(len(kernel)))  # [T, D]


def hash_tensors(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over name, dtype, shape and bytes of each tensor, in sorted key order."""
    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        # view as bytes so every dtype (incl. bool/bfloat16) hashes without conversion
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def hash_settings(settings: Mapping[str, Any], state_hash: str) -> str:
    """sha256 over canonical JSON of the settings plus the state hash."""
    blob = json.dumps({"settings": dict(settings), "state": state_hash}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def write_state_json(directory: Path, payload: dict[str, Any]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"format": STATE_FORMAT, **payload}, indent=2, sort_keys=True)
    (directory / STATE_JSON).write_text(text + "\n")


def read_state_json(directory: Path) -> dict[str, Any]:
    path = directory / STATE_JSON
    if not path.is_file():
        raise FileNotFoundError(f"no codec state at {path}")
    payload = json.loads(path.read_text())
    if payload.get("format") != STATE_FORMAT:
        raise ValueError(f"{path}: unsupported codec state format {payload.get('format')!r}")
    return payload


def check_settings(saved: Mapping[str, Any], current: Mapping[str, Any], where: Path) -> None:
    """Raise if the saved settings disagree with this instance's (a different config)."""
    diff = {k: (saved.get(k), v) for k, v in current.items() if saved.get(k) != v}
    if diff:
        detail = ", ".join(f"{k}: saved={a!r} config={b!r}" for k, (a, b) in sorted(diff.items()))
        raise ValueError(f"codec state in {where} was made with other settings ({detail})")


class Codec(abc.ABC):
    """Waveform <-> discrete codes ``[n_q, T_frames]``; see the module docstring for framing."""

    name: str
    sample_rate: int
    n_q: int
    codebook_size: int

    # ------------------------------------------------------------------ properties

    @property
    def stage_sizes(self) -> list[int]:
        """Entries per stage; `codebook_size` is the largest (stage 0's)."""
        return [self.codebook_size] * self.n_q

    @property
    @abc.abstractmethod
    def hop_length(self) -> int:
        """Samples per frame."""

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop_length

    @property
    @abc.abstractmethod
    def pretrained(self) -> bool:
        """True when the codec has its real codebooks/weights (not a placeholder)."""

    @property
    @abc.abstractmethod
    def needs_fit(self) -> bool:
        """True while `fit` must run before `encode` gives meaningful codes."""

    # ------------------------------------------------------------------ coding

    @abc.abstractmethod
    def encode(self, wav: np.ndarray) -> np.ndarray:
        """float32 mono ``[T_samples]`` at `sample_rate` -> int64 ``[n_q, ceil(T/hop)]``.

        Raises RuntimeError while `needs_fit`.
        """

    def encode_batch(self, wavs: list[np.ndarray]) -> list[np.ndarray]:
        return [self.encode(w) for w in wavs]

    @abc.abstractmethod
    def decode(self, codes: np.ndarray) -> np.ndarray:
        """int codes ``[k, T]`` (``1 <= k <= n_q``, first k stages) -> float32 ``[T*hop]``."""

    @abc.abstractmethod
    def stage_embeddings(self, stage: int) -> torch.Tensor:
        """The vectors stage `stage`'s entries stand for, ``[stage_sizes[stage], D]``: what `decode`
        sums over the stages before it turns the sum into audio."""

    @abc.abstractmethod
    def decode_latent(self, latent: torch.Tensor) -> np.ndarray:
        """A sum of stage embeddings ``[T, D]`` -> float32 ``[T*hop]`` (the second half of `decode`)."""

    @abc.abstractmethod
    def latent(self, wav: np.ndarray) -> torch.Tensor:
        """float32 mono ``[T_samples]`` -> the quantizer's input ``[ceil(T/hop), D]``: what the sum of
        the stage embeddings approximates."""

    def resynthesize_unquantized(self, wav: np.ndarray, smoothing: Sequence[float] = ()) -> np.ndarray:
        """The codec without its quantizer: `decode_latent` of the waveform's own latent (smoothed along
        time with `smoothing`, as `decode_expected` does). Its distance from the recording is the
        vocoder's (decoder's) share of what the codec loses; the rest is the quantizer's."""
        return self.decode_latent(smooth_frames(self.latent(wav), smoothing))

    def decode_expected(self, codes: np.ndarray, probs: Mapping[int, torch.Tensor],
                        smoothing: Sequence[float] = ()) -> np.ndarray:
        """Decode codes ``[k, T]`` where each stage s in `probs` (``[T, stage_sizes[s]]``, rows summing
        to 1) contributes the probability-weighted mean of its embeddings instead of the entry in
        `codes`: the minimum-mean-square-error estimate of a residual the predictor is unsure of.
        An unsure argmax adds a wrong residual vector (error ~2x the residual's own); the mean
        shrinks towards what the predictor can tell. One-hot probs decode exactly like `decode`.
        smoothing: a kernel the summed latent is convolved with along time (`smooth_frames`)."""
        c = self._check_codes(codes)  # [k, T]
        bad = [s for s in probs if not 0 <= s < c.shape[0]]
        if bad:
            raise ValueError(f"{self.name}: probabilities for stages {bad} outside the {c.shape[0]} decoded")
        latent = torch.zeros(())
        for stage in range(c.shape[0]):
            table = self.stage_embeddings(stage)  # [K_s, D]
            if stage in probs:
                p = probs[stage].to(table.dtype)  # [T, K_s]
                if p.shape != (c.shape[1], table.shape[0]):
                    raise ValueError(f"{self.name}: stage {stage} probabilities {tuple(p.shape)}, expected "
                                     f"{(c.shape[1], table.shape[0])}")
                latent = latent + p @ table  # [T, D]
            else:
                latent = latent + table[c[stage]]  # [T, D]
        return self.decode_latent(smooth_frames(latent, smoothing))

    def decode_as(self, codes: np.ndarray, probs: Mapping[int, torch.Tensor] | None = None,
                  smoothing: Sequence[float] = ()) -> np.ndarray:
        """`decode` with eval.decode's choices: stages in `probs` as expected embeddings, the latent
        smoothed along time (`decode_expected`); with neither, plain `decode`."""
        if probs or len(smoothing) > 1:
            return self.decode_expected(codes, probs or {}, smoothing)
        return self.decode(codes)

    @abc.abstractmethod
    def fit(self, wavs: Iterable[np.ndarray]) -> None:
        """Fit data-dependent state on training audio; no-op when nothing needs fitting."""

    # ------------------------------------------------------------------ identity/state

    @abc.abstractmethod
    def fingerprint(self) -> str:
        """Hex sha256 over code-changing settings and a hash of weights/codebooks."""

    @abc.abstractmethod
    def save_state(self, directory: Path) -> None: ...

    @abc.abstractmethod
    def load_state(self, directory: Path) -> None: ...

    def describe(self) -> dict[str, ParamValue]:
        """Flat ``codec.*`` dict for experiment params/tags."""
        return {
            "codec.name": self.name,
            "codec.sample_rate": int(self.sample_rate),
            "codec.frame_rate": float(self.frame_rate),
            "codec.hop_length": int(self.hop_length),
            "codec.n_q": int(self.n_q),
            "codec.codebook_size": int(self.codebook_size),
            "codec.pretrained": bool(self.pretrained),
            "codec.needs_fit": bool(self.needs_fit),
            "codec.fingerprint": self.fingerprint(),
        }

    # ------------------------------------------------------------------ helpers

    def num_frames(self, num_samples: int) -> int:
        return num_frames(num_samples, self.hop_length)

    def duration_to_frames(self, seconds: float) -> int:
        """``ceil(seconds * frame_rate)``, equal to `num_frames` of that many samples."""
        return math.ceil(round(seconds * self.sample_rate) / self.hop_length)

    def _check_wav(self, wav: np.ndarray) -> torch.Tensor:
        """Validate a mono waveform and return it as a float32 tensor ``[T]``."""
        arr = np.asarray(wav)
        if arr.ndim == 2 and 1 in arr.shape:
            arr = arr.reshape(-1)  # tolerate [1, T] / [T, 1]
        if arr.ndim != 1 or arr.size == 0:
            raise ValueError(f"{self.name}: expected a non-empty mono waveform [T], got {arr.shape}")
        if not np.issubdtype(arr.dtype, np.floating):
            raise TypeError(f"{self.name}: expected float audio in [-1, 1], got dtype {arr.dtype}")
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        if not np.isfinite(arr).all():
            raise ValueError(f"{self.name}: waveform contains NaN/inf")
        return torch.from_numpy(arr)

    def _check_codes(self, codes: np.ndarray) -> torch.Tensor:
        """Validate codes ``[k, T]`` and return them as an int64 tensor."""
        arr = np.asarray(codes)
        if arr.ndim != 2 or not 1 <= arr.shape[0] <= self.n_q or arr.shape[1] == 0:
            raise ValueError(f"{self.name}: expected codes [k<= {self.n_q}, T>0], got {arr.shape}")
        if not np.issubdtype(arr.dtype, np.integer):
            raise TypeError(f"{self.name}: codes must be integers, got {arr.dtype}")
        if arr.min() < 0 or arr.max() >= self.codebook_size:
            raise ValueError(f"{self.name}: codes outside [0, {self.codebook_size})")
        for stage, (row, size) in enumerate(zip(arr, self.stage_sizes, strict=False)):
            if row.max() >= size:
                raise ValueError(f"{self.name}: stage {stage} codes outside [0, {size})")
        return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.int64))

    def _require_fitted(self) -> None:
        if self.needs_fit:
            raise RuntimeError(
                f"codec {self.name!r} needs fit(wavs) on training audio before encode "
                "(or load_state from a fitted codec)"
            )
