"""Tracking overhead: a bare training-step loop vs the harmonica trainer with full diagnostics and
MLflow logging (embedded SQLite store), same model, data and objective. Target: ratio <= 1.05.

The trainer's validation and checkpoint time is excluded (the bare loop has neither); what remains
is the per-step cost of diagnostics (usage histograms, attention entropy and grad/update norms on
log steps), the instability guard, EMA, and MLflow logging.

    python benchmarks/tracking_overhead.py [--kind ar|nar] [--steps 120] [key=value ...]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from harmonica.config import load_config
from harmonica.data.cache import find_cache
from harmonica.data.preprocess import build_token_cache
from harmonica.interrupts import run_script
from harmonica.models import build_model
from harmonica.tracking.adapter import Tracker
from harmonica.training.optim import build_optimizer, build_scheduler
from harmonica.training.trainer import Trainer


def bare_loop(trainer: Trainer, steps: int) -> float:
    """The same task step + clip + AdamW + scheduler, nothing else."""
    t = trainer.tcfg
    model = build_model(trainer.kind, trainer.mcfg, trainer.cache.contract)
    model.train()
    groups = model.param_groups()
    params = [p for ps in groups.values() for p in ps]
    opt, sched = build_optimizer(groups, t), None
    sched = build_scheduler(opt, t)
    gen = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for step in range(steps):
        opt.zero_grad(set_to_none=True)
        out = trainer.task.train_step(model, next(trainer.stream), step, gen, False)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, t.grad_clip)
        opt.step()
        sched.step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", default="ar", choices=["ar", "nar"])
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--project", default="demo")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    k, n = args.kind, args.steps
    cfg = load_config(args.project, [
        "codec.kmeans_iters=5", f"training.{k}.total_steps={n}", f"training.{k}.warmup_steps=5",
        f"training.{k}.val_every={n}", f"training.{k}.ckpt_every={n}", f"training.{k}.sample_every={n}",
        *args.overrides,
    ])
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        build_token_cache(cfg, workdir, progress=False)
        cache, _ = find_cache(cfg, workdir)
        tracker = Tracker(cfg, workdir)
        with tracker.run(f"bench_{k}", "tracking-overhead") as run:
            trainer = Trainer(cfg, k, cache, workdir / "ckpt", run, device=torch.device("cpu"))
            excluded = {"sec": 0.0}
            for name in ("_validate", "save"):
                original = getattr(trainer, name)

                def timed(*a, _original=original, **kw):
                    t0 = time.perf_counter()
                    try:
                        return _original(*a, **kw)
                    finally:
                        excluded["sec"] += time.perf_counter() - t0

                setattr(trainer, name, timed)
            bare = bare_loop(trainer, max(20, n // 4))  # also warms up the allocator and kernels
            start = time.perf_counter()
            trainer.fit()
            tracked = (time.perf_counter() - start - excluded["sec"]) / n
            bare = (bare + bare_loop(trainer, max(20, n // 4))) / 2  # before and after: machine drift
    print(f"model {k}, {n} steps, log_every {getattr(cfg.training, k).log_every}")
    print(f"bare step loop        {bare * 1000:.1f} ms/step")
    print(f"harmonica trainer     {tracked * 1000:.1f} ms/step (validation/checkpoints excluded)")
    print(f"ratio trainer/bare    {tracked / bare:.3f}   (target <= 1.05)")


if __name__ == "__main__":
    sys.exit(run_script(main))
