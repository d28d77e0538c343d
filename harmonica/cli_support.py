"""What every command shares: overrides and config loading, logging, shared options, and the errors a
user can fix (turned into one message and a non-zero exit).

The error classes are imported lazily (inside `user_errors()`): they live next to torch, MLflow and
the evaluation models, and `harmonica --help` should not wait for them.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import click

from harmonica.config import ConfigError, HarmonicaConfig, load_config


def user_errors() -> tuple[type[BaseException], ...]:
    from harmonica.data.cache import DamagedCacheError, StaleCacheError
    from harmonica.data.corpora import CorpusError
    from harmonica.data.locks import LockWaitTimeout, WorkdirError
    from harmonica.data.preprocess import PreprocessError
    from harmonica.evaluation.asr import ASRError
    from harmonica.evaluation.speaker import SpeakerBackendError
    from harmonica.evaluation.suite import EvalError
    from harmonica.inference.synthesize import CheckpointError
    from harmonica.models.contract import IncompatibleModelsError
    from harmonica.stages.synthesize import SynthesisError
    from harmonica.tracking.adapter import TrackingLost, WorkdirMovedError
    from harmonica.tracking.health import TrackingUnavailable
    from harmonica.tracking.refs import CheckpointRefError
    from harmonica.training.ckpt_check import CheckpointInvalid
    from harmonica.training.resume import ResumeRefused

    return (ConfigError, FileNotFoundError, CorpusError, PreprocessError, StaleCacheError, CheckpointError,
            IncompatibleModelsError, CheckpointRefError, EvalError, ASRError, SpeakerBackendError,
            DamagedCacheError, LockWaitTimeout, WorkdirError, WorkdirMovedError, CheckpointInvalid, ResumeRefused,
            TrackingUnavailable, TrackingLost, SynthesisError)


def registry_errors() -> tuple[type[BaseException], ...]:
    from harmonica.registry.cli_ops import RegistryError
    from harmonica.tracking.lock import LockTimeout
    from harmonica.registry.promote import PromotionError

    return (*user_errors(), PromotionError, RegistryError, LockTimeout)


def report_errors() -> tuple[type[BaseException], ...]:
    from harmonica.reports import ReportError

    return (*user_errors(), ReportError)


def flag(value: str) -> bool:
    """An MLproject parameter ("true"/"false" strings) as a bool."""
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off", ""):
        return False
    raise click.BadParameter(f"expected true/false, got {value!r}")


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("alembic", "urllib3", "git", "numba", "matplotlib", "faster_whisper"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def split_overrides(items: Iterable[str]) -> list[str]:
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


def config(project: str, overrides: Iterable[str], extra: Iterable[str] = ()) -> HarmonicaConfig:
    return load_config(project, [*extra, *split_overrides(overrides)])


def tracking_uri(cfg: HarmonicaConfig, workdir: str | Path) -> str:
    """Resolved once per command (MLFLOW_TRACKING_URI > tracking.tracking_uri > <workdir>/mlflow.db)."""
    from harmonica.tracking.adapter import resolve_tracking_uri

    return resolve_tracking_uri(cfg.tracking, Path(workdir))


def echo(lines: Iterable[str]) -> None:
    for line in lines:
        click.echo(line)


def options(*decorators: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Several click decorators as one, applied in the order written."""
    def apply(fn: Any) -> Any:
        for d in reversed(decorators):
            fn = d(fn)
        return fn
    return apply


def project_option(default: str | None = "demo", help: str | None = None) -> Callable[[Any], Any]:
    return click.option("--project", "-p", default=default, show_default=default is not None,
                        help=help or "projects/<name>.yaml or a yaml path")


no_progress_option = click.option("--no-progress", is_flag=True,
                                  help="no progress: neither bars (on a terminal) nor a line a minute (elsewhere)")


def progress_on(no_progress: bool) -> bool:
    """The `progress=` a command hands its stage (not --no-progress): a bar where stderr is a terminal,
    plain lines where it is a file or a pipe."""
    return not no_progress


workdir_option = click.option("--workdir", type=click.Path(file_okay=False), default=".", show_default=True,
                              help="holds mlflow.db, mlartifacts/ and cache/ on the embedded default")
overrides_argument = click.argument("overrides", nargs=-1)


@contextlib.contextmanager
def user_facing(errors: Callable[[], tuple[type[BaseException], ...]] = user_errors) -> Iterator[None]:
    """An error the user can fix becomes one message and exit status 1, not a traceback."""
    try:
        yield
    except errors() as exc:
        raise click.ClickException(str(exc)) from None
