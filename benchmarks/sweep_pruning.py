"""Sweep pruning: trainer steps spent with and without pruning for the same trial budget, and the best
objective value each reached.

Two studies with the same space file, sampler seed and budget, one with the space's pruner (successive
halving in the shipped anti-collapse space) and one with none, in one throwaway workdir (one token cache,
one MLflow store). Trial n samples with seed + n, so while TPE is still in its random start-up phase (10
trials by default) both studies try exactly the same parameters and the comparison isolates what pruning
saves and what it costs.

    python benchmarks/sweep_pruning.py [--trials 8] [--space projects/sweeps/anti_collapse.yaml]
        [--project demo] [--workdir DIR] [--pruner median|successive_halving|hyperband] [key=value ...]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import optuna

from harmonica.config import load_config
from harmonica.config.load import find_root
from harmonica.interrupts import run_script
from harmonica.stages.sweep import run_sweep
from harmonica.sweep.report import select_best
from harmonica.sweep.space import PrunerSpec, apply_overrides, load_space
from harmonica.sweep.study import make_pruner


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--space", default="projects/sweeps/anti_collapse.yaml")
    ap.add_argument("--project", default="demo")
    ap.add_argument("--workdir", default=None, help="default: a temporary directory (the token cache is built there)")
    ap.add_argument("--pruner", choices=["median", "successive_halving", "hyperband"], default=None,
                    help="default: the space file's")
    ap.add_argument("overrides", nargs="*", help="key.path=value applied to every trial")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    cfg = load_config(args.project, ["tracking.system_metrics=false", *args.overrides])
    space_path = Path(args.space)
    if not space_path.is_file():
        space_path = find_root() / space_path
    space = load_space(space_path, cfg)
    if space.multi:
        raise SystemExit("pruning needs a single-objective space")
    tcfg = getattr(apply_overrides(cfg, space.fixed, "fixed").training, space.kind)
    spec = PrunerSpec(type=args.pruner) if args.pruner else (space.pruner or PrunerSpec(type=cfg.sweep.pruner))
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="sweep-pruning-"))

    rows = []
    for label, pruner in ((f"{spec.type} pruner", make_pruner(spec, tcfg)), ("no pruning", optuna.pruners.NopPruner())):
        start = time.perf_counter()
        out = run_sweep(cfg, workdir, space_path, n_trials=args.trials, study_name=f"bench-{label.replace(' ', '-')}",
                        pruner=pruner, best_config_dir=workdir / "best")
        wall = time.perf_counter() - start
        study = optuna.load_study(study_name=out.study_name, storage=f"sqlite:///{(workdir / 'optuna.db').resolve()}")
        steps = sum(int(t.user_attrs.get("harmonica.steps") or 0) for t in study.trials)
        best = select_best(study, space)
        rows.append((label, out.counts, steps, best, wall, study))

    m = space.metrics[0]
    c = space.objective.constraint
    sign = 1.0 if m.direction == "minimize" else -1.0
    print(f"\nsweep pruning benchmark: {space_path.name}, project {cfg.project}, {args.trials} trials, "
          f"{tcfg.total_steps} steps/trial, validation every {tcfg.val_every}, seed {cfg.sweep.sampler_seed}, "
          f"{spec.type} pruner ({', '.join(f'{k}={v}' for k, v in spec.model_dump().items() if k != 'type')})")
    print(f"objective: {m.direction} {m.name}" + (f" subject to {c.key}" if c else ""))
    print(f"{'':<16}{'complete':>9}{'pruned':>8}{'failed':>8}{'trainer steps':>15}{'best feasible':>22}"
          f"{'best (any)':>18}{'wall s':>9}")
    for label, counts, steps, best, wall, study in rows:
        feasible = f"{best.trial.values[0]:.4f} (#{best.trial.number})" if best.trial and best.feasible else "none"
        complete = [t for t in study.trials if t.state.name == "COMPLETE"]
        top = min(complete, key=lambda t: sign * t.values[0]) if complete else None
        any_ = f"{top.values[0]:.4f} (#{top.number})" if top else "-"
        print(f"{label:<16}{counts['COMPLETE']:>9}{counts['PRUNED']:>8}{counts['FAIL']:>8}{steps:>15}{feasible:>22}"
              f"{any_:>18}{wall:>9.0f}")
    (_, _, s_pruned, _, w_pruned, st_p), (_, _, s_full, _, w_full, st_f) = rows
    print(f"trainer steps saved by pruning: {s_full - s_pruned} of {s_full} "
          f"({100 * (s_full - s_pruned) / max(s_full, 1):.0f}%); wall time saved {w_full - w_pruned:.0f} s")
    same = all(a.params == b.params for a, b in zip(st_p.trials, st_f.trials, strict=False))
    print(f"same parameters tried in both studies: {same}")
    print(f"workdir: {workdir}")


if __name__ == "__main__":
    sys.exit(run_script(main))
