"""Preprocess throughput: audio-seconds encoded per wall-second, pipeline vs a bare codec loop.

The pipeline figure is a full `build_token_cache` (scan, load, trim, quality checks, normalise,
encode, write shards) minus the one-off codec fit; the bare loop reads the same files and calls
the same fitted codec's `encode`. Target: ratio >= 0.8 with one worker.

    python benchmarks/preprocess_throughput.py [--project demo] [--workers 1] [key=value ...]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from harmonica.codec import load_codec
from harmonica.config import load_config
from harmonica.data.audio import load_audio
from harmonica.data.preprocess import build_token_cache


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", default="demo")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    cfg = load_config(args.project, [*args.overrides, f"data.workers={args.workers}"])

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        result = build_token_cache(cfg, Path(tmp), progress=False)
        wall = time.perf_counter() - t0
        fit = result.timings.get("fit_sec", 0.0)
        pipeline_sec = wall - fit
        audio_sec = result.timings["audio_sec"]

        codec = load_codec(cfg.codec, result.cache.codec_dir)
        manifest_dir = result.manifests_dir
        from harmonica.data.manifest import CorpusManifests

        utts = CorpusManifests.read(manifest_dir).utterances
        t0 = time.perf_counter()
        bare_audio = 0.0
        for utt in utts:
            wav = load_audio(utt.path, cfg.codec.sample_rate)
            codec.encode(wav)
            bare_audio += len(wav) / cfg.codec.sample_rate
        bare_sec = time.perf_counter() - t0

    pipeline_rate = audio_sec / pipeline_sec
    bare_rate = bare_audio / bare_sec
    print(f"utterances            {len(utts)}")
    print(f"codec fit (excluded)  {fit:.2f} s")
    print(f"pipeline              {audio_sec:.1f} audio-s in {pipeline_sec:.2f} s = {pipeline_rate:.1f} audio-s/s")
    print(f"bare codec loop       {bare_audio:.1f} audio-s in {bare_sec:.2f} s = {bare_rate:.1f} audio-s/s")
    print(f"ratio pipeline/bare   {pipeline_rate / bare_rate:.3f}   (target >= 0.8)")


if __name__ == "__main__":
    main()
