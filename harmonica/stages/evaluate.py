"""`harmonica evaluate`: score an AR/NAR pair on the project's fixed eval slice, next to baselines."""

from __future__ import annotations

import contextlib
import logging
import math
import tempfile
from functools import partial
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harmonica.config.load import config_hash
from harmonica.config.schema import HarmonicaConfig
from harmonica.data.audio import write_audio
from harmonica.data.cache import find_cache
from harmonica.evaluation.seeds import utterance_seed
from harmonica.evaluation.suite import EvalError, EvalItem, EvalResult, Scorer, build_eval_slice, run_suite
from harmonica.inference.synthesize import Synthesizer
from harmonica.stages.console import announce_run
from harmonica.tracking.adapter import Run, Tracker
from harmonica.tracking.read import quiet_downloads
from harmonica.tracking.refs import model_of, resolve_checkpoint
from harmonica.training.progress import progress_items, progress_wanted
from harmonica.training.distributed import select_device
from harmonica.training.threads import apply_threads
from harmonica.tracking import names

log = logging.getLogger(__name__)


@dataclass
class EvaluateOutcome:
    result: EvalResult
    run_id: str
    tracking_uri: str
    experiment: str


def distribution_html(rows: list[dict[str, Any]], path: Path) -> Path:
    """WER and SIM distributions of the model, both baselines and the oracle sources, one
    self-contained HTML file."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("WER per utterance", "speaker similarity per utterance"))
    colors = {"model": "#d62728", "resynthesis": "#1f77b4", "ground_truth": "#2ca02c"}
    oracles = sorted(k[: -len("_wer")] for k in rows[0] if k.endswith("_wer") and k[: -len("_wer")] not in colors)
    palette = ("#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f")
    colors.update({name: palette[i % len(palette)] for i, name in enumerate(oracles)})
    for source, color in colors.items():
        wers = [r[f"{source}_wer"] for r in rows]
        sims = [r[f"{source}_sim"] for r in rows if math.isfinite(r[f"{source}_sim"])]
        fig.add_trace(go.Box(y=wers, name=source, marker_color=color, boxpoints="all", legendgroup=source), 1, 1)
        fig.add_trace(go.Box(y=sims, name=source, marker_color=color, boxpoints="all", legendgroup=source,
                             showlegend=False), 1, 2)
    fig.update_layout(height=480, title="harmonica evaluate: model vs codec resynthesis vs ground truth")
    fig.write_html(path, include_plotlyjs=True)  # self-contained: the UI may be offline
    return path


def _table(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    keys = list(rows[0])
    return {k: [None if isinstance(r.get(k), float) and not math.isfinite(r[k]) else r.get(k) for r in rows]
            for k in keys}


def log_result(run: Run, result: EvalResult, work: Path, model_ids: list[str] | None = None,
               dataset: tuple[str, str] | None = None) -> None:
    """model_ids: the evaluated checkpoint models; every eval/* metric is linked to each of them."""
    run.log_metrics(result.metrics, step=0, model_ids={"": model_ids or []}, dataset=dataset)
    run.log_metrics({
        "eval/throughput/utterances_per_sec": len(result.rows) / max(result.wall_seconds, 1e-9),
        "eval/throughput/model_time_share": result.model_seconds / max(result.wall_seconds, 1e-9),
        # where evaluate's time went (seconds): a researcher shortening it sees what to cut
        "eval/throughput/seconds/wall": result.wall_seconds,
        **{f"eval/throughput/seconds/{part}": value for part, value in sorted(result.seconds.items())},
    }, step=0)
    run.log_table(_table(result.rows), names.EVAL_TABLE)
    run.log_artifacts(result.audio_dir, "audio")
    run.log_artifact(distribution_html(result.rows, work / "eval_distributions.html"), "plots")


def oracle_sources(cfg: HarmonicaConfig, synth: Synthesizer,
                   speakers: dict[str, int]) -> dict[str, Callable[[EvalItem], np.ndarray]]:
    """The decomposition: `gt_coarse` = the ground truth's first codebook completed by the model's
    NAR (what the model would say with a perfect AR); `tf_coarse` = the AR's teacher-forced argmax
    codebook 0 completed by the NAR (an AR that never drifts; codebook 0 decoded as the model's is, e.g.
    as the expectation of the AR's distribution under decode.ar_coarse=expected); `resynthesis_k<k>` = the codec decoding only
    the ground truth's first k codebooks (what the AR's target alone carries)."""
    out: dict[str, Callable[[EvalItem], np.ndarray]] = {}
    if cfg.eval.oracle:
        def gt_coarse(item: EvalItem) -> np.ndarray:
            return synth.complete(item.text, item.codes[0], prompt=item.prompt,
                                  speaker=speakers.get(item.speaker, 0), seed=utterance_seed(cfg.eval.seed, item.id))

        out["gt_coarse"] = gt_coarse
    if cfg.eval.oracle_teacher_forced:
        def tf_coarse(item: EvalItem) -> np.ndarray:
            coarse: dict[int, torch.Tensor] | None = {} if cfg.eval.decode.ar_coarse == "expected" else None
            cb0 = synth.teacher_forced_coarse(item.text, item.codes[0], prompt=item.prompt, probs_out=coarse)  # [T]
            return synth.complete(item.text, cb0, prompt=item.prompt, speaker=speakers.get(item.speaker, 0),
                                  seed=utterance_seed(cfg.eval.seed, item.id), coarse=coarse)

        out["tf_coarse"] = tf_coarse
    n_q = int(synth.nar_meta["contract"].get("n_q", 0)) or None
    for k in sorted(set(cfg.eval.oracle_stages)):
        if k < 1 or (n_q is not None and k >= n_q):
            continue  # k = n_q is the resynthesis baseline itself
        def first_k(item: EvalItem, k: int = k) -> np.ndarray:
            return synth.decode_codes(item.codes[:k].numpy(), "codec_decode_baseline")[0]  # [k, T] -> samples

        out[f"resynthesis_k{k}"] = first_k
    return out


def run_evaluate(
    cfg: HarmonicaConfig,
    workdir: Path,
    ar_ref: str,
    nar_ref: str,
    *,
    weights: str = "ema",
    progress: bool = True,
    parent_run_id: str | None = None,
    extra_tags: dict[str, str] | None = None,
    tracking_uri: str | None = None,
    run_name: str | None = None,
) -> EvaluateOutcome:
    threads_before = torch.get_num_threads()
    try:
        threads = apply_threads(cfg.eval.threads)  # fixed: the verdict must not depend on machine load
        tracker = Tracker(cfg, workdir, tracking_uri)
        return _evaluate(cfg, workdir, ar_ref, nar_ref, weights, progress, parent_run_id, extra_tags, threads,
                         tracker, run_name)
    finally:
        torch.set_num_threads(threads_before)


def _evaluate(cfg: HarmonicaConfig, workdir: Path, ar_ref: str, nar_ref: str, weights: str, progress: bool,
              parent_run_id: str | None, extra_tags: dict[str, str] | None, threads: int,
              tracker: Tracker, run_name: str | None = None) -> EvaluateOutcome:
    downloads = Path(workdir) / "downloads"
    # per-file download bars only where our own bars are drawn (a terminal, not --no-progress)
    with contextlib.nullcontext() if progress_wanted(progress) else quiet_downloads():
        ar, nar = (resolve_checkpoint(ref, tracker.tracking_uri, downloads) for ref in (ar_ref, nar_ref))
    ar_path, nar_path = ar.path, nar.path
    try:
        device = select_device(cfg.eval.device, key="eval.device")
    except RuntimeError as e:
        raise EvalError(str(e)) from e
    synth = Synthesizer(ar_path, nar_path, weights=weights, decode=cfg.eval.decode, device=str(device))  # contract checked here
    ar_run = ar.run_id or synth.ar_meta.get("run_id")
    nar_run = nar.run_id or synth.nar_meta.get("run_id")
    # the evaluated checkpoint models: what the reference named, else the model of that run and step
    ar_model = ar.model_id or model_of(tracker.tracking_uri, ar_run, synth.ar_meta.get("step"), weights)
    nar_model = nar.model_id or model_of(tracker.tracking_uri, nar_run, synth.nar_meta.get("step"), weights)
    # the eval slice of the cache the models were trained on when several fit the project
    cache, _ = find_cache(cfg, workdir, allow_mismatch=True, prefer=synth.nar_meta.get("cache_fingerprint"))
    if cache.contract["codec_fingerprint"] != synth.nar_meta["contract"]["codec_fingerprint"]:
        raise EvalError(
            f"the eval slice of project '{cfg.project}' comes from a token cache of another codec "
            f"({cache.contract['codec_fingerprint'][:12]}) than the models' "
            f"({synth.nar_meta['contract']['codec_fingerprint'][:12]}): evaluate with the project the models were trained on"
        )
    items = build_eval_slice(cache, cfg.eval, synth.prompt_frames)
    scorer = Scorer(cfg.eval)
    speakers = synth.nar_meta.get("speakers", {})

    def synthesize(item: EvalItem, seed: int) -> tuple[np.ndarray, dict[str, Any]]:
        return synth.synthesize(item.text, prompt=item.prompt, speaker=speakers.get(item.speaker, 0), seed=seed)

    tags = {
        names.AR_RUN_ID: ar_run or "",
        names.NAR_RUN_ID: nar_run or "",
        names.AR_CHECKPOINT: str(ar_path.resolve()),
        names.NAR_CHECKPOINT: str(nar_path.resolve()),
        names.AR_STEP: str(synth.ar_meta.get("step")),
        names.NAR_STEP: str(synth.nar_meta.get("step")),
        names.AR_MODEL_ID: ar_model or "",
        names.NAR_MODEL_ID: nar_model or "",
        names.WEIGHTS: weights,
        names.EVAL_SPLIT: cfg.eval.split,
        names.CACHE_FINGERPRINT: cache.fingerprint,
        names.EVAL_THREADS: str(threads),
        names.DEVICE: str(device),
        **(extra_tags or {}),
    }
    description = (
        f"Evaluation of AR run {ar_run or ar_path} (step {synth.ar_meta.get('step')}) + NAR run "
        f"{nar_run or nar_path} (step {synth.nar_meta.get('step')}), {weights} weights, on {len(items)} "
        f"held-out '{cfg.eval.split}' utterances of project '{cfg.project}', with ground-truth and codec "
        "resynthesis baselines."
    )
    # the checkpoints' steps tell apart the points of one training (a curve), the eval settings' hash
    # evaluations of one pair with other decoding, in the runs list
    name = run_name or (f"evaluate-{cfg.project}-{(ar_run or 'ar')[:6]}@{synth.ar_meta.get('step')}-"
                        f"{(nar_run or 'nar')[:6]}@{synth.nar_meta.get('step')}-{config_hash(cfg, ('eval',))[:6]}")
    with tracker.run("evaluate", name, description=description, tags=tags, parent_run_id=parent_run_id) as run, \
            tempfile.TemporaryDirectory(prefix="harmonica-eval-") as tmp:
        announce_run(run, "evaluate")
        run.log_config(cfg)
        run.set_tags({names.CONFIG_HASH: config_hash(cfg)})
        run.log_dataset(name=f"{cfg.project}-tokens", digest=cache.fingerprint, source=cache.directory,
                        context="evaluation")
        bar = partial(progress_items, progress, desc="evaluate", unit="utt")
        def resynthesize(codes: np.ndarray) -> np.ndarray:
            return synth.decode_codes(codes, "codec_decode_baseline")[0]

        result = run_suite(items, synthesize, resynthesize, scorer, synth.sample_rate,
                           Path(tmp) / "audio", write_audio, bar, oracles=oracle_sources(cfg, synth, speakers),
                           bootstrap_samples=cfg.eval.bootstrap_samples, seed=cfg.eval.seed,
                           num_seeds=cfg.eval.num_seeds)
        result.model_seconds += synth.timings.total
        result.seconds.update(synth.timings.seconds)
        run.link_models([ar_model or "", nar_model or ""])
        dataset = (f"{cfg.project}-tokens", cache.fingerprint)
        log_result(run, result, Path(tmp), [m for m in (ar_model, nar_model) if m], dataset)
        return EvaluateOutcome(result, run.run_id, tracker.tracking_uri, tracker.experiment_name)
