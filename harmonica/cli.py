"""`harmonica` command line: one command per MLproject entry point.

Commands parse options, load the layered config once and call one stage runner; what they print
comes from cli_text, the shared options and user-facing errors from cli_support.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from harmonica import cli_text as text
from harmonica import interrupts
from harmonica.cli_recovery import corpus_path, resume_hint
from harmonica.cli_support import (config, echo, flag, no_progress_option, options, overrides_argument,
                                   progress_on, project_option, registry_errors, report_errors, setup_logging,
                                   split_overrides, tracking_uri, user_errors, user_facing, workdir_option)
pair_options = options(
    click.option("--ar", "ar_ref", required=True, help="AR checkpoint dir, MLflow run id (or a unique prefix / run name) or runs:/ URI"),
    click.option("--nar", "nar_ref", required=True, help="NAR checkpoint dir, MLflow run id (or a unique prefix / run name) or runs:/ URI"),
    click.option("--weights", type=click.Choice(["ema", "raw"]), default="ema", show_default=True),
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="harmonica", message="%(prog)s %(version)s")
@click.option("-v", "--verbose", is_flag=True, help="debug logging")
def main(verbose: bool) -> None:
    """harmonica: VALL-E-style TTS training with every run tracked in MLflow."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    setup_logging(verbose)
    interrupts.install()


@main.command()
@project_option()
@click.option("--corpus", "corpus_dir", type=click.Path(), default=None, help="corpus root (default: data.corpus_dir)")
@click.option("--format", "corpus_format", type=click.Choice(["demo", "demo_generated", "ljspeech", "vctk"]), default=None)
@workdir_option
@click.option("--workers", type=click.IntRange(min=1), default=None, help="parallel encoding processes (data.workers)")
@no_progress_option
@overrides_argument
def preprocess(project: str, corpus_dir: str | None, corpus_format: str | None, workdir: str, workers: int | None,
               no_progress: bool, overrides: tuple[str, ...]) -> None:
    """Scan a corpus, filter it, fit/encode the codec and write the token cache.

    OVERRIDES are key.path=value pairs applied last, e.g. codec.n_q=4 data.max_duration=8.
    """
    from harmonica.stages.preprocess import run_preprocess

    extra = [f"data.corpus_dir={corpus_path(corpus_dir)}"] if corpus_dir else []
    extra += [f"data.corpus_format={corpus_format}"] if corpus_format else []
    extra += [f"data.workers={workers}"] if workers is not None else []
    with user_facing():
        cfg = config(project, overrides, extra)
        if cfg.data.corpus_dir and not Path(cfg.data.corpus_dir).exists():
            raise FileNotFoundError(f"corpus directory {cfg.data.corpus_dir} does not exist (--corpus)")
        out = run_preprocess(cfg, Path(workdir), progress=progress_on(no_progress))
    echo(text.preprocess_summary(out))


@main.command()
@click.option("--model-type", "kind", type=click.Choice(["ar", "nar"]), required=True)
@project_option()
@workdir_option
@click.option("--resume", is_flag=True, help="continue the latest run of this project/model type from its newest "
              "valid checkpoint (damaged ones are skipped and named)")
@click.option("--resume-from", default=None, metavar="STEP|PATH",
              help="resume from this step of the latest run, or from this checkpoint directory")
@click.option("--accept-config-change", is_flag=True,
              help="resume although the config differs from the checkpoint's (recorded as a tag and config.resume-<n>.yaml)")
@click.option("--allow-cache-mismatch", is_flag=True,
              help="train on a token cache built with other settings (recorded as a tag)")
@click.option("--run-name", default=None, help="the MLflow run's name (default train_<model-type>-<project>-<config "
              "hash>); a resumed run keeps its own")
# MLproject parameters are strings: these carry --resume / --allow-cache-mismatch as true|false
@click.option("--resume-if", default="false", hidden=True)
@click.option("--allow-cache-mismatch-if", default="false", hidden=True)
@no_progress_option
@overrides_argument
def train(kind: str, project: str, workdir: str, resume: bool, resume_from: str | None, accept_config_change: bool,
          allow_cache_mismatch: bool, run_name: str | None, resume_if: str, allow_cache_mismatch_if: str,
          no_progress: bool, overrides: tuple[str, ...]) -> None:
    """Train the AR (text -> first codebook) or the NAR (remaining codebooks).

    Uses the `training.<model-type>` and `model.<model-type>` blocks; OVERRIDES are key.path=value.
    Launch with `torchrun --nproc-per-node N` for data-parallel training.
    """
    from harmonica.stages.train import run_train

    cfg = None
    try:
        with user_facing():
            cfg = config(project, overrides)
            out = run_train(cfg, kind, Path(workdir), resume=resume or flag(resume_if), resume_from=resume_from,
                            accept_config_change=accept_config_change,
                            allow_cache_mismatch=allow_cache_mismatch or flag(allow_cache_mismatch_if),
                            run_name=run_name, progress=progress_on(no_progress))
    except KeyboardInterrupt as exc:
        click.echo(resume_hint(kind, project, cfg.project if cfg else project, workdir, overrides), err=True)
        sys.exit(143 if isinstance(exc, interrupts.Terminated) else 130)
    if out.run_id and out.tracking_uri:  # a DDP rank > 0 has nothing to say: rank 0 reports
        echo(text.train_summary(kind, out))


@main.command()
@click.argument("run_id")
@project_option(help="for tracking settings")
@workdir_option
def sync(run_id: str, project: str, workdir: str) -> None:
    """Send what a run kept in its local spool while the tracking server was away."""
    from harmonica.tracking.spool import sync_run

    with user_facing():
        cfg = config(project, ())
        uri = tracking_uri(cfg, workdir)
        result = sync_run(cfg.tracking, uri, Path(workdir), run_id)
    if result.spool is None:
        click.echo(f"run {run_id}: nothing to send (no pending spool under {Path(workdir).resolve()})")
    else:
        click.echo(f"run {run_id}: sent {result.sent} spooled operations to {uri}; the spool {result.spool} is empty")


@main.command()
@pair_options
@click.option("--text", "sentence", required=True)
@click.option("--prompt-wav", type=click.Path(exists=True, dir_okay=False), default=None,
              help="a few seconds of the target voice (speaker_condition=prompt, AR or NAR)")
@click.option("--speaker", type=int, default=None, help="speaker index (NAR speaker_condition=embedding)")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), required=True)
@project_option(help="for eval.decode.* and tracking settings")
@workdir_option
@click.option("--seed", type=int, default=0)
@no_progress_option
@overrides_argument
def synthesize(ar_ref: str, nar_ref: str, weights: str, sentence: str, prompt_wav: str | None, speaker: int | None,
               out_path: str, project: str, workdir: str, seed: int, no_progress: bool,
               overrides: tuple[str, ...]) -> None:
    """Text -> wav with an AR + NAR pair (checked for compatibility first)."""
    from harmonica.stages.synthesize import run_synthesize

    with user_facing():
        out = run_synthesize(config(project, overrides), Path(workdir), ar_ref, nar_ref, sentence, Path(out_path),
                             prompt_wav=prompt_wav, speaker=speaker, weights=weights, seed=seed,
                             progress=progress_on(no_progress))
    click.echo(out.summary())


@main.command()
@project_option()
@pair_options
@workdir_option
@click.option("--run-name", default=None, help="the MLflow run's name (default evaluate-<project>-<AR run>-<NAR "
              "run>-<hash of the eval settings>)")
@no_progress_option
@overrides_argument
def evaluate(project: str, ar_ref: str, nar_ref: str, weights: str, workdir: str, run_name: str | None,
             no_progress: bool, overrides: tuple[str, ...]) -> None:
    """WER/CER, speaker similarity, failure rates and prosody on the project's held-out eval slice,
    next to ground-truth and codec-resynthesis baselines."""
    from harmonica.stages.evaluate import run_evaluate

    with user_facing():
        out = run_evaluate(config(project, overrides), Path(workdir), ar_ref, nar_ref, weights=weights,
                           progress=progress_on(no_progress), run_name=run_name)
    echo(text.evaluate_summary(out, weights))


@main.command()
@project_option()
@workdir_option
@click.option("--force", is_flag=True, help="re-run every step even when an identical run already finished")
@click.option("--allow-dirty", is_flag=True, help="let promote register models trained from a dirty/unknown tree")
@no_progress_option
@overrides_argument
def pipeline(project: str, workdir: str, force: bool, allow_dirty: bool, no_progress: bool,
             overrides: tuple[str, ...]) -> None:
    """preprocess -> train_ar -> train_nar -> evaluate -> promote, each step its own run under one parent."""
    from harmonica.stages.pipeline import run_pipeline

    with user_facing(registry_errors):
        out = run_pipeline(config(project, overrides), Path(workdir), force=force, progress=progress_on(no_progress),
                           allow_dirty=allow_dirty)
    echo(text.pipeline_summary(out, Path(workdir)))


@main.command()
@click.argument("run_id")
@click.option("--baseline", "baseline_run_id", default=None,
              help="run to diff the config against (default: the previous finished run of the same stage)")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="output directory (default: <workdir>/outputs/reports/<run id>)")
@click.option("--no-log", is_flag=True, help="do not log report/report.md and report/report.html to the run")
@project_option(help="for tracking settings")
@workdir_option
def report(run_id: str, baseline_run_id: str | None, out_dir: str | None, no_log: bool, project: str,
           workdir: str) -> None:
    """Markdown + self-contained HTML report of a run: config diff vs a baseline, key curves, best
    checkpoint, eval summary with audio, collapse events and failure reasons; logged to the run."""
    from harmonica.reports import build_report
    from harmonica.reports.common import resolve_run_id

    with user_facing(report_errors):
        uri = tracking_uri(config(project, ()), workdir)
        run_id = resolve_run_id(uri, run_id)  # outputs/reports/<full id>, whatever named the run
        out = Path(out_dir) if out_dir else Path(workdir) / "outputs" / "reports" / run_id
        paths = build_report(run_id, tracking_uri=uri, baseline_run_id=baseline_run_id, out_dir=out,
                             log_to_run=not no_log)
    echo(text.report_summary(run_id, paths, uri))


@main.command()
@click.argument("run_ids", nargs=-1, required=True)
@project_option(help="for tracking settings")
@workdir_option
@click.option("--width", type=click.IntRange(8, 200), default=24, show_default=True,
              help="column width; longer values are cut with …")
def compare(run_ids: tuple[str, ...], project: str, workdir: str, width: int) -> None:
    """The params (identical ones hidden), key metrics and code-version tags of two or more runs, side by side;
    evaluate runs also paired with the first (differences with 95% intervals). A run: its id, a unique id
    prefix or its run name."""
    from harmonica.reports import compare_runs, format_table

    if len(run_ids) < 2:
        raise click.UsageError("compare needs at least two run ids")
    with user_facing(report_errors):
        result = compare_runs(list(run_ids), tracking_uri=tracking_uri(config(project, ()), workdir))
    click.echo(format_table(result, col_width=width), nl=False)


@main.command()
@click.option("--evaluation", "evaluation_run_id", required=True, help="run id of a `harmonica evaluate` run (or a unique prefix / run name)")
@click.option("--allow-dirty", is_flag=True,
              help="promote although the training/evaluate runs come from a dirty or unknown git tree (recorded)")
@click.option("--allow-dirty-if", default="false", hidden=True)  # MLproject parameters are strings
@click.option("--allow-unfinished", is_flag=True,
              help="promote checkpoints of training runs that are not FINISHED (recorded on the version)")
@click.option("--allow-mixed-pair", is_flag=True,
              help="promote an AR and a NAR from different projects / data settings (recorded on the version)")
@click.option("--model-name", default="harmonica-tts", show_default=True, help="registered model name")
@project_option(default=None, help="config whose gates apply (default: the evaluate run's project)")
@workdir_option
@overrides_argument
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
        with user_facing(registry_errors):
            decision = run_promote(evaluation_run_id, Path(workdir), allow_dirty=allow_dirty or flag(allow_dirty_if),
                                   model_name=model_name, project=project, overrides=split_overrides(overrides),
                                   allow_unfinished=allow_unfinished, allow_mixed_pair=allow_mixed_pair)
    except PromotionRefused as exc:
        d = exc.decision
        raise click.ClickException(f"{d.text()}\n(recorded on promote run {d.promote_run_id})") from None
    echo(text.promote_summary(decision))


@main.group()
def registry() -> None:
    """List, inspect and roll back versions of the registered TTS model."""


def _registry_uri(workdir: str, project: str | None) -> str:
    return tracking_uri(config(project or "base", ()), workdir)


registry_options = options(
    click.option("--model-name", default="harmonica-tts", show_default=True),
    project_option(default=None, help="only for tracking settings (tracking.yaml / project yaml)"),
    workdir_option,
)


@registry.command("list")
@registry_options
def registry_list(model_name: str, project: str | None, workdir: str) -> None:
    """All versions, newest first: aliases, decision, gates, primary metric, code."""
    from harmonica.registry.cli_ops import list_versions

    with user_facing(registry_errors):
        rows = list_versions(model_name, tracking_uri=_registry_uri(workdir, project))
    echo(text.registry_table(rows))


@registry.command("show")
@click.argument("version")
@registry_options
def registry_show(version: str, model_name: str, project: str | None, workdir: str) -> None:
    """One version (a number or an alias such as champion): decision, gates, provenance, tags."""
    from harmonica.registry.cli_ops import show_version

    with user_facing(registry_errors):
        info = show_version(model_name, version, tracking_uri=_registry_uri(workdir, project))
    echo(text.registry_version(info))


@registry.command("rollback")
@click.option("--to", "to_version", required=True, help="the earlier version (number or alias) to serve again")
@click.option("--reason", required=True, help="why (recorded on the version and in the champion history)")
@click.option("--force", is_flag=True, help="also to a version that failed its gates or is not earlier")
@registry_options
def registry_rollback(to_version: str, reason: str, force: bool, model_name: str, project: str | None,
                      workdir: str) -> None:
    """Move the `champion` alias back to an earlier version and record why."""
    from harmonica.registry.cli_ops import rollback

    with user_facing(registry_errors):
        result = rollback(model_name, to_version, reason, tracking_uri=_registry_uri(workdir, project), force=force)
    click.echo(result.message)


@main.command()
@project_option()
@click.option("--space", "space_path", required=True, help="projects/sweeps/FILE.yaml: knobs, ranges, objective")
@click.option("--n-trials", type=int, default=None, help="the study's total trials (all workers, all launches)")
@click.option("--study", "study_name", default=None, help="study name (default: derived from project + space)")
@click.option("--storage", default=None, help="Optuna RDB URL (default: sqlite:///<workdir>/optuna.db)")
@workdir_option
@no_progress_option
@overrides_argument
def sweep(project: str, space_path: str, n_trials: int | None, study_name: str | None, storage: str | None,
          workdir: str, no_progress: bool, overrides: tuple[str, ...]) -> None:
    """Optuna study over the anti-collapse knobs: one nested MLflow run per trial, pruning at
    validation steps, plots and the best trial's config on the parent run. Several workers (on
    several machines) join one study through the same --study and --storage."""
    from harmonica.stages.sweep import run_sweep

    with user_facing(lambda: (*user_errors(), TimeoutError)):  # e.g. the study's storage lock was never released
        out = run_sweep(config(project, overrides), Path(workdir), space_path, n_trials, study_name, storage,
                        progress=progress_on(no_progress))
    echo(text.sweep_summary(out))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
