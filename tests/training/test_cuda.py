"""bf16 training steps and decoding on a CUDA GPU. CI has none: these run on GPU machines
(`benchmarks/gpu_check.sh` runs them first); the CPU halves of the same code are tested everywhere."""

import math

import numpy as np
import pytest
import torch

from harmonica.config.schema import DecodeConfig
from harmonica.data.cache import find_cache
from harmonica.inference.synthesize import Synthesizer
from harmonica.training.trainer import Trainer
from tests.tiny import RecordingSink, tiny_cfg, tiny_steps

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (benchmarks/gpu_check.sh runs these)")

# every draw of the training step: token noise (neighbours too), text dropout, scheduled sampling
RANDOM_AR = ["training.ar.token_noise=0.3", "training.ar.token_noise_neighbours=4", "training.ar.text_dropout=0.2",
             "training.ar.scheduled_sampling=true", "training.ar.scheduled_sampling_start=2"]


@cuda
@pytest.mark.parametrize("kind", ["ar", "nar"])
def test_bf16_training_steps_on_the_gpu(kind, tiny_corpus, tiny_cache_workdir, tmp_path):
    """The trainer's seeded CPU generator drives draws for tensors on the GPU (found by the first GPU
    check: token noise refused it), under bf16 autocast; the losses stay finite."""
    extra = RANDOM_AR if kind == "ar" else ["training.nar.token_noise=0.2"]
    cfg = tiny_cfg(tiny_corpus, *tiny_steps(kind), f"training.{kind}.precision=bf16", *extra)
    cache, _ = find_cache(cfg, tiny_cache_workdir)
    sink = RecordingSink()
    Trainer(cfg, kind, cache, tmp_path / "ckpt", sink, device=torch.device("cuda")).fit()
    losses = sink.metrics[f"{kind}/loss"]
    assert losses and all(math.isfinite(v) for v in losses.values())


@cuda
def test_decoding_on_the_gpu_samples_with_the_seed_s_cpu_generator(tiny_checkpoints, tiny_corpus):
    """Sampled decoding (AR temperature 1, NAR sampled residuals, expected codebook 0) on the GPU."""
    decode = DecodeConfig(temperature=[1.0, 1.0], ar_coarse="expected", max_length_per_char=0.05)
    synth = Synthesizer(tiny_checkpoints["ar"], tiny_checkpoints["nar"], decode=decode, device="cuda")
    assert next(synth.ar.parameters()).device.type == "cuda"
    prompt = synth.prompt_from_wav(next((tiny_corpus / "wavs").glob("*.wav")))
    wav, info = synth.synthesize("a quiet river", prompt=prompt, seed=3)
    again, _ = synth.synthesize("a quiet river", prompt=prompt, seed=3)
    assert wav.dtype == np.float32 and wav.size > 0 and np.array_equal(wav, again)
    assert info["codes"].device.type == "cpu"
