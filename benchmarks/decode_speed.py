"""Decoding speed of an AR/NAR pair on each device: seconds per utterance of the eval slice, the ratio to the
first device, and on how many utterances the devices decode the same codebook-0 tokens.

Each device loads the pair (EMA weights, the project's `eval.decode`), decodes one utterance to warm up,
then every utterance of the slice with its evaluate seed (`utterance_seed`), so the draws are the same on
every device. Prints one JSON object.

    python benchmarks/decode_speed.py --workdir W --ar CKPT_DIR --nar CKPT_DIR [--project demo]
        [--devices cpu cuda] [--utterances 40] [key=value ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from harmonica.config import load_config
from harmonica.data.cache import find_cache
from harmonica.evaluation.seeds import utterance_seed
from harmonica.evaluation.suite import build_eval_slice
from harmonica.inference.synthesize import Synthesizer
from harmonica.interrupts import run_script
from harmonica.training.distributed import select_device


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def decode_all(synth: Synthesizer, items: list, seed: int, device: torch.device) -> tuple[list[float], list[list[int]]]:
    """-> (seconds per utterance, codebook-0 tokens per utterance)."""
    speakers = synth.nar_meta.get("speakers", {})
    seconds, tokens = [], []
    for item in items:
        _sync(device)
        t = time.perf_counter()
        _, info = synth.synthesize(item.text, prompt=item.prompt, speaker=speakers.get(item.speaker, 0),
                                   seed=utterance_seed(seed, item.id))
        _sync(device)
        seconds.append(time.perf_counter() - t)
        codes = info["codes"]
        tokens.append([] if codes is None else codes[0].tolist())
    return seconds, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--ar", required=True, help="AR checkpoint directory")
    parser.add_argument("--nar", required=True, help="NAR checkpoint directory")
    parser.add_argument("--project", default="demo")
    parser.add_argument("--devices", nargs="+", default=["cpu", "cuda"])
    parser.add_argument("--utterances", type=int, default=40)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    cfg = load_config(args.project, args.overrides)
    torch.set_num_threads(max(1, cfg.eval.threads))
    results: dict[str, dict] = {}
    first_tokens: list[list[int]] | None = None
    items: list | None = None  # the same slice for every device, read once
    for name in args.devices:
        device = select_device(name, key="--devices")
        synth = Synthesizer(Path(args.ar), Path(args.nar), weights="ema", decode=cfg.eval.decode, device=str(device))
        if items is None:
            cache, _ = find_cache(cfg, Path(args.workdir), allow_mismatch=True,
                                  prefer=synth.nar_meta.get("cache_fingerprint"))
            items = build_eval_slice(cache, cfg.eval, synth.prompt_frames)[: args.utterances]
        decode_all(synth, items[:1], cfg.eval.seed, device)  # warm-up: kernels, allocator
        seconds, tokens = decode_all(synth, items, cfg.eval.seed, device)
        first_tokens = first_tokens if first_tokens is not None else tokens
        same = sum(a == b for a, b in zip(first_tokens, tokens, strict=True))
        results[str(device)] = {"device": str(device), "utterances": len(items), "median_s": statistics.median(seconds),
                         "total_s": sum(seconds), "frames": sum(len(t) for t in tokens),
                         "same_tokens_as_first": same}
        print(f"{name}: {len(items)} utterances, median {statistics.median(seconds):.3f} s, total {sum(seconds):.1f} s, "
              f"codebook 0 identical to {args.devices[0]}'s on {same}/{len(items)}", file=sys.stderr, flush=True)
    base = next(iter(results.values()))["median_s"]
    for r in results.values():
        r["median_ratio_to_first"] = r["median_s"] / base
    print(json.dumps({"devices": results, "threads": torch.get_num_threads()}, indent=1))


if __name__ == "__main__":
    sys.exit(run_script(main))
