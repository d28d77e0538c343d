"""Text -> speech with an AR + NAR pair and the codec they were trained on.

A checkpoint directory is self-contained (weights, meta.json with the contract and the model /
codec / text configs, the codec state under codec/), so a Synthesizer needs nothing else. The pair
is checked against each other and against the codec before any weight is loaded.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from harmonica.codec import Codec, load_codec
from harmonica.config.schema import ARModelConfig, CodecConfig, DecodeConfig, NARModelConfig, TextConfig
from harmonica.data.audio import load_audio
from harmonica.data.text import TextFrontend, build_frontend
from harmonica.inference.decode import decode_ar, decode_nar, limit_peak
from harmonica.models import build_model
from harmonica.models.contract import require_compatible
from harmonica.tracking import names

log = logging.getLogger(__name__)


class CheckpointError(FileNotFoundError):
    """A reference that does not lead to a usable checkpoint; the message says what was expected."""


def read_checkpoint_meta(path: Path) -> dict[str, Any]:
    meta_file = Path(path) / names.CKPT_META
    if not meta_file.is_file():
        raise CheckpointError(
            f"{path} is not a harmonica checkpoint (no meta.json); pass a checkpoint directory such as "
            "<workdir>/checkpoints/<project>/<ar|nar>/<run id>/ckpt/best, an MLflow run id, or "
            "runs:/<run id>/checkpoints/best"
        )
    return json.loads(meta_file.read_text(encoding="utf-8"))


def pair_prompt_frames(ar_meta: dict[str, Any], nar_meta: dict[str, Any]) -> int:
    """Frames of acoustic prompt an AR/NAR pair reads: one prompt serves both halves, as long as the
    longer of the two takes (each model cuts its own; an AR without a prompt takes none)."""
    ar_cfg = ar_meta.get("model_config") or {}
    ar_frames = int(ar_cfg.get("prompt_frames", 0)) if ar_cfg.get("speaker_condition") == "prompt" else 0
    return max(int(nar_meta["model_config"].get("prompt_frames", 150)), ar_frames)


def pair_speaker_condition(ar_meta: dict[str, Any], nar_meta: dict[str, Any]) -> str:
    """What a caller must give an AR/NAR pair for the voice: "prompt" when either half reads an
    acoustic prompt, else the NAR's condition ("embedding" or "none")."""
    if (ar_meta.get("model_config") or {}).get("speaker_condition") == "prompt":
        return "prompt"
    return str((nar_meta.get("model_config") or {}).get("speaker_condition", "none"))


def load_model(path: Path, weights: str = "ema", device: torch.device | str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Build the model described by a checkpoint's meta.json and load its raw or EMA weights."""
    meta = read_checkpoint_meta(path)
    kind = meta["kind"]
    cfg_cls = ARModelConfig if kind == "ar" else NARModelConfig
    model_cfg = meta["model_config"] if kind == "ar" else {"count_prior": False, **meta["model_config"]}  # older NARs had none
    model = build_model(kind, cfg_cls.model_validate(model_cfg), meta["contract"])
    file = Path(path) / (names.CKPT_EMA if weights == "ema" else names.CKPT_MODEL)
    if not file.is_file():
        raise CheckpointError(f"{file} is missing (weights={weights}); use --weights raw or another checkpoint")
    # the EMA shadow also holds non-persistent buffers, hence not strict; missing weights are fatal
    result = model.load_state_dict(load_file(str(file)), strict=False)
    if result.missing_keys:
        raise CheckpointError(f"{file} lacks {result.missing_keys[:5]}: not a checkpoint of this model")
    return model.to(device).eval(), meta


@dataclass
class Timings:
    """Seconds spent inside model calls, so the pipeline around them can be measured against it."""

    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, name: str, started: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started

    @property
    def total(self) -> float:
        return sum(self.seconds.values())


class Synthesizer:
    """Loads an AR/NAR pair once per process; `synthesize` many texts."""

    def __init__(self, ar_path: Path, nar_path: Path, *, weights: str = "ema",
                 decode: DecodeConfig | None = None, device: str = "cpu") -> None:
        self.ar_path, self.nar_path = Path(ar_path), Path(nar_path)
        ar_meta, nar_meta = read_checkpoint_meta(self.ar_path), read_checkpoint_meta(self.nar_path)
        codec_dir = self.nar_path / "codec"
        if not codec_dir.is_dir():
            raise CheckpointError(f"{self.nar_path} has no codec/ directory: re-save it with this harmonica version")
        self.codec: Codec = load_codec(CodecConfig.model_validate(nar_meta["codec_config"]), codec_dir)
        require_compatible(ar_meta["contract"], nar_meta["contract"], self.codec.fingerprint())
        self.ar, self.ar_meta = load_model(self.ar_path, weights, device)
        self.nar, self.nar_meta = load_model(self.nar_path, weights, device)
        self.frontend: TextFrontend = build_frontend(TextConfig.model_validate(nar_meta["text_config"]))
        self.decode = decode or DecodeConfig()
        dropout = (ar_meta.get("result_config") or {}).get("training.ar.text_dropout", 0.0)
        if self.decode.text_guidance != 1.0 and not dropout:
            log.warning("eval.decode.text_guidance=%s but the AR %s trained without text dropout "
                        "(training.ar.text_dropout=0): its empty-text prediction, the guidance's unconditional "
                        "model, was never trained; decode with text_guidance=1 or train with text_dropout > 0",
                        self.decode.text_guidance, self.ar_path)
        self.frame_rate = float(nar_meta["contract"]["frame_rate"])
        self.prompt_frames = pair_prompt_frames(ar_meta, nar_meta)
        self.timings = Timings()

    @property
    def sample_rate(self) -> int:
        return self.codec.sample_rate

    @property
    def speaker_condition(self) -> str:
        """What a caller must give for the voice (`pair_speaker_condition`)."""
        return pair_speaker_condition(self.ar_meta, self.nar_meta)

    def prompt_from_wav(self, path: str | Path) -> torch.Tensor:
        """An acoustic prompt [n_q, P] from a reference recording of the target voice."""
        wav = load_audio(path, self.codec.sample_rate)
        t = time.perf_counter()
        codes = torch.from_numpy(self.codec.encode(wav)).long()  # [n_q, T]
        self.timings.add("codec_encode", t)
        return codes[:, : self.prompt_frames]

    def synthesize(self, text: str, *, prompt: torch.Tensor | None = None, speaker: int | None = None,
                   seed: int = 0) -> tuple[np.ndarray, dict[str, Any]]:
        """-> (waveform float32 at sample_rate, facts: frames, length-bound hit, loop cut, gain_db
        applied by the peak ceiling, codes)."""
        gen = torch.Generator().manual_seed(seed)
        ids = torch.tensor(self.frontend.encode(text), dtype=torch.long)  # [L]
        t = time.perf_counter()
        coarse: dict[int, torch.Tensor] | None = {} if self.decode.ar_coarse == "expected" else None
        cb0, info = decode_ar(self.ar, ids, self.decode, self.frame_rate, generator=gen, prompt=prompt,
                              probs_out=coarse)  # [T]
        self.timings.add("ar", t)
        if cb0.numel() == 0:
            return np.zeros(0, dtype=np.float32), {**info, "gain_db": 0.0, "codes": None}
        wav, codes, gain_db = self._complete(ids, cb0, prompt, speaker, gen, coarse)
        return wav, {**info, "gain_db": gain_db, "codes": codes}

    def complete(self, text: str, cb0: torch.Tensor, *, prompt: torch.Tensor | None = None,
                 speaker: int | None = None, seed: int = 0, coarse: dict[int, torch.Tensor] | None = None) -> np.ndarray:
        """The NAR and the codec on a given first codebook cb0 [T] (e.g. the ground truth's, to
        score the NAR with a perfect AR) -> waveform float32 at sample_rate. coarse: {0: a distribution
        over codebook 0 [T, V]} to decode codebook 0 as its expectation (the NAR still reads cb0)."""
        ids = torch.tensor(self.frontend.encode(text), dtype=torch.long)  # [L]
        wav, _, _ = self._complete(ids, cb0.long(), prompt, speaker, torch.Generator().manual_seed(seed), coarse)
        return wav

    @torch.no_grad()
    def teacher_forced_coarse(self, text: str, cb0: torch.Tensor, *, prompt: torch.Tensor | None = None,
                              probs_out: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
        """The AR's own argmax for each frame of a given first codebook cb0 [T], each predicted from the
        true frames before it (teacher forcing, STOP left out) -> [T]: what the AR says about every frame
        when it never drifts. Against free-running decoding it splits the AR's share of the WER into
        per-frame prediction and the drift of feeding back its own samples. probs_out receives
        probs_out[0]: its distribution over codebook 0 per frame [T, V] at decode.ar_coarse_temperature,
        so the frames can be decoded as free-running ones are (decode.ar_coarse=expected)."""
        dev = next(self.ar.parameters()).device
        ids = torch.tensor(self.frontend.encode(text), dtype=torch.long, device=dev)[None]  # [1, L]
        cb0 = cb0.long().to(dev)[None]  # [1, T]
        kwargs = {}
        if self.ar.cfg.speaker_condition == "prompt":
            if prompt is None:
                raise ValueError("this AR is conditioned on an acoustic prompt: pass the speaker's prompt")
            p = prompt[0] if prompt.dim() == 2 else prompt  # [P] the prompt's first codebook
            kwargs = {"prompt": p[None].to(dev), "prompt_lens": torch.tensor([p.numel()], device=dev)}
        was_training = self.ar.training
        self.ar.eval()
        try:
            logits, _, _ = self.ar(ids, torch.tensor([ids.size(1)], device=dev), cb0,
                                   torch.tensor([cb0.size(1)], device=dev), **kwargs)  # [1, T+1, V+1]: t predicts frame t
        finally:
            self.ar.train(was_training)
        frames = logits[0, : cb0.size(1), : self.ar.stop_id].float()  # [T, V]
        if probs_out is not None:
            probs_out[0] = (frames / self.decode.ar_coarse_temperature).softmax(-1).cpu()  # [T, V]
        return frames.argmax(-1).cpu()  # [T]

    def decode_codes(self, codes: np.ndarray, timing: str = "codec_decode",
                     probs: dict[int, torch.Tensor] | None = None) -> tuple[np.ndarray, float]:
        """The one way out of the codec: codes [k, T] -> (waveform float32 with its peak at most
        decode.peak_ceiling_db, the gain applied in dB). Model output and baselines alike. probs:
        stage -> [T, K_s] predicted distributions decoded as expected embeddings (Codec.decode_expected);
        decode.latent_smoothing low-passes the summed latent along time (`smooth_frames`)."""
        t = time.perf_counter()
        wav = self.codec.decode_as(codes, probs, self.decode.latent_smoothing)
        self.timings.add(timing, t)
        return limit_peak(wav, self.decode.peak_ceiling_db)

    def _complete(self, ids: torch.Tensor, cb0: torch.Tensor, prompt: torch.Tensor | None, speaker: int | None,
                  gen: torch.Generator, coarse: dict[int, torch.Tensor] | None = None,
                  ) -> tuple[np.ndarray, torch.Tensor, float]:
        """coarse: {0: the AR's distribution [T, V]} to decode codebook 0 as its expectation."""
        t = time.perf_counter()
        probs: dict[int, torch.Tensor] | None = {} if self.decode.nar_residual == "expected" else None
        codes = decode_nar(self.nar, ids, cb0, self.decode, prompt=prompt, speaker=speaker, generator=gen,
                           probs_out=probs)  # [n_q, T]
        self.timings.add("nar", t)
        wav, gain_db = self.decode_codes(codes.numpy(), probs={**(coarse or {}), **(probs or {})} or None)
        return wav, codes, gain_db
