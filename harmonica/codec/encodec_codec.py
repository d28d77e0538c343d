"""EnCodec 24 kHz as a `Codec` (75 Hz frames, 1024-entry codebooks, n_q from the bandwidth).

Weights come from `harmonica.codec.encodec_loading` (file, published, or random init). A randomly
initialised EnCodec has all-zero quantizer codebooks (its k-means init runs on the first training
forward), so every code would be 0: `fit` then initialises the first ``n_q`` codebooks with
residual k-means on encoder embeddings of the given audio.

Why not encodec's own init (``quantizer.train(); quantizer(emb, ...)``)? Its `kmeans` builds an
``[N, 1024, 128]`` difference tensor (~4 GB for 100 s of audio), runs 50 iterations by default
(``layer._codebook.kmeans_iters`` is the knob), draws from the global RNG, and a training forward
also applies an EMA update and dead-code replacement. We instead write the same buffers
(``embed``, ``embed_avg``, ``cluster_size``, ``inited``) from the seeded, matmul-based k-means in
`harmonica.codec.kmeans`, with ``codec.kmeans_iters`` Lloyd steps on at most
``codec.kmeans_max_frames`` sampled frames.
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
from harmonica.codec.encodec_loading import load_encodec_model
from harmonica.codec.kmeans import FrameReservoir, residual_kmeans
from harmonica.config.schema import ENCODEC_CODEBOOK_SIZE, ENCODEC_SAMPLE_RATE, CodecConfig

log = logging.getLogger(__name__)

ALGORITHM_VERSION = "encodec_24khz/1"
WEIGHTS_FILE = "encodec_state.safetensors"
HOP = 320  # product of the SEANet encoder ratios (8 * 5 * 4 * 2)


class EncodecCodec(Codec):
    """Wrapper around ``encodec.EncodecModel.encodec_model_24khz``."""

    name = "encodec"

    def __init__(self, cfg: CodecConfig) -> None:
        if cfg.sample_rate != ENCODEC_SAMPLE_RATE:
            raise ValueError(f"encodec 24 kHz needs sample_rate={ENCODEC_SAMPLE_RATE}")
        self.cfg = cfg
        self.sample_rate = ENCODEC_SAMPLE_RATE
        self.n_q = cfg.effective_n_q
        self.codebook_size = ENCODEC_CODEBOOK_SIZE
        loaded = load_encodec_model(cfg)
        self.model = loaded.model
        self.source = loaded.source
        self._pretrained = loaded.pretrained
        self._fitted_here = False  # quantizer changed by fit(): weights no longer match the source
        self.model.set_target_bandwidth(cfg.bandwidth)
        if self.model.quantizer.get_num_quantizers_for_bandwidth(75, cfg.bandwidth) != self.n_q:
            raise AssertionError("encodec bandwidth -> n_q disagrees with CodecConfig")  # schema drift
        self._fingerprint: str | None = None

    # ------------------------------------------------------------------ properties

    @property
    def hop_length(self) -> int:
        return HOP

    @property
    def pretrained(self) -> bool:
        return self._pretrained

    @property
    def needs_fit(self) -> bool:
        return not all(bool(cb.inited.item()) for cb in self._codebooks())

    def _codebooks(self) -> list[torch.nn.Module]:
        return [layer._codebook for layer in self.model.quantizer.vq.layers[: self.n_q]]

    # ------------------------------------------------------------------ fitting

    @torch.inference_mode()
    def embeddings(self, wav: np.ndarray) -> torch.Tensor:
        """Encoder output ``[ceil(T/hop), 128]`` (the quantizer's input) for one waveform."""
        x = self._check_wav(wav)[None, None]  # [1, 1, T]
        return self.model.encoder(x)[0].t().contiguous()  # [T_frames, 128]

    def latent(self, wav: np.ndarray) -> torch.Tensor:
        return self.embeddings(wav)  # [T, 128]

    def fit(self, wavs: Iterable[np.ndarray]) -> None:
        """Initialise the quantizer codebooks by residual k-means; no-op for real weights."""
        if self._pretrained and not self.needs_fit:
            log.debug("encodec: %s weights already have codebooks; fit() is a no-op", self.source)
            return
        pool = FrameReservoir(self.cfg.kmeans_max_frames, self.cfg.seed)
        for wav in wavs:
            pool.add(self.embeddings(wav).numpy())
        frames = pool.sample()  # [N, 128]
        if frames.shape[0] < self.codebook_size:
            log.warning(
                "encodec: k-means of %d centroids on only %d frames; many entries will repeat",
                self.codebook_size, frames.shape[0],
            )
        books, counts = residual_kmeans(
            frames, self.n_q, self.codebook_size, self.cfg.kmeans_iters, self.cfg.seed
        )  # [n_q, 1024, 128], [n_q, 1024]
        with torch.no_grad():
            for cb, book, count in zip(self._codebooks(), books, counts):
                cb.embed.copy_(book)
                cb.embed_avg.copy_(book)
                cb.cluster_size.copy_(count)
                cb.inited.fill_(1.0)
        self.model.eval()
        self._fitted_here = True
        self._fingerprint = None

    # ------------------------------------------------------------------ coding

    @torch.inference_mode()
    def encode(self, wav: np.ndarray) -> np.ndarray:
        self._require_fitted()
        x = self._check_wav(wav)
        frames = self.model.encode(x[None, None])  # 24 kHz model: segment=None -> one frame
        codes = frames[0][0][0]  # [n_q, ceil(T/hop)]
        if codes.shape != (self.n_q, self.num_frames(x.shape[0])):
            raise AssertionError(f"encodec returned codes {tuple(codes.shape)}")
        return codes.numpy().astype(np.int64)

    @torch.inference_mode()
    def decode(self, codes: np.ndarray) -> np.ndarray:
        c = self._check_codes(codes)  # [k, T]
        wav = self.model.decode([(c[None], None)])  # [1, 1, >= T*hop]
        return wav[0, 0, : c.shape[1] * HOP].numpy().astype(np.float32)

    @torch.inference_mode()
    def stage_embeddings(self, stage: int) -> torch.Tensor:
        layer = self.model.quantizer.vq.layers[stage]
        return layer.project_out(layer.codebook).float()  # [1024, D]

    @torch.inference_mode()
    def decode_latent(self, latent: torch.Tensor) -> np.ndarray:
        """Quantizer output ``[T, D]`` -> the decoder's waveform (what `decode` runs after the lookup)."""
        wav = self.model.decoder(latent.float().T[None])  # [1, 1, >= T*hop]
        return wav[0, 0, : latent.shape[0] * HOP].numpy().astype(np.float32)

    # ------------------------------------------------------------------ identity/state

    def settings(self) -> dict[str, Any]:
        return {
            "algorithm": ALGORITHM_VERSION,
            "name": self.name,
            "sample_rate": self.sample_rate,
            "bandwidth": float(self.cfg.bandwidth),
            "n_q": self.n_q,
            "codebook_size": self.codebook_size,
        }

    def weights_hash(self) -> str:
        return hash_tensors(self.model.state_dict())

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = hash_settings(self.settings(), self.weights_hash())
        return self._fingerprint

    def save_state(self, directory: Path) -> None:
        """JSON always; the full state dict too unless the weights are the unmodified source."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        payload: dict[str, Any] = {
            "settings": self.settings(),
            "source": self.source,
            "pretrained": self._pretrained,
            "weights_sha256": self.weights_hash(),
            "fingerprint": self.fingerprint(),
        }
        if not self._pretrained or self._fitted_here:
            state = {k: v.detach().clone().contiguous() for k, v in self.model.state_dict().items()}
            save_file(state, str(directory / WEIGHTS_FILE))
            payload["tensors"] = WEIGHTS_FILE
        write_state_json(directory, payload)

    def load_state(self, directory: Path) -> None:
        directory = Path(directory)
        payload = read_state_json(directory)
        check_settings(payload["settings"], self.settings(), directory)
        if "tensors" in payload:
            self.model.load_state_dict(load_file(str(directory / payload["tensors"])), strict=True)
            self.model.eval()
            self.source, self._pretrained = payload["source"], bool(payload["pretrained"])
            self._fitted_here = True  # weights now come from this state, not from the source
        elif self.weights_hash() != payload["weights_sha256"]:
            raise RuntimeError(
                f"codec state in {directory} was made with EnCodec weights from "
                f"{payload['source']!r}, but this codec loaded {self.source!r} weights that differ; "
                "make the same weights available (torch hub cache or codec.weights_path)"
            )
        self._fingerprint = None
        if self.fingerprint() != payload["fingerprint"]:
            raise ValueError(f"{directory}: restored EnCodec state does not match its fingerprint")

    def describe(self) -> dict[str, ParamValue]:
        return {
            **super().describe(),
            "codec.bandwidth": float(self.cfg.bandwidth),
            "codec.weights_source": self.source,
            "codec.seed": self.cfg.seed,
        }
