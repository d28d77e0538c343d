"""The proof recipe's curve: eval WER/CER/SIM of the AR+NAR pair vs minutes of training, one MLflow run.

Preprocesses (unless the token cache exists), trains the AR then the NAR with checkpoints at the curve's
points (k/points of each model's steps), then evaluates each point's pair -- the AR and NAR checkpoints
of the same share of training -- on a small fixed eval slice with harmonica's evaluate. Training minutes
of a point = the AR's wall time to its checkpoint + the NAR's to its (each from the start of its training
stage to the checkpoint's `saved_at`: setup, validation and checkpointing included).

The parent run `demo_long_curve-<project>` holds `curve/wer`, `curve/cer`, `curve/sim`,
`curve/resynthesis_wer` (the codec's own level, the target), `curve/minutes` and `curve/percent`, each
at step = whole seconds of training, plus `curve.json` and `curve.png`; the preprocess, train and
evaluate runs are its children.

    python benchmarks/demo_long_curve.py --workdir W [--project demo_long] [--points 4] [--eval-utterances 16] [key=value ...]
    python benchmarks/demo_long_curve.py --workdir W --rescore CURVE_RUN_ID [key=value ...]   # evaluate again, no training
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harmonica.config import load_config
from harmonica.config.schema import HarmonicaConfig
from harmonica.data.cache import find_cache
from harmonica.interrupts import run_script
from harmonica.stages.evaluate import run_evaluate
from harmonica.stages.preprocess import run_preprocess
from harmonica.stages.train import run_train
from harmonica.tracking.adapter import Run, Tracker
from harmonica.training.checkpoint import read_meta, step_dir

KINDS = ("ar", "nar")


def point_steps(total: int, points: int) -> list[int]:
    """The training steps of the curve's points: k/points of total, k = 1..points."""
    if not 1 <= points <= total:
        raise ValueError(f"--points {points} must be between 1 and the steps of the shortest training ({total})")
    return [math.ceil(total * k / points) for k in range(1, points + 1)]


def checkpoint_overrides(cfg: HarmonicaConfig, points: int) -> list[str]:
    """ckpt_every / keep_last so every point's checkpoint is written and kept (training is unchanged). The
    trainer also saves at every validation that improves the best metric (best is a kept step), so keep_last
    counts those too: every multiple of gcd(ckpt_every, val_every), and the last step."""
    out = []
    for kind in KINDS:
        tcfg = getattr(cfg.training, kind)
        every = math.gcd(*point_steps(tcfg.total_steps, points))
        saves = tcfg.total_steps // math.gcd(every, tcfg.val_every) + 1
        out += [f"training.{kind}.ckpt_every={every}", f"training.{kind}.keep_last={saves}"]
    return out


def minutes_to(ckpt_root: Path, step: int, started: datetime) -> float:
    saved = datetime.fromisoformat(read_meta(step_dir(ckpt_root, step))["saved_at"])
    return max((saved - started).total_seconds(), 0.0) / 60


def train(cfg: HarmonicaConfig, kind: str, workdir: Path, steps: list[int], parent: str) -> dict[str, Any]:
    started = datetime.now(UTC)  # saved_at has milliseconds (whole seconds made a tiny curve 0 minutes long)
    t0 = time.perf_counter()
    out = run_train(cfg, kind, workdir, parent_run_id=parent)
    root = out.checkpoint_dir / "ckpt"
    return {"run_id": out.run_id, "wall_minutes": (time.perf_counter() - t0) / 60,
            "points": [(s, step_dir(root, s), minutes_to(root, s, started)) for s in steps]}


def plot(rows: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    x = [r["minutes"] for r in rows]
    ax.plot(x, [r["wer"] for r in rows], "o-", label="model WER")
    ax.plot(x, [r["cer"] for r in rows], "s--", label="model CER")
    ax.plot(x, [r["resynthesis_wer"] for r in rows], ":", color="grey", label="codec resynthesis WER")
    ax.axhline(0.5, color="red", lw=0.8, label="target WER 0.5")
    ax.set_xlabel("training minutes (AR + NAR)")
    ax.set_ylabel("error rate")
    ax.set_title("harmonica proof recipe: eval WER vs training time")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def log_point(run: Run, row: dict[str, Any]) -> None:
    step = int(round(row["minutes"] * 60))
    run.log_metrics({f"curve/{k}": row[k] for k in ("wer", "cer", "sim", "resynthesis_wer", "minutes", "percent")
                     if row.get(k) is not None and math.isfinite(row[k])}, step=step)


def print_table(rows: list[dict[str, Any]]) -> None:
    print(f"{'%':>4} {'ar step':>8} {'nar step':>9} {'minutes':>8} {'WER':>6} {'CER':>6} {'SIM':>6} {'resyn WER':>10}")
    for r in rows:
        print(f"{r['percent']:>4.0f} {r['ar_step']:>8} {r['nar_step']:>9} {r['minutes']:>8.2f} {r['wer']:>6.3f} "
              f"{r['cer']:>6.3f} {r['sim']:>6.3f} {r['resynthesis_wer']:>10.3f}")


def evaluate_points(eval_cfg: HarmonicaConfig, workdir: Path, pairs: list[dict[str, Any]], parent: Run,
                    progress: bool) -> list[dict[str, Any]]:
    """Evaluate each point's AR/NAR checkpoint pair ({percent, ar_step, ar_dir, nar_step, nar_dir, minutes})."""
    rows = []
    for pair in pairs:
        out = run_evaluate(eval_cfg, workdir, str(pair["ar_dir"]), str(pair["nar_dir"]), progress=progress,
                           parent_run_id=parent.run_id)
        m = out.result.metrics
        row = {k: pair[k] for k in ("percent", "ar_step", "nar_step", "minutes")}
        row.update({"wer": m["eval/wer"], "cer": m["eval/cer"], "sim": m["eval/sim"],
                    "resynthesis_wer": m["baseline/resynthesis/wer"], "evaluate_run_id": out.run_id})
        rows.append(row)
        log_point(parent, row)
    return rows


def finish(parent: Run, workdir: Path, rows: list[dict[str, Any]], summary: dict[str, Any]) -> dict[str, Any]:
    summary = {**summary, "points": rows}
    parent.log_dict(summary, "curve.json")
    plots = Path(workdir) / "outputs" / "curves"
    plots.mkdir(parents=True, exist_ok=True)
    parent.log_artifact(plot(rows, plots / f"curve-{parent.run_id}.png"), "plots")
    parent.set_tags({"harmonica.curve.final_wer": f"{rows[-1]['wer']:.4f}",
                     "harmonica.curve.minutes": f"{rows[-1]['minutes']:.2f}"})
    return {**summary, "run_id": parent.run_id}


def run_curve(project: str, overrides: list[str], workdir: Path, points: int = 4,
              eval_utterances: int = 16, progress: bool = False) -> dict[str, Any]:
    base = load_config(project, overrides)
    steps = {k: point_steps(getattr(base.training, k).total_steps, points) for k in KINDS}
    cfg = load_config(project, [*overrides, *checkpoint_overrides(base, points)])
    eval_cfg = load_config(project, [*overrides, f"eval.max_utterances={eval_utterances}"])
    tracker = Tracker(cfg, workdir)
    description = (f"WER/CER/SIM of project '{cfg.project}' at {points} points of training vs training minutes "
                   f"(AR + NAR), on {eval_utterances or 'all'} eval utterances; children: preprocess, train, evaluate.")
    with tracker.run("demo_long_curve", f"demo_long_curve-{cfg.project}", description=description) as parent:
        parent.log_config(cfg)
        try:
            find_cache(cfg, workdir)
        except (FileNotFoundError, ValueError):
            run_preprocess(cfg, workdir, progress=progress, parent_run_id=parent.run_id)
        trained = {kind: train(cfg, kind, workdir, steps[kind], parent.run_id) for kind in KINDS}
        pairs = [{"percent": 100 * (i + 1) / points, "ar_step": ar_step, "ar_dir": ar_dir, "nar_step": nar_step,
                  "nar_dir": nar_dir, "minutes": ar_min + nar_min}
                 for i, ((ar_step, ar_dir, ar_min), (nar_step, nar_dir, nar_min)) in enumerate(
                     zip(trained["ar"]["points"], trained["nar"]["points"], strict=True))]
        rows = evaluate_points(eval_cfg, workdir, pairs, parent, progress)
        return finish(parent, workdir, rows, {
            "project": project, "overrides": overrides, **{f"{k}_run_id": trained[k]["run_id"] for k in KINDS},
            **{f"{k}_wall_minutes": trained[k]["wall_minutes"] for k in KINDS}})


def rescore_curve(curve_run_id: str, overrides: list[str], workdir: Path, eval_utterances: int = 16,
                  progress: bool = False) -> dict[str, Any]:
    """Evaluate a finished curve's checkpoints again with today's evaluation (and `overrides`), no training:
    a new curve run tagged with the one it re-scores, the same points and minutes."""
    import tempfile

    probe = Tracker(load_config("demo", []), workdir)  # the workdir's embedded store, to read the old run
    with tempfile.TemporaryDirectory() as tmp:
        old = json.loads(probe.reader.download_artifacts(curve_run_id, "curve.json", tmp).read_text())
    project = old["project"]
    cfg = load_config(project, [*old["overrides"], *overrides])
    eval_cfg = load_config(project, [*old["overrides"], *overrides, f"eval.max_utterances={eval_utterances}"])
    roots = {k: Path(workdir) / "checkpoints" / cfg.project / k / old[f"{k}_run_id"] / "ckpt" for k in KINDS}
    pairs = [{**{k: r[k] for k in ("percent", "ar_step", "nar_step", "minutes")},
              "ar_dir": step_dir(roots["ar"], r["ar_step"]), "nar_dir": step_dir(roots["nar"], r["nar_step"])}
             for r in old["points"]]
    description = (f"re-score of curve run {curve_run_id} (same checkpoints and minutes) with this evaluation on "
                   f"{eval_utterances or 'all'} eval utterances; overrides {overrides or 'none'}")
    with Tracker(cfg, workdir).run("demo_long_curve", f"demo_long_curve-{cfg.project}-rescored",
                                   description=description) as parent:
        parent.log_config(cfg)
        parent.set_tags({"harmonica.curve.rescored_from": curve_run_id})
        rows = evaluate_points(eval_cfg, workdir, pairs, parent, progress)
        keep = {k: old[k] for k in old if k.endswith(("_run_id", "_wall_minutes")) and k != "run_id"}
        return finish(parent, workdir, rows, {"project": project, "overrides": [*old["overrides"], *overrides],
                                              "rescored_from": curve_run_id, **keep})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=".")
    parser.add_argument("--project", default="demo_long")
    parser.add_argument("--points", type=int, default=4, help="evaluated points, k/points of training")
    parser.add_argument("--eval-utterances", type=int, default=16, help="fixed eval slice size; 0 = whole slice")
    parser.add_argument("--rescore", metavar="CURVE_RUN_ID", help="evaluate that curve's checkpoints again "
                        "(no training; e.g. after an evaluation change); overrides apply to the evaluation")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = parser.parse_args()
    if args.rescore:
        summary = rescore_curve(args.rescore, args.overrides, Path(args.workdir), args.eval_utterances, progress=True)
    else:
        summary = run_curve(args.project, args.overrides, Path(args.workdir), args.points, args.eval_utterances,
                            progress=True)
    print_table(summary["points"])
    print(f"AR training {summary['ar_wall_minutes']:.2f} min, NAR training {summary['nar_wall_minutes']:.2f} min; "
          f"MLflow run {summary['run_id']}")
    print(json.dumps({"curve": [{k: r[k] for k in ("minutes", "wer")} for r in summary["points"]]}))


if __name__ == "__main__":
    sys.exit(run_script(main))
