"""A tiny token cache (synthetic corpus, 3-codebook mel_rvq) and tiny-model configs for trainer tests."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harmonica.config import load_config
from harmonica.data.preprocess import build_token_cache
from tests.factories import make_ljspeech_corpus

TINY = [
    "codec.n_q=3", "codec.codebook_size=16", "codec.kmeans_iters=3", "codec.griffin_lim_iters=2",
    "data.quality.min_chars_per_sec=1", "data.quality.max_chars_per_sec=100", "data.val_fraction=0.2",
    "tracking.system_metrics=false",
    "model.ar.d_model=32", "model.ar.n_layers=1", "model.ar.n_heads=2", "model.ar.text_layers=1",
    "model.nar.d_model=32", "model.nar.n_layers=1", "model.nar.n_heads=2", "model.nar.text_layers=1",
    "model.nar.prompt_frames=20",
    # the demo recipe's corpus/codec/frontend choices, reset to the plain tiny setting
    "codec.ladder_utterances=0", "text.frontend=chars", "data.workers=1",
    "training.ar.threads=1", "training.nar.threads=1", "eval.threads=1", "eval.oracle_stages=[1]",
    "eval.oracle_teacher_forced=false", "training.ar.neighbour_smoothing=0", "eval.decode.ar_coarse=sampled",
    "eval.decode.latent_smoothing=[]",
    # a count table of 16 utterances is degenerate (its argmax is one entry of codebook 2: a collapse at step 2);
    # tests/models/test_nar_prior.py and tests/training/test_trainer.py train with the prior
    "model.nar.count_prior=false",
    "training.ar.guided_attention_weight=0", "training.ar.guided_attention_heads=0",
    "model.ar.acoustic_dim=0",  # tests/models/test_acoustic_head.py and test_trainer.py train with it
    "training.ar.token_noise=0.4",  # the demo's until stop 34: the frozen reports' tiny models are trained with it
]


def tiny_steps(kind: str, total: int = 8, **extra: object) -> list[str]:
    knobs = {"total_steps": total, "warmup_steps": 1, "batch_size": 4, "log_every": 2, "val_every": 4,
             "sample_every": total, "ckpt_every": 4, "codebook_entropy_warmup_steps": 4, **extra}
    return [f"training.{kind}.{k}={v}" for k, v in knobs.items()]


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    return make_ljspeech_corpus(tmp_path_factory.mktemp("corpus"), n=16).root


@pytest.fixture(scope="session")
def tiny_cache_workdir(tmp_path_factory, tiny_corpus: Path) -> Path:
    """A workdir holding a built token cache; copy it before writing runs into it."""
    workdir = tmp_path_factory.mktemp("cachework")
    build_token_cache(tiny_cfg(tiny_corpus), workdir, progress=False)
    return workdir


def tiny_cfg(corpus: Path, *extra: str):
    return load_config("demo", [*TINY, "data.corpus_format=ljspeech", f"data.corpus_dir={corpus}", *extra])


def run_tiny_pipeline(work: Path, corpus: Path, cache_workdir: Path) -> subprocess.CompletedProcess:
    """`harmonica pipeline` (a real process, promote step included) of the tiny config into a copy of
    the tiny cache workdir at `work`; fails the test when it fails."""
    shutil.copytree(cache_workdir, work)
    overrides = [*TINY, "data.corpus_format=ljspeech", f"data.corpus_dir={corpus}",
                 *tiny_steps("ar"), *tiny_steps("nar"), "eval.split=val"]
    proc = subprocess.run(
        [sys.executable, "-m", "harmonica.cli", "pipeline", "--project", "demo", "--workdir", str(work),
         "--no-progress", "--allow-dirty", *overrides],
        capture_output=True, text=True, timeout=900, cwd=work,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


class RecordingSink:
    """A MetricSink that keeps everything in memory (and can fail on a given step)."""

    def __init__(self, fail_at_step: int | None = None) -> None:
        self.metrics: dict[str, dict[int, float]] = {}
        self.tags: dict[str, str] = {}
        self.texts: dict[str, str] = {}
        self.artifacts: list[tuple[str, str | None]] = []
        self.links: dict[tuple[str, int], tuple[str, tuple[str, str] | None]] = {}  # (key, step) -> model, dataset
        self.models: dict[str, int] = {}  # published checkpoint model id -> step (pruned ones removed)
        self.images: dict[str, dict[int, object]] = {}  # key -> step -> image
        self.fail_at_step = fail_at_step

    def log_metrics(self, metrics, step=None, model_ids=None, dataset=None):
        if self.fail_at_step is not None and step is not None and step >= self.fail_at_step:
            raise KeyboardInterrupt("simulated kill")
        for k, v in metrics.items():
            self.metrics.setdefault(k, {})[step] = float(v)
            linked = next((m for prefix, m in (model_ids or {}).items() if k.startswith(prefix) and m), None)
            if linked:
                self.links[(k, step)] = (linked, dataset)

    def publish_checkpoint(self, directory, *, kind, step, params, tags):
        ids = {w: f"m-{kind}-{w}-{step}" for w in ("raw", "ema")}
        self.models.update({i: step for i in ids.values()})
        return ids

    def prune_checkpoint_models(self, keep_steps):
        self.models = {i: s for i, s in self.models.items() if s in keep_steps}

    def set_tags(self, tags):
        self.tags.update({k: str(v) for k, v in tags.items()})

    def log_artifacts(self, directory, artifact_path=None):
        self.artifacts.append((str(directory), artifact_path))

    def log_text(self, text, artifact_file):
        self.texts[artifact_file] = text

    def log_image(self, key, image, step):
        self.images.setdefault(key, {})[step] = image


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory, tiny_corpus: Path, tiny_cache_workdir: Path) -> dict[str, Path]:
    """Best checkpoints of an 8-step AR and NAR on the tiny cache: {"ar": dir, "nar": dir}."""
    import torch

    from harmonica.data.cache import find_cache
    from harmonica.training.trainer import Trainer

    out = {}
    root = tmp_path_factory.mktemp("ckpts")
    for kind in ("ar", "nar"):
        cfg = tiny_cfg(tiny_corpus, *tiny_steps(kind))
        cache, _ = find_cache(cfg, tiny_cache_workdir)
        result = Trainer(cfg, kind, cache, root / kind, RecordingSink(), device=torch.device("cpu"),
                         meta={"run_id": f"tiny-{kind}"}).fit()
        out[kind] = result.best_checkpoint
    return out
