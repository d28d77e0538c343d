"""Train the NAR (or AR) of `demo` and `demo_collapse` and print the collapse figures side by side.

    python scripts/compare_collapse.py [--workdir DIR] [--kind nar] [key=value ...]

Runs the real CLI (preprocess once, then one training per project) on the embedded MLflow store
of the workdir and prints, for each project: the collapse tag and event count, and the median over
codebooks of the mean predicted utilisation after warmup.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

from mlflow.tracking import MlflowClient

from harmonica.config import load_config


def utilisation_after_warmup(client: MlflowClient, run_id: str, kind: str, warmup: int, n_q: int) -> float:
    per_codebook = []
    for k in range(0 if kind == "ar" else 1, 1 if kind == "ar" else n_q):
        values = [m.value for m in client.get_metric_history(run_id, f"{kind}/cb{k}/util_pred") if m.step > warmup]
        if values:
            per_codebook.append(statistics.fmean(values))
    return statistics.median(per_codebook)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="collapse_compare")
    parser.add_argument("--kind", default="nar", choices=["ar", "nar"])
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    workdir = Path(args.workdir).resolve()
    cli = [sys.executable, "-m", "harmonica.cli"]
    subprocess.run([*cli, "preprocess", "--project", "demo", "--workdir", str(workdir), "--no-progress"], check=True)
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    rows = []
    for project in ("demo", "demo_collapse"):
        cmd = [*cli, "train", "--model-type", args.kind, "--project", project, "--workdir", str(workdir), *args.overrides]
        subprocess.run(cmd, check=True)
        cfg = load_config(project, args.overrides)
        exp = client.get_experiment_by_name(f"{cfg.tracking.experiment_prefix}/{project}")
        [run] = client.search_runs([exp.experiment_id], f"tags.`harmonica.stage` = 'train_{args.kind}'",
                                   order_by=["attributes.start_time DESC"], max_results=1)
        warmup = getattr(cfg.training, args.kind).warmup_steps
        util = utilisation_after_warmup(client, run.info.run_id, args.kind, warmup, cfg.codec.effective_n_q)
        rows.append((project, run.data.tags.get("harmonica.collapse", "false"),
                     int(run.data.metrics.get("collapse/events", 0)), util, run.data.metrics.get("val/loss", float("nan")),
                     run.info.run_id))
    print(f"\n{'project':<15} {'collapse tag':<13} {'events':>6} {'median util_pred after warmup':>30} {'val/loss':>9}  run")
    for project, tag, events, util, val, run_id in rows:
        print(f"{project:<15} {tag:<13} {events:>6} {util:>30.3f} {val:>9.3f}  {run_id}")


if __name__ == "__main__":
    main()
