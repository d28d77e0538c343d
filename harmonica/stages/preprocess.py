"""`harmonica preprocess`: build (or reuse) the token cache and record exactly what went in."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from harmonica.config.schema import HarmonicaConfig
from harmonica.data.preprocess import PreprocessError, PreprocessResult, build_token_cache
from harmonica.stages.console import announce_run
from harmonica.tracking.adapter import Run, Tracker
from harmonica.tracking import names


@dataclass
class PreprocessOutcome:
    result: PreprocessResult
    run_id: str
    tracking_uri: str
    experiment: str


def describe(cfg: HarmonicaConfig, result: PreprocessResult) -> str:
    c = result.cache.contract
    counts = result.counts
    state = "reused" if result.reused else "built"
    return (
        f"Token cache for project '{cfg.project}' ({cfg.data.corpus_format} corpus), {state}: "
        f"{c['codec_name']} {c['n_q']}x{c['codebook_size']} @ {c['frame_rate']:g} Hz, "
        f"{counts.get('kept', 0)} utterances kept, {counts.get('rejected', 0)} rejected. "
        f"Fingerprint {result.cache.fingerprint}."
    )


def log_result(run: Run, cfg: HarmonicaConfig, result: PreprocessResult) -> None:
    cache = result.cache
    run.set_tags(
        {
            names.CACHE_FINGERPRINT: cache.fingerprint,
            names.CACHE_DIR: str(cache.directory.resolve()),
            names.CACHE_REUSED: str(result.reused).lower(),
            "codec.pretrained": str(result.codec_pretrained).lower(),
            "codec.name": cache.contract["codec_name"],
            "mlflow.note.content": describe(cfg, result),
        }
    )
    run.log_params({f"contract.{k}": v for k, v in cache.contract.items()})
    run.log_params({k: v for k, v in cache.meta["codec"].items() if k not in ("codec.pretrained",)})
    metrics = {f"preprocess/quality/{k}": v for k, v in result.counts.items()}
    for split, stats in cache.meta["splits"].items():
        metrics.update({f"preprocess/{split}/{k}": v for k, v in stats.items()})
    for k, v in cache.meta["timings"].items():
        metrics[f"preprocess/time/{k}"] = v
    timings = cache.meta["timings"]
    if timings.get("encode_sec"):
        metrics["preprocess/encode_realtime_factor"] = timings["audio_sec"] / timings["encode_sec"]
    metrics["preprocess/cache_reused"] = float(result.reused)
    if "text" in cache.meta:  # symbols outside the frontend's fixed inventory, encoded as <unk>
        metrics["preprocess/text/unknown_symbols"] = cache.meta["text"]["unknown_symbols"]
    run.log_metrics(metrics, step=0)
    run.log_dataset(
        name=f"{cfg.project}-tokens",
        digest=cache.fingerprint,
        source=cache.directory,
        context="preprocess",
        profile={"splits": cache.meta["splits"], "codec": cache.contract["codec_name"]},
    )
    run.log_artifacts(result.quality_dir, "quality")
    run.log_artifacts(result.manifests_dir, "manifests")
    run.log_artifact(cache.directory / "cache.json", "cache")


def log_ladder(run: Run, cfg: HarmonicaConfig, result: PreprocessResult) -> None:
    """The codec ladder (codec.ladder_utterances > 0): metrics, a per-utterance table, a summary."""
    if not result.codec_pretrained:  # random EnCodec weights decode to noise: nothing to measure
        run.set_tags({"codec.ladder": "skipped: the codec has no trained weights"})
        return
    from harmonica.codec.ladder import run_ladder, write_table

    ladder = run_ladder(cfg, result.cache, cfg.codec.ladder_utterances)
    if ladder is None:
        run.set_tags({"codec.ladder": "skipped: no eval or val utterance in the token cache"})
        return
    run.log_metrics(ladder.metrics, step=0)
    run.log_table(ladder.table(), "codec_ladder/rows.json")
    with tempfile.TemporaryDirectory() as tmp:
        run.log_artifact(write_table(ladder, Path(tmp) / "codec_ladder.md"), "codec_ladder")
    run.set_tags({"codec.ladder": ladder.summary()})


def run_preprocess(
    cfg: HarmonicaConfig,
    workdir: Path,
    *,
    corpus_dir: str | None = None,
    workers: int | None = None,
    progress: bool = True,
    parent_run_id: str | None = None,
    extra_tags: dict[str, str] | None = None,
    tracking_uri: str | None = None,
) -> PreprocessOutcome:
    tracker = Tracker(cfg, workdir, tracking_uri)
    with tracker.run(
        "preprocess", f"preprocess-{cfg.project}", parent_run_id=parent_run_id, tags=extra_tags
    ) as run:
        announce_run(run, "preprocess")
        run.log_config(cfg)
        try:
            result = build_token_cache(cfg, workdir, corpus_dir=corpus_dir, workers=workers, progress=progress)
        except PreprocessError as exc:
            if exc.quality_dir is not None:  # the run shows why nothing was usable
                run.log_artifacts(exc.quality_dir, "quality")
            raise
        log_result(run, cfg, result)
        if cfg.codec.ladder_utterances:
            log_ladder(run, cfg, result)
        run.set_tags({"mlflow.runName": f"preprocess-{cfg.project}-{result.cache.fingerprint[:8]}"})
        return PreprocessOutcome(result, run.run_id, tracker.tracking_uri, tracker.experiment_name)
