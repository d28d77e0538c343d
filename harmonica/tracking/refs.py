"""Turn a user's model reference into a local checkpoint directory (MLflow downloads live here).

Accepted: a checkpoint directory; an MLflow run id (its `checkpoints/best`, else `checkpoints/last`);
an artifact URI such as `runs:/<run id>/checkpoints/best`.
"""

from __future__ import annotations

import errno
import re
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException

RUN_ID = re.compile(r"^[0-9a-f]{32}$")


UNWRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


class CheckpointRefError(FileNotFoundError):
    """A reference that leads to nothing usable; the message lists what is accepted."""


ACCEPTED = (
    "a checkpoint directory (…/ckpt/best), an MLflow run id of a train_ar/train_nar run, "
    "or runs:/<run id>/checkpoints/best"
)


def _download(uri: str, dst: Path, tracking_uri: str) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst), tracking_uri=tracking_uri))


def resolve_checkpoint(ref: str, tracking_uri: str, download_dir: Path) -> tuple[Path, str | None]:
    """(local checkpoint dir, source run id or None)."""
    path = Path(ref)
    if path.is_dir():
        return path, None
    try:
        if ref.startswith("runs:/"):
            run_id = ref.split("/")[1]
            return _download(ref, download_dir / run_id, tracking_uri), run_id
        if RUN_ID.match(ref):
            for name in ("best", "last"):
                try:
                    return _download(f"runs:/{ref}/checkpoints/{name}", download_dir / ref, tracking_uri), ref
                except (MlflowException, OSError) as exc:
                    if isinstance(exc, OSError) and exc.errno in UNWRITABLE:
                        raise  # an unwritable workdir, not a missing artifact: reported below
                    continue
            raise CheckpointRefError(f"run {ref} has no checkpoints/best or checkpoints/last artifact ({tracking_uri})")
    except MlflowException as exc:
        raise CheckpointRefError(f"cannot fetch {ref} from {tracking_uri}: {exc.message}") from None
    except OSError as exc:
        if exc.errno not in UNWRITABLE:
            raise
        raise CheckpointRefError(f"cannot download {ref}'s checkpoint to {download_dir}: {exc.strerror} "
                                 f"({exc.filename}); run from a writable --workdir") from None
    raise CheckpointRefError(f"{ref!r} is not a checkpoint reference: expected {ACCEPTED}")
