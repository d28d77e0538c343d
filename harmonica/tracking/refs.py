"""Turn a user's model reference into a local checkpoint directory (MLflow downloads live here).

Accepted:
- a checkpoint directory (`.../ckpt/step_0000300`);
- `models:/m-<id>`: a checkpoint LoggedModel (see tracking/checkpoints.py);
- an MLflow run id of a training run: its best EMA checkpoint model by the run's best metric (runs
  from before checkpoints were models: their `checkpoints/best`, else `checkpoints/last` artifact);
  a unique prefix of the id (4+ hex characters; the logs print 8) or the run's name, when unique, too;
- an artifact URI such as `runs:/<run id>/checkpoints/best` (older runs).
"""

from __future__ import annotations

import errno
import re
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException

from harmonica.tracking import names
from harmonica.tracking.checkpoints import CheckpointModel, CheckpointModelError, CheckpointModels
from harmonica.tracking.read import AmbiguousRunError, NotFoundError, TrackingReader

RUN_ID = re.compile(r"^[0-9a-f]{32}$")
MODEL_REF = re.compile(r"^models:/(m-[0-9a-f]{32})/?$")


UNWRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


class CheckpointRefError(FileNotFoundError):
    """A reference that leads to nothing usable; the message lists what is accepted."""


ACCEPTED = (
    "a checkpoint directory (…/ckpt/step_0000300), models:/m-<id> (a checkpoint model), an MLflow run id of a "
    "train_ar/train_nar run (its best EMA checkpoint model; a unique id prefix or run name works too), or "
    "runs:/<run id>/checkpoints/best (older runs)"
)


@dataclass(frozen=True)
class ResolvedCheckpoint:
    path: Path  # a local checkpoint directory
    run_id: str | None  # the training run it came from, when known
    model_id: str | None = None  # its checkpoint LoggedModel, when it came from one


def _download(uri: str, dst: Path, tracking_uri: str) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst), tracking_uri=tracking_uri))


def _from_model(models: CheckpointModels, model: CheckpointModel, download_dir: Path) -> ResolvedCheckpoint:
    return ResolvedCheckpoint(models.download(model, download_dir / "models"), model.run_id or None, model.model_id)


def best_model(models: CheckpointModels, run_id: str) -> CheckpointModel | None:
    """The run's best EMA checkpoint model by the metric and mode its training recorded."""
    tags = models.run_tags(run_id)
    return models.best(run_id, tags.get(names.BEST_METRIC, "val_ema/loss"), tags.get(names.BEST_MODE, "min"))


def resolve_checkpoint(ref: str, tracking_uri: str, download_dir: Path) -> ResolvedCheckpoint:
    path = Path(ref)
    if path.is_dir():
        return ResolvedCheckpoint(path, None)
    models = CheckpointModels(tracking_uri)
    try:
        if m := MODEL_REF.match(ref):
            return _from_model(models, models.get(m.group(1)), download_dir)
        if ref.startswith("runs:/"):
            run_id = ref.split("/")[1]
            return ResolvedCheckpoint(_download(ref, download_dir / run_id, tracking_uri), run_id)
        if RUN_ID.match(ref):
            model = best_model(models, ref)
            if model is not None:
                return _from_model(models, model, download_dir)
            for name in (names.BEST_CHECKPOINT, names.LAST_CHECKPOINT):  # runs made before checkpoint models
                try:
                    return ResolvedCheckpoint(_download(f"runs:/{ref}/{name}", download_dir / ref, tracking_uri), ref)
                except (MlflowException, OSError) as exc:
                    if isinstance(exc, OSError) and exc.errno in UNWRITABLE:
                        raise  # an unwritable workdir, not a missing artifact: reported below
                    continue
            raise CheckpointRefError(f"run {ref} has no checkpoint model (nor a checkpoints/best or checkpoints/last "
                                     f"artifact) on {tracking_uri}: was it a training run, and did it save one?")
        if ref and "/" not in ref and ":" not in ref:  # a short run id (as logs print it) or a run name
            try:
                run = TrackingReader(tracking_uri).resolve_run(ref, what="training run")
            except AmbiguousRunError as exc:
                raise CheckpointRefError(str(exc)) from None
            except NotFoundError:
                run = None
            if run is not None:
                return resolve_checkpoint(run.run_id, tracking_uri, download_dir)
    except CheckpointModelError as exc:
        raise CheckpointRefError(str(exc)) from None
    except MlflowException as exc:
        raise CheckpointRefError(f"cannot fetch {ref} from {tracking_uri}: {exc.message}") from None
    except OSError as exc:
        if exc.errno not in UNWRITABLE:
            raise
        raise CheckpointRefError(f"cannot download {ref}'s checkpoint to {download_dir}: {exc.strerror} "
                                 f"({exc.filename}); run from a writable --workdir") from None
    raise CheckpointRefError(f"{ref!r} is not a checkpoint reference: expected {ACCEPTED}")


def model_of(tracking_uri: str, run_id: str | None, step: int | None, weights: str = "ema") -> str | None:
    """The checkpoint model of a local checkpoint directory (its run and step), if the store has one."""
    if not run_id or step is None:
        return None
    try:
        found = CheckpointModels(tracking_uri).at_step(run_id, int(step), weights=weights)
    except (CheckpointModelError, MlflowException):
        return None
    return found.model_id if found else None
