"""Evaluate throughput: utterances/s of the whole `evaluate` vs the time of its model calls alone.

Model calls = AR and NAR generation, codec decoding (model and resynthesis baseline), ASR and the
speaker encoder. Everything else (audio I/O, failure detectors, prosody, bookkeeping, MLflow
logging) is the pipeline's overhead. Target: ratio >= 0.8.

    python benchmarks/eval_throughput.py --workdir W --ar REF --nar REF [--project demo] [key=value ...]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from harmonica.config import load_config
from harmonica.interrupts import run_script
from harmonica.stages.evaluate import run_evaluate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--ar", required=True)
    parser.add_argument("--nar", required=True)
    parser.add_argument("--project", default="demo")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    cfg = load_config(args.project, ["tracking.system_metrics=false", *args.overrides])
    start = time.perf_counter()
    out = run_evaluate(cfg, Path(args.workdir), args.ar, args.nar, progress=False)
    whole = time.perf_counter() - start
    n = len(out.result.rows)
    model = out.result.model_seconds
    print(f"utterances                 {n}")
    print(f"whole evaluate             {whole:.1f} s = {n / whole:.3f} utt/s (incl. model loading and logging)")
    print(f"suite loop                 {out.result.wall_seconds:.1f} s = {n / out.result.wall_seconds:.3f} utt/s")
    print(f"model calls alone          {model:.1f} s = {n / model:.3f} utt/s")
    print(f"ratio suite/model-only     {model / out.result.wall_seconds:.3f}   (target >= 0.8)")
    print(f"ratio whole/model-only     {model / whole:.3f}")


if __name__ == "__main__":
    sys.exit(run_script(main))
