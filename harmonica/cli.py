"""`harmonica` command line: one command per MLproject entry point.

Commands parse options, load the layered config and call one stage runner; errors the user can fix
(config typos, missing corpora, stale caches) exit non-zero with a message that names the fix.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import click

from harmonica.cli_recovery import corpus_path, resume_hint
from harmonica.config import ConfigError, HarmonicaConfig, load_config
from harmonica.tracking import names

USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, FileNotFoundError)


def _user_errors() -> tuple[type[BaseException], ...]:
    from harmonica.data.cache import DamagedCacheError, StaleCacheError
    from harmonica.data.locks import LockWaitTimeout, WorkdirError
    from harmonica.tracking.adapter import TrackingLost, WorkdirMovedError
    from harmonica.tracking.health import TrackingUnavailable
    from harmonica.training.ckpt_check import CheckpointInvalid
    from harmonica.training.resume import ResumeRefused
    from harmonica.data.corpora import CorpusError
    from harmonica.data.preprocess import PreprocessError

    from harmonica.inference.synthesize import CheckpointError
    from harmonica.models.contract import IncompatibleModelsError
    from harmonica.tracking.refs import CheckpointRefError

    from harmonica.evaluation.asr import ASRError
    from harmonica.evaluation.speaker import SpeakerBackendError
    from harmonica.evaluation.suite import EvalError

    return (*USER_ERRORS, CorpusError, PreprocessError, StaleCacheError, CheckpointError,
            IncompatibleModelsError, CheckpointRefError, EvalError, ASRError, SpeakerBackendError,
            DamagedCacheError, LockWaitTimeout, WorkdirError, WorkdirMovedError, CheckpointInvalid, ResumeRefused,
            TrackingUnavailable, TrackingLost)


def _flag(value: str) -> bool:
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off", ""):
        return False
    raise click.BadParameter(f"expected true/false, got {value!r}")


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("alembic", "urllib3", "git", "numba", "matplotlib", "faster_whisper"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def split_overrides(items: tuple[str, ...] | list[str]) -> list[str]:
    """MLproject hands all overrides over as one string ("a.b=1 c.d=2"); split such strings.

    An item is split only when every whitespace-separated token is itself key=value, so a single
    override whose value contains spaces survives.
    """
    out: list[str] = []
    for item in items:
        tokens = item.split()
        if len(tokens) > 1 and all("=" in t for t in tokens):
            out.extend(tokens)
        elif item.strip():
            out.append(item)
    return out


def _config(project: str, overrides: tuple[str, ...], extra: list[str]) -> HarmonicaConfig:
    return load_config(project, [*extra, *split_overrides(overrides)])


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="debug logging")
def main(verbose: bool) -> None:
    """harmonica: VALL-E-style TTS training with every run tracked in MLflow."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    _setup_logging(verbose)


@main.command()
@click.option("--project", "-p", default="demo", show_default=True, help="projects/<name>.yaml or a yaml path")
@click.option("--corpus", "corpus_dir", type=click.Path(), default=None, help="corpus root (default: data.corpus_dir)")
@click.option("--format", "corpus_format", type=click.Choice(["demo", "demo_generated", "ljspeech", "vctk"]), default=None)
@click.option("--workdir", type=click.Path(file_okay=False), default=".", show_default=True,
              help="holds mlflow.db, mlartifacts/ and cache/ on the embedded default")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="parallel encoding processes (data.workers)")
@click.option("--no-progress", is_flag=True, help="no progress bars")
@click.argument("overrides", nargs=-1)
def preprocess(
    project: str,
    corpus_dir: str | None,
    corpus_format: str | None,
    workdir: str,
    workers: int | None,
    no_progress: bool,
    overrides: tuple[str, ...],
) -> None:
    """Scan a corpus, filter it, fit/encode the codec and write the token cache.

    OVERRIDES are key.path=value pairs applied last, e.g. codec.n_q=4 data.max_duration=8.
    """
    from harmonica.stages.preprocess import run_preprocess

    extra = []
    if corpus_dir:
        extra.append(f"data.corpus_dir={corpus_path(corpus_dir)}")
    if corpus_format:
        extra.append(f"data.corpus_format={corpus_format}")
    if workers is not None:
        extra.append(f"data.workers={workers}")
    try:
        cfg = _config(project, overrides, extra)
        if cfg.data.corpus_dir and not Path(cfg.data.corpus_dir).exists():
            raise FileNotFoundError(f"corpus directory {cfg.data.corpus_dir} does not exist (--corpus)")
        out = run_preprocess(cfg, Path(workdir), progress=not no_progress)
    except _user_errors() as exc:
        raise click.ClickException(str(exc)) from None
    res = out.result
    c = res.cache.contract
    click.echo("")
    click.echo(f"preprocess {'reused the cache' if res.reused else 'built a new cache'}: {res.cache.directory}")
    click.echo(f"  fingerprint   {res.cache.fingerprint}")
    click.echo(f"  codec         {c['codec_name']} n_q={c['n_q']} codebook={c['codebook_size']} "
               f"{c['frame_rate']:g} Hz pretrained={str(res.codec_pretrained).lower()}")
    for split, stats in sorted(res.cache.meta["splits"].items()):
        click.echo(f"  {split:<6}        {stats['utterances']:>5} utterances {stats['seconds']:>8.1f} s")
    rejected = {k: v for k, v in res.counts.items() if k not in ("total", "kept", "rejected")}
    click.echo(f"  quality       kept {res.counts.get('kept', 0)} / {res.counts.get('total', 0)}; rejected: "
               + (", ".join(f"{k}={v}" for k, v in rejected.items()) or "none"))
    click.echo(f"  mlflow run    {out.run_id} in experiment '{out.experiment}' ({out.tracking_uri})")


@main.command()
@click.option("--model-type", "kind", type=click.Choice(["ar", "nar"]), required=True)
@click.option("--project", "-p", default="demo", show_default=True)
@click.option("--workdir", type=click.Path(file_okay=False), default=".", show_default=True)
@click.option("--resume", is_flag=True, help="continue the latest run of this project/model type from its newest "
              "valid checkpoint (damaged ones are skipped and named)")
@click.option("--resume-from", default=None, metavar="STEP|PATH",
              help="resume from this step of the latest run, or from this checkpoint directory")
@click.option("--accept-config-change", is_flag=True,
              help="resume although the config differs from the checkpoint's (recorded as a tag and config.resume-<n>.yaml)")
@click.option("--allow-cache-mismatch", is_flag=True,
              help="train on a token cache built with other settings (recorded as a tag)")
# MLproject parameters are strings: these carry --resume / --allow-cache-mismatch as true|false
@click.option("--resume-if", default="false", hidden=True)
@click.option("--allow-cache-mismatch-if", default="false", hidden=True)
@click.argument("overrides", nargs=-1)
def train(kind: str, project: str, workdir: str, resume: bool, resume_from: str | None, accept_config_change: bool,
          allow_cache_mismatch: bool, resume_if: str, allow_cache_mismatch_if: str, overrides: tuple[str, ...]) -> None:
    """Train the AR (text -> first codebook) or the NAR (remaining codebooks).

    Uses the `training.<model-type>` and `model.<model-type>` blocks; OVERRIDES are key.path=value.
    Launch with `torchrun --nproc-per-node N` for data-parallel training.
    """
    from harmonica.stages.train import run_train

    cfg = None
    try:
        cfg = _config(project, overrides, [])
        out = run_train(cfg, kind, Path(workdir), resume=resume or _flag(resume_if), resume_from=resume_from,
                        accept_config_change=accept_config_change,
                        allow_cache_mismatch=allow_cache_mismatch or _flag(allow_cache_mismatch_if))
    except _user_errors() as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        click.echo(resume_hint(kind, project, cfg.project if cfg else project, workdir, overrides), err=True)
        sys.exit(130)
    if not out.run_id or not out.tracking_uri:
        return  # a DDP rank > 0: rank 0 reports
    st = out.result.state
    m = out.result.final_metrics
    click.echo("")
    click.echo(f"train_{kind} finished: {st.step} steps ({st.stop_reason or 'completed'})")
    for key in ("val_ema/loss", "val/loss", f"{kind}/util_pred_median", "val/util_pred_median"):
        if key in m:
            click.echo(f"  {key:<26} {m[key]:.4f}")
    click.echo(f"  collapse events            {len(st.collapse_events)}")
    click.echo(f"  best checkpoint            {out.result.best_checkpoint} (step {st.best_step})")
    click.echo(f"  mlflow run                 {out.run_id} in '{out.experiment}' ({out.tracking_uri})")


@main.command()
@click.argument("run_id")
@click.option("--project", "-p", default="demo", show_default=True, help="for tracking settings")
@click.option("--workdir", type=click.Path(file_okay=False), default=".", show_default=True)
def sync(run_id: str, project: str, workdir: str) -> None:
    """Send what a run kept in its local spool while the tracking server was away."""
    from mlflow.tracking import MlflowClient

    from harmonica.tracking.adapter import resolve_tracking_uri
    from harmonica.tracking.health import bound_requests, check_server, is_server
    from harmonica.tracking.spool import find_spool

    try:
        cfg = _config(project, (), [])
        spool = find_spool(Path(workdir), run_id)
        if spool is None or not spool.pending:
            click.echo(f"run {run_id}: nothing to send (no pending spool under {Path(workdir).resolve()})")
            return
        uri = resolve_tracking_uri(cfg.tracking, Path(workdir))
        if is_server(uri):
            bound_requests(cfg.tracking.request_timeout, cfg.tracking.request_retries)
            check_server(uri, cfg.tracking.health_timeout)
        sent = spool.replay(MlflowClient(uri), run_id)
    except _user_errors() as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"run {run_id}: sent {sent} spooled operations to {uri}; the spool {spool.directory} is empty")


def resolve_refs(cfg: HarmonicaConfig, workdir: Path, *refs: str) -> list[tuple[Path, str | None]]:
    from harmonica.tracking.adapter import resolve_tracking_uri
    from harmonica.tracking.refs import resolve_checkpoint

    uri = resolve_tracking_uri(cfg.tracking, workdir)
    return [resolve_checkpoint(ref, uri, workdir / "downloads") for ref in refs]


@main.command()
@click.option("--ar", "ar_ref", required=True, help="AR checkpoint dir, MLflow run id or runs:/ URI")
@click.option("--nar", "nar_ref", required=True, help="NAR checkpoint dir, MLflow run id or runs:/ URI")
@click.option("--text", required=True)
@click.option("--prompt-wav", type=click.Path(exists=True, dir_okay=False), default=None,
              help="a few seconds of the target voice (NAR speaker_condition=prompt)")
@click.option("--speaker", type=int, default=None, help="speaker index (NAR speaker_condition=embedding)")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), required=True)
@click.option("--weights", type=click.Choice(["ema", "raw"]), default="ema", show_default=True)
@click.option("--project", "-p", default="demo", show_default=True, help="for eval.decode.* and tracking settings")
@click.option("--workdir", type=click.Path(file_okay=False), default=".", show_default=True)
@click.option("--seed", type=int, default=0)
@click.argument("overrides", nargs=-1)
def synthesize(ar_ref: str, nar_ref: str, text: str, prompt_wav: str | None, speaker: int | None, out_path: str,
               weights: str, project: str, workdir: str, seed: int, overrides: tuple[str, ...]) -> None:
    """Text -> wav with an AR + NAR pair (checked for compatibility first)."""
    from harmonica.data.audio import write_audio
    from harmonica.inference.synthesize import Synthesizer

    try:
        cfg = _config(project, overrides, [])
        (ar_path, _), (nar_path, _) = resolve_refs(cfg, Path(workdir), ar_ref, nar_ref)
        synth = Synthesizer(ar_path, nar_path, weights=weights, decode=cfg.eval.decode)
        prompt = synth.prompt_from_wav(prompt_wav) if prompt_wav else None
        if synth.speaker_condition == "prompt" and prompt is None:
            raise click.UsageError("this NAR is conditioned on an acoustic prompt: pass --prompt-wav FILE "
                                   "(a few seconds of the target voice)")
        wav, info = synth.synthesize(text, prompt=prompt, speaker=speaker, seed=seed)
    except _user_errors() as exc:
        raise click.ClickException(str(exc)) from None
    if wav.size == 0:
        raise click.ClickException("the AR stopped at once: no audio (try another seed or a later checkpoint)")
    write_audio(out_path, wav, synth.sample_rate)
    click.echo(f"wrote {out_path}: {wav.size / synth.sample_rate:.2f} s at {synth.sample_rate} Hz "
               f"({int(info['ar_frames'])} frames; length bound hit: {bool(info['ar_hit_length_bound'])}, "
               f"loop cut: {bool(info['ar_loop_cut'])}; peak ceiling gain {info['gain_db']:+.2f} dB)")


@main.command()
@click.option("--project", "-p", default="demo", show_default=True)
@click.option("--ar", "ar_ref", required=True, help="AR checkpoint dir, MLflow run id or runs:/ URI")
@click.option("--nar", "nar_ref", required=True, help="NAR checkpoint dir, MLflow run id or runs:/ URI")
@click.option("--weights", type=click.Choice(["ema", "raw"]), default="ema", show_default=True)
@click.option("--workdir", type=click.Path(file_okay=False), default=".", show_default=True)
@click.option("--no-progress", is_flag=True)
@click.argument("overrides", nargs=-1)
def evaluate(project: str, ar_ref: str, nar_ref: str, weights: str, workdir: str, no_progress: bool,
             overrides: tuple[str, ...]) -> None:
    """WER/CER, speaker similarity, failure rates and prosody on the project's held-out eval slice,
    next to ground-truth and codec-resynthesis baselines."""
    from harmonica.stages.evaluate import run_evaluate

    try:
        cfg = _config(project, overrides, [])
        out = run_evaluate(cfg, Path(workdir), ar_ref, nar_ref, weights=weights, progress=not no_progress)
    except _user_errors() as exc:
        raise click.ClickException(str(exc)) from None
    m = out.result.metrics
    click.echo("")
    seeds = int(m.get("eval/num_seeds", 1))
    click.echo(f"evaluate: {int(m['eval/utterances'])} utterances{f' x {seeds} seeds' if seeds > 1 else ''} "
               f"({weights} weights); peak ceiling attenuated {m['eval/peak_limited_rate']:.0%} of the outputs "
               f"(mean gain {m['eval/peak_gain_db_mean']:+.2f} dB)")
    from harmonica.reports.decomposition import columns, with_interval

    cells = ("wer", "cer", "sim", "fail/any")  # value [95% bootstrap interval over utterances]
    click.echo(f"  {'':<30}" + "".join(f"{c.upper().replace('FAIL/ANY', 'FAIL'):>22}" for c in cells))
    for label, prefix in columns(m):
        click.echo(f"  {label:<30}" + "".join(f"{with_interval(m, f'{prefix}/{c}') or '—':>22}" for c in cells))
    click.echo(f"  mlflow run    {out.run_id} in '{out.experiment}' ({out.tracking_uri})")


@main.command()
@click.option("--project", "-p", default="demo", show_default=True)
@click.option("--workdir", type=click.Path(file_okay=False), default=".", show_default=True)
@click.option("--force", is_flag=True, help="re-run every step even when an identical run already finished")
@click.option("--allow-dirty", is_flag=True, help="let promote register models trained from a dirty/unknown tree")
@click.option("--no-progress", is_flag=True)
@click.argument("overrides", nargs=-1)
def pipeline(project: str, workdir: str, force: bool, allow_dirty: bool, no_progress: bool,
             overrides: tuple[str, ...]) -> None:
    """preprocess -> train_ar -> train_nar -> evaluate -> promote, each step its own run under one parent."""
    from harmonica.registry.promote import PromotionRefused
    from harmonica.stages.pipeline import run_pipeline
    from harmonica.stages.promote import run_promote

    decisions = []

    def promote_step(evaluation_run_id: str, cfg: HarmonicaConfig, wd: Path, parent_run_id: str,
                     tags: dict[str, str]) -> tuple[str, dict]:
        try:
            d = run_promote(evaluation_run_id, wd, cfg=cfg, allow_dirty=allow_dirty, extra_tags=tags,
                            parent_run_id=parent_run_id)
        except PromotionRefused as exc:
            d = exc.decision
        decisions.append(d)
        return d.promote_run_id or "", {"decision": d.decision, "version": d.version}

    try:
        cfg = _config(project, overrides, [])
        out = run_pipeline(cfg, Path(workdir), force=force, progress=not no_progress, promote=promote_step)
    except _registry_errors() as exc:
        raise click.ClickException(str(exc)) from None
    click.echo("")
    click.echo(f"pipeline finished: parent run {out.parent_run_id} in '{out.experiment}'")
    for step in out.steps:
        click.echo(f"  {step.name:<11} {'reused' if step.skipped else 'ran   '} run {step.run_id}")
    for d in decisions:
        click.echo("")
        click.echo(d.text())
    champion = next((d.champion_version for d in decisions if d.champion_version), None)
    click.echo("")
    click.echo(f"champion:     {f'harmonica-tts v{champion} (models:/harmonica-tts@champion)' if champion else 'none yet'}")
    click.echo(f"report:       {out.report}   (logged as report/report.html on the evaluate and pipeline runs)")
    db = Path(workdir).resolve() / "mlflow.db"
    if out.tracking_uri.startswith("sqlite:"):
        click.echo(f"look at it:   mlflow ui --backend-store-uri sqlite:///{db}   (http://127.0.0.1:5000)")
    else:
        click.echo(f"look at it:   {out.tracking_uri}")


@main.command()
@click.argument("run_id")
@click.option("--baseline", "baseline_run_id", default=None,
              help="run to diff the config against (default: the previous finished run of the same stage)")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="output directory (default: <workdir>/outputs/reports/<run id>)")
@click.option("--no-log", is_flag=True, help="do not log report/report.md and report/report.html to the run")
@click.option("--project", "-p", default="demo", show_default=True, help="for tracking settings")
@click.option("--workdir", type=click.Path(file_okay=False), default=".", show_default=True)
def report(run_id: str, baseline_run_id: str | None, out_dir: str | None, no_log: bool, project: str,
           workdir: str) -> None:
    """Markdown + self-contained HTML report of a run: config diff vs a baseline, key curves, best
    checkpoint, eval summary with audio, collapse events and failure reasons; logged to the run."""
    from harmonica.reports import ReportError, build_report
    from harmonica.tracking.adapter import resolve_tracking_uri

    try:
        cfg = _config(project, (), [])
        uri = resolve_tracking_uri(cfg.tracking, Path(workdir))
        out = Path(out_dir) if out_dir else Path(workdir) / "outputs" / "reports" / run_id
        paths = build_report(run_id, tracking_uri=uri, baseline_run_id=baseline_run_id, out_dir=out,
                             log_to_run=not no_log)
    except (*_user_errors(), ReportError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"report of run {run_id}" + (f" (baseline {paths.baseline_run_id})" if paths.baseline_run_id else ""))
    click.echo(f"  markdown  {paths.markdown}")
    click.echo(f"  html      {paths.html}")
    if paths.logged:
        click.echo(f"  logged    runs:/{run_id}/report/ ({uri})")


@main.command()
@click.argument("run_ids", nargs=-1, required=True)
@click.option("--project", "-p", default="demo", show_default=True, help="for tracking settings")
@click.option("--workdir", type=click.Path(file_okay=False), default=".", show_default=True)
@click.option("--width", type=click.IntRange(8, 200), default=24, show_default=True,
              help="column width; longer values are cut with …")
def compare(run_ids: tuple[str, ...], project: str, workdir: str, width: int) -> None:
    """The params (identical ones hidden), key metrics and code-version tags of two or more runs, side by side."""
    from harmonica.reports import ReportError, compare_runs, format_table
    from harmonica.tracking.adapter import resolve_tracking_uri

    if len(run_ids) < 2:
        raise click.UsageError("compare needs at least two run ids")
    try:
        cfg = _config(project, (), [])
        result = compare_runs(list(run_ids), tracking_uri=resolve_tracking_uri(cfg.tracking, Path(workdir)))
    except (*_user_errors(), ReportError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(format_table(result, col_width=width), nl=False)


def _registry_errors() -> tuple[type[BaseException], ...]:
    from harmonica.registry.cli_ops import RegistryError
    from harmonica.tracking.lock import LockTimeout
    from harmonica.registry.promote import PromotionError

    return (*_user_errors(), PromotionError, RegistryError, LockTimeout)


@main.command()
@click.option("--evaluation", "evaluation_run_id", required=True, help="run id of a `harmonica evaluate` run")
@click.option("--allow-dirty", is_flag=True,
              help="promote although the training/evaluate runs come from a dirty or unknown git tree (recorded)")
@click.option("--allow-dirty-if", default="false", hidden=True)  # MLproject parameters are strings
@click.option("--allow-unfinished", is_flag=True,
              help="promote checkpoints of training runs that are not FINISHED (recorded on the version)")
@click.option("--allow-mixed-pair", is_flag=True,
              help="promote an AR and a NAR from different projects / data settings (recorded on the version)")
@click.option("--model-name", default="harmonica-tts", show_default=True, help="registered model name")
@click.option("--project", "-p", default=None, help="config whose gates apply (default: the evaluate run's project)")
@click.option("--workdir", type=click.Path(file_okay=False), default=".", show_default=True)
@click.argument("overrides", nargs=-1)
def promote(evaluation_run_id: str, allow_dirty: bool, allow_dirty_if: str, allow_unfinished: bool,
            allow_mixed_pair: bool, model_name: str, project: str | None, workdir: str,
            overrides: tuple[str, ...]) -> None:
    """Check the AR/NAR contract and code provenance of an evaluated pair, apply the gates of
    mlruns_config/gates.yaml and register it (alias `candidate`); `champion` moves only when every
    gate passes and the primary metric beats the current champion.

    OVERRIDES are key.path=value pairs, e.g. gates.max_wer.threshold=0.3. Exit status 1 = refused
    (contract, provenance); a candidate that fails gates is registered and exits 0.
    """
    from harmonica.registry.promote import PromotionRefused
    from harmonica.stages.promote import run_promote

    try:
        decision = run_promote(evaluation_run_id, Path(workdir), allow_dirty=allow_dirty or _flag(allow_dirty_if),
                               model_name=model_name, project=project, overrides=split_overrides(overrides),
                               allow_unfinished=allow_unfinished, allow_mixed_pair=allow_mixed_pair)
    except PromotionRefused as exc:
        d = exc.decision
        raise click.ClickException(f"{d.text()}\n(recorded on promote run {d.promote_run_id})") from None
    except _registry_errors() as exc:
        raise click.ClickException(str(exc)) from None
    click.echo("")
    click.echo(decision.text())
    run = f"; promote run {decision.promote_run_id}" if decision.promote_run_id else ""
    champion = f"v{decision.champion_version}" if decision.champion_version else "none"
    click.echo(f"  registry      {decision.model_name} v{decision.version}, champion {champion}{run} "
               f"({decision.tracking_uri})")


@main.group()
def registry() -> None:
    """List, inspect and roll back versions of the registered TTS model."""


def _registry_uri(workdir: str, project: str | None) -> str:
    from harmonica.stages.promote import registry_uri

    return registry_uri(Path(workdir), project)


_registry_opts = [
    click.option("--model-name", default="harmonica-tts", show_default=True),
    click.option("--project", "-p", default=None, help="only for tracking settings (tracking.yaml / project yaml)"),
    click.option("--workdir", type=click.Path(file_okay=False), default=".", show_default=True),
]


def _with_registry_opts(fn):  # noqa: ANN001,ANN202
    for opt in reversed(_registry_opts):
        fn = opt(fn)
    return fn


@registry.command("list")
@_with_registry_opts
def registry_list(model_name: str, project: str | None, workdir: str) -> None:
    """All versions, newest first: aliases, decision, gates, primary metric, code."""
    from harmonica.registry.cli_ops import list_versions

    try:
        rows = list_versions(model_name, tracking_uri=_registry_uri(workdir, project))
    except _registry_errors() as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{'version':>7}  {'aliases':<20} {'decision':<14} {'gates':<26} {'primary':<16} {'code':<26} created")
    for r in rows:
        gates = "pass" if r["gates_passed"] == "true" else f"FAIL {r['failing_gates']}"
        primary = f"{r['primary_metric'].split('/')[-1]}={r['primary_value'][:8]}"
        decision = r["decision"] + (f"->v{r['superseded_by']}" if r["superseded_by"] else "")
        click.echo(f"{r['version']:>7}  {','.join(r['aliases']) or '-':<20} {decision:<14} {gates:<26} "
                   f"{primary:<16} {r['code']:<26} {r['created']}")


@registry.command("show")
@click.argument("version")
@_with_registry_opts
def registry_show(version: str, model_name: str, project: str | None, workdir: str) -> None:
    """One version (a number or an alias such as champion): decision, gates, provenance, tags."""
    from harmonica.registry.cli_ops import show_version

    try:
        info = show_version(model_name, version, tracking_uri=_registry_uri(workdir, project))
    except _registry_errors() as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{info['name']} v{info['version']}  aliases: {', '.join(info['aliases']) or '-'}  ({info['uri']})")
    click.echo(f"  created {info['created']}  status {info['status']}  run {info['run_id']}")
    click.echo("")
    click.echo(info["description"])
    click.echo("")
    for key, value in info["tags"].items():
        if not key.startswith("gate.") and key != names.DECISION_REASONS:
            click.echo(f"  {key:<34} {value}")


@registry.command("rollback")
@click.option("--to", "to_version", required=True, help="the earlier version (number or alias) to serve again")
@click.option("--reason", required=True, help="why (recorded on the version and in the champion history)")
@click.option("--force", is_flag=True, help="also to a version that failed its gates or is not earlier")
@_with_registry_opts
def registry_rollback(to_version: str, reason: str, force: bool, model_name: str, project: str | None,
                      workdir: str) -> None:
    """Move the `champion` alias back to an earlier version and record why."""
    from harmonica.registry.cli_ops import rollback

    try:
        result = rollback(model_name, to_version, reason, tracking_uri=_registry_uri(workdir, project), force=force)
    except _registry_errors() as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(result.message)


@main.command()
@click.option("--project", "-p", default="demo", show_default=True)
@click.option("--space", "space_path", required=True, help="projects/sweeps/FILE.yaml: knobs, ranges, objective")
@click.option("--n-trials", type=int, default=None, help="the study's total trials (all workers, all launches)")
@click.option("--study", "study_name", default=None, help="study name (default: derived from project + space)")
@click.option("--storage", default=None, help="Optuna RDB URL (default: sqlite:///<workdir>/optuna.db)")
@click.option("--workdir", type=click.Path(file_okay=False), default=".", show_default=True)
@click.argument("overrides", nargs=-1)
def sweep(project: str, space_path: str, n_trials: int | None, study_name: str | None, storage: str | None,
          workdir: str, overrides: tuple[str, ...]) -> None:
    """Optuna study over the anti-collapse knobs: one nested MLflow run per trial, pruning at
    validation steps, plots and the best trial's config on the parent run. Several workers (on
    several machines) join one study through the same --study and --storage."""
    from harmonica.stages.sweep import run_sweep

    try:
        cfg = _config(project, overrides, [])
        out = run_sweep(cfg, Path(workdir), space_path, n_trials, study_name, storage)
    except (*_user_errors(), TimeoutError) as exc:  # e.g. the study's storage lock was never released
        raise click.ClickException(str(exc)) from None
    click.echo("")
    click.echo(f"sweep '{out.study_name}' ({out.storage}): {out.counts}")
    if out.best_trial is not None:
        click.echo(f"  best trial    #{out.best_trial} values {out.best_values} (feasible: {out.best_feasible}) "
                   f"run {out.best_run_id}")
    if out.best_config:
        click.echo(f"  best config   {out.best_config}")
    for note in out.notes:
        click.echo(f"  note          {note}")
    click.echo(f"  mlflow run    {out.parent_run_id} in '{out.experiment}' ({out.tracking_uri})")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
