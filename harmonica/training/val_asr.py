"""Free-running check at validation: a few held-out sentences synthesised by the EMA model and
transcribed by the evaluation ASR (bundled whisper tiny.en, loaded once per process).

What is decoded (the trainer of one stage has no model of the other):
  AR  its own free-running codebook 0, decoded alone by the codec. Free-running is the point: the
      teacher-forced CE cannot see a model that babbles or stops early once it feeds on its own
      tokens. Ground-truth upper codebooks cannot be added: they are aligned to the recorded
      codebook 0, not to the generated one, whose length differs.
  NAR the ground-truth codebook 0 plus the NAR's codebooks 1.. (the oracle-coarse decomposition).

  val/asr_wer            corpus WER of those utterances (lower is better; selectable as best_metric)
  val/asr_wer_reference  the same utterances' ground truth through the same decode (AR: codebook 0
                         alone): the floor val/asr_wer can reach. With a codebook 0 that carries
                         little speech (mel_rvq 256 entries: WER ~1.3) the check cannot tell models
                         apart; the reference makes that visible.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from harmonica.config.schema import HarmonicaConfig
from harmonica.evaluation.asr import get_asr
from harmonica.evaluation.text import corpus_wer
from harmonica.training.data import Example
from harmonica.training.samples import SampleRenderer


class FreeRunningASR:
    def __init__(self, kind: str, cfg: HarmonicaConfig, codec: Any, examples: Sequence[Example],
                 texts: dict[str, str], speakers: dict[str, int], contract: dict[str, Any], n: int, seed: int) -> None:
        mcfg = getattr(cfg.model, kind)
        self.renderer = SampleRenderer(
            kind, codec, list(examples), speakers, cfg.eval.decode, contract["frame_rate"],
            contract["max_audio_frames"], getattr(mcfg, "prompt_frames", 1), n_samples=n, seed=seed,
        )
        self.refs = [texts[spec.example.id] for spec in self.renderer.specs]
        self.asr_cfg, self.seed, self.sr = cfg.eval.asr, seed, codec.sample_rate
        self.reference_wer: float | None = None

    def _wer(self, wavs: list[Any]) -> float:
        asr = get_asr(self.asr_cfg)  # process-wide: loaded on first use only
        hyps = ["" if w is None else asr.transcribe(w, self.sr) for w in wavs]
        return corpus_wer(self.refs, hyps)

    @torch.no_grad()
    def __call__(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        gen = torch.Generator().manual_seed(self.seed)  # the same draws at every check
        wavs = [self.renderer.synthesize(model, spec, device, gen) for spec in self.renderer.specs]
        if self.reference_wer is None:
            self.reference_wer = self._wer([self.renderer.reference(spec) for spec in self.renderer.specs])
        return {"val/asr_wer": self._wer(wavs), "val/asr_wer_reference": self.reference_wer}


def asr_due(step: int, total_steps: int, every: int) -> bool:
    """Whether the validation at `step` runs the check (every = 0: every validation)."""
    return every == 0 or step % every == 0 or step == total_steps
