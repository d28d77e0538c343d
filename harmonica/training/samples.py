"""Audio samples during training: fixed prompts -> codes -> codec -> wav file + spectrogram image.

The wav files go to a directory (the trainer logs it as an artifact folder); the spectrograms come back
as images, utterance id -> RGBA array, which the trainer logs with their step (`Run.log_image`).

The AR alone predicts only the first codebook, so its samples decode that codebook alone (the
coarse layer of the residual codec: intelligible envelope, little detail). NAR samples take the
ground-truth first codebook of the same prompts and fill the rest, so AR and NAR progress can be
heard separately before the two are combined by `harmonica synthesize`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from harmonica.codec import Codec
from harmonica.config.schema import DecodeConfig
from harmonica.data.audio import write_audio
from harmonica.training.data import Example, PromptPicker
from harmonica.training.figures import spectrogram_image


@dataclass
class SampleSpec:
    example: Example
    prompt: torch.Tensor | None  # [n_q, P]
    speaker: int


class SampleRenderer:
    """Renders the same few prompts at every sample step, so runs and steps compare by ear."""

    def __init__(
        self,
        kind: str,
        codec: Codec,
        examples: list[Example],
        speaker_index: dict[str, int],
        decode: DecodeConfig,
        frame_rate: float,
        max_audio_frames: int,
        prompt_frames: int,
        n_samples: int = 3,
        seed: int = 0,
    ) -> None:
        self.kind = kind
        self.codec = codec
        self.decode_cfg = decode
        self.frame_rate = frame_rate
        self.max_audio_frames = max_audio_frames
        self.seed = seed
        chosen = sorted(examples, key=lambda e: e.id)[:n_samples]
        picker = PromptPicker(examples, prompt_frames, seed) if examples else None
        gen = torch.Generator().manual_seed(seed)
        self.specs = [
            SampleSpec(e, picker.pick(e, gen) if picker else None, speaker_index.get(e.speaker, 0)) for e in chosen
        ]

    def _write(self, wav: np.ndarray, directory: Path, name: str, title: str) -> np.ndarray:
        """Writes `<name>.wav`; returns its spectrogram image."""
        directory.mkdir(parents=True, exist_ok=True)
        write_audio(directory / f"{name}.wav", wav, self.codec.sample_rate)
        return spectrogram_image(wav, self.codec.sample_rate, title)

    def render_reference(self, directory: Path) -> dict[str, np.ndarray]:
        """Codec resynthesis of the ground truth, the ceiling the model's samples approach: wavs into
        `directory`; returns utterance id -> spectrogram image."""
        return {spec.example.id: self._write(self.reference(spec), directory, spec.example.id,
                                             f"reference {spec.example.id}") for spec in self.specs}

    def reference(self, spec: SampleSpec) -> np.ndarray:
        """The ground truth through the same decode as the samples (AR: codebook 0 alone)."""
        codes = spec.example.codes if self.kind == "nar" else spec.example.codes[:1]  # [k, T]
        return self.codec.decode_as(codes.numpy(), None, self.decode_cfg.latent_smoothing)

    @torch.no_grad()
    def render(self, model: nn.Module, step: int, directory: Path, device: torch.device) -> dict[str, np.ndarray]:
        """Wavs into `directory`; returns utterance id -> spectrogram image."""
        gen = torch.Generator(device="cpu").manual_seed(self.seed + step)  # never the training RNG
        images = {}
        for spec in self.specs:
            wav = self.synthesize(model, spec, device, gen)
            if wav is not None:  # None: stopped at once; nothing to play (visible as a missing file)
                images[spec.example.id] = self._write(wav, directory, spec.example.id,
                                                      f"{self.kind} step {step}: {spec.example.id}")
        return images

    @torch.no_grad()
    def synthesize(self, model: nn.Module, spec: SampleSpec, device: torch.device,
                   gen: torch.Generator) -> np.ndarray | None:
        """One sample's waveform: AR -> its free-running codebook 0 decoded alone; NAR -> the
        ground-truth codebook 0 plus the NAR's codebooks. None when the AR stops at once."""
        was_training = model.training
        model.eval()
        try:
            expected = self.decode_cfg.ar_coarse if self.kind == "ar" else self.decode_cfg.nar_residual
            probs: dict[int, torch.Tensor] | None = {} if expected == "expected" else None
            codes = self._codes(model, spec, device, gen, probs)
        finally:
            model.train(was_training)
        if codes is None:
            return None
        return self.codec.decode_as(codes.numpy(), probs, self.decode_cfg.latent_smoothing)

    def _codes(self, model: nn.Module, spec: SampleSpec, device: torch.device, gen: torch.Generator,
               probs: dict[int, torch.Tensor] | None = None) -> torch.Tensor | None:
        """AR: [1, T] or None, its distribution over codebook 0 into probs[0] when given; NAR: [n_q, T], its
        stage distributions into `probs` when given."""
        d = self.decode_cfg
        ex = spec.example
        text = ex.text[None].to(device)  # [1, L]
        text_lens = torch.tensor([ex.text.numel()], device=device)  # [1]
        prompt = spec.prompt[None].to(device) if spec.prompt is not None else None  # [1, n_q, P]
        prompt_lens = torch.tensor([spec.prompt.size(1)], device=device) if spec.prompt is not None else None
        cond = getattr(model, "speaker_condition", None) or model.cfg.speaker_condition
        if self.kind == "ar":
            budget = int(len(ex.text) * d.max_length_per_char * self.frame_rate)
            max_new = max(1, min(self.max_audio_frames, budget))
            dists: list[torch.Tensor] | None = [] if probs is not None else None
            [tokens] = model.generate(
                text, text_lens, max_new_tokens=max_new, temperature=d.temperature[0],
                top_k=d.top_k[0], top_p=d.top_p[0], repetition_penalty=d.repetition_penalty, generator=gen,
                text_guidance=d.text_guidance, text_window=d.text_window, text_window_heads=d.text_window_heads,
                prompt=prompt if cond == "prompt" else None,
                prompt_lens=prompt_lens if cond == "prompt" else None, probs_out=dists,
                probs_temperature=d.ar_coarse_temperature,
            )  # [T]
            if probs is not None and dists is not None:
                probs[0] = dists[0].cpu()  # [T, V]
            return tokens[None].cpu() if tokens.numel() else None  # [1, T]
        cb0 = ex.codes[0][None].to(device)  # [1, T]
        lens = torch.tensor([cb0.size(1)], device=device)
        speaker = torch.tensor([spec.speaker], device=device)
        out = model.generate(
            text, text_lens, cb0, lens,
            prompt=prompt if cond == "prompt" else None,
            prompt_lens=prompt_lens if cond == "prompt" else None,
            speaker=speaker if cond == "embedding" else None,
            refine_steps=d.nar_refine_steps, temperature=d.temperature, top_k=d.top_k, top_p=d.top_p,
            generator=gen, probs_out=probs,
        )  # [1, n_q, T]
        if probs is not None:
            probs.update({k: p[0].cpu() for k, p in probs.items()})  # [1, T, K_k] -> [T, K_k]
        return out[0].cpu()  # [n_q, T]
