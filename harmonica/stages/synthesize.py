"""`harmonica synthesize`: text -> wav with an AR + NAR pair given as paths, run ids or runs:/ URIs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from harmonica.config.schema import HarmonicaConfig
from harmonica.data.audio import AudioError
from harmonica.tracking.adapter import resolve_tracking_uri
from harmonica.tracking.refs import resolve_checkpoint
from harmonica.training.distributed import select_device
from harmonica.training.progress import make_progress

PHASES = ("fetch checkpoints", "load models", "decode (AR, NAR, codec)", "write wav")


class SynthesisError(ValueError):
    """Nothing to write, or a missing input the checkpoint needs; the message says what to pass."""


@dataclass(frozen=True)
class Synthesis:
    path: Path
    seconds: float
    sample_rate: int
    frames: int
    hit_length_bound: bool
    loop_cut: bool
    gain_db: float

    def summary(self) -> str:
        return (f"wrote {self.path}: {self.seconds:.2f} s at {self.sample_rate} Hz ({self.frames} frames; "
                f"length bound hit: {self.hit_length_bound}, loop cut: {self.loop_cut}; "
                f"peak ceiling gain {self.gain_db:+.2f} dB)")


def resolve_pair(cfg: HarmonicaConfig, workdir: Path, ar_ref: str, nar_ref: str) -> tuple[Path, Path]:
    uri = resolve_tracking_uri(cfg.tracking, workdir)
    ar, nar = (resolve_checkpoint(ref, uri, workdir / "downloads").path for ref in (ar_ref, nar_ref))
    return ar, nar


def run_synthesize(cfg: HarmonicaConfig, workdir: Path, ar_ref: str, nar_ref: str, text: str, out_path: Path, *,
                   prompt_wav: str | None = None, speaker: int | None = None, weights: str = "ema",
                   seed: int = 0, progress: bool = False) -> Synthesis:
    """progress: on a terminal, a bar over the phases (fetching the checkpoints from MLflow and
    decoding are the slow ones)."""
    from harmonica.data.audio import write_audio
    from harmonica.inference.synthesize import Synthesizer

    bar = make_progress(progress, "synthesize", unit="phase", every=True)
    bar.start(len(PHASES))
    try:
        bar.update(0, {"now": PHASES[0]})
        ar_path, nar_path = resolve_pair(cfg, Path(workdir), ar_ref, nar_ref)
        bar.update(1, {"now": PHASES[1]})
        try:
            device = select_device(cfg.eval.device, key="eval.device")
        except RuntimeError as e:
            raise SynthesisError(str(e)) from e
        synth = Synthesizer(ar_path, nar_path, weights=weights, decode=cfg.eval.decode, device=str(device))
        try:
            prompt = synth.prompt_from_wav(prompt_wav) if prompt_wav else None
        except AudioError as e:
            raise SynthesisError(f"--prompt-wav {prompt_wav} is not audio harmonica can read ({e}): "
                                 "pass a WAV/FLAC recording of the target voice") from e
        if synth.speaker_condition == "prompt" and prompt is None:
            raise SynthesisError("this model is conditioned on an acoustic prompt: pass --prompt-wav FILE "
                                 "(a few seconds of the target voice)")
        bar.update(2, {"now": PHASES[2]})
        wav, info = synth.synthesize(text, prompt=prompt, speaker=speaker, seed=seed)
        if wav.size == 0:
            raise SynthesisError("the AR stopped at once: no audio (try another seed or a later checkpoint)")
        bar.update(3, {"now": PHASES[3]})
        write_audio(out_path, wav, synth.sample_rate)
        bar.update(4, {"now": "done"})
    finally:
        bar.close()
    return Synthesis(Path(out_path), wav.size / synth.sample_rate, synth.sample_rate, int(info["ar_frames"]),
                     bool(info["ar_hit_length_bound"]), bool(info["ar_loop_cut"]), float(info["gain_db"]))
