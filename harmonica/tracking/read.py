"""The read side of the MLflow seam: runs, metric histories, artifacts and registry versions as typed,
immutable records. Reports, promotion, the pipeline's step reuse and the CLI read the store only through
a `TrackingReader`; nothing here writes.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from harmonica.tracking import names

RUN_NAME = "mlflow.runName"
NOTE = "mlflow.note.content"
PARENT_RUN_ID = "mlflow.parentRunId"

# what a store request raises (MlflowException and its subclasses): callers catch it without importing mlflow
StoreError = MlflowException


class NotFoundError(LookupError):
    """A run, experiment or registered model that the store does not have; the message names the store."""


class AmbiguousRunError(NotFoundError):
    """A short run id or a run name that more than one run of the store matches; the message lists them."""


FULL_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
RUN_ID_PREFIX = re.compile(r"^[0-9a-f]{4,31}$")


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    experiment_id: str
    name: str
    status: str
    start_time: int | None
    end_time: int | None
    artifact_uri: str
    tags: Mapping[str, str] = field(default_factory=dict)
    params: Mapping[str, str] = field(default_factory=dict)
    metrics: Mapping[str, float] = field(default_factory=dict)
    deleted: bool = False

    @classmethod
    def from_mlflow(cls, run: Any) -> RunRecord:
        info, data = run.info, run.data
        return cls(run_id=info.run_id, experiment_id=info.experiment_id,
                   name=info.run_name or data.tags.get(RUN_NAME) or info.run_id[:8], status=info.status,
                   start_time=info.start_time, end_time=info.end_time, artifact_uri=info.artifact_uri or "",
                   deleted=info.lifecycle_stage == "deleted", tags=dict(data.tags), params=dict(data.params), metrics=dict(data.metrics))

    @property
    def stage(self) -> str | None:
        return self.tags.get(names.STAGE)

    @property
    def project(self) -> str | None:
        return self.tags.get(names.PROJECT)

    @property
    def parent_run_id(self) -> str | None:
        return self.tags.get(PARENT_RUN_ID)

    @property
    def note(self) -> str:
        return self.tags.get(NOTE, "")


@dataclass(frozen=True)
class MetricPoint:
    step: int
    timestamp: int
    value: float


@dataclass(frozen=True)
class ArtifactEntry:
    path: str
    is_dir: bool
    size: int | None


@dataclass(frozen=True)
class LoggedImage:
    """One image logged with `Run.log_image(key, image, step)`: MLflow stores it as
    images/<key, "/" as "~">+step+<step>+timestamp+<ms>+<uuid>.png (and a .webp thumbnail)."""

    key: str
    step: int
    timestamp: int
    path: str  # the full-resolution PNG's artifact path


# MLflow 2.x wrote "%" and "#" where 3.x writes "+" and "~"; its UI reads both
_IMAGE_FILE = re.compile(
    r"^(?P<key>[^+%]+)[+%]step[+%](?P<step>-?\d+)[+%]timestamp[+%](?P<ts>\d+)[+%][0-9a-fA-F-]+\.png$")


def parse_image_path(path: str) -> LoggedImage | None:
    """The key, step and time of a logged image's artifact path (None: not a full-resolution logged image)."""
    name = path.rsplit("/", 1)[-1]
    m = _IMAGE_FILE.match(name)
    if m is None or not path.startswith(f"{names.IMAGES_DIR}/"):
        return None
    key = m["key"].replace("~", "/").replace("#", "/")
    return LoggedImage(key, int(m["step"]), int(m["ts"]), path)


@dataclass(frozen=True)
class VersionRecord:
    name: str
    version: str
    run_id: str
    source: str
    status: str
    description: str
    created_ms: int | None
    tags: Mapping[str, str] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()

    @classmethod
    def from_mlflow(cls, mv: Any) -> VersionRecord:
        return cls(name=mv.name, version=str(mv.version), run_id=mv.run_id or "", source=mv.source or "",
                   status=str(mv.status or ""), description=mv.description or "",
                   created_ms=mv.creation_timestamp, tags=dict(mv.tags or {}), aliases=tuple(mv.aliases or ()))


@dataclass(frozen=True)
class RegisteredModelRecord:
    name: str
    description: str
    tags: Mapping[str, str] = field(default_factory=dict)
    aliases: Mapping[str, str] = field(default_factory=dict)  # alias -> version

    @classmethod
    def from_mlflow(cls, rm: Any) -> RegisteredModelRecord:
        aliases = rm.aliases or {}
        if not isinstance(aliases, Mapping):  # older clients return a list of alias objects
            aliases = {a.alias: str(a.version) for a in aliases}
        return cls(name=rm.name, description=rm.description or "", tags=dict(rm.tags or {}),
                   aliases={k: str(v) for k, v in aliases.items()})


@contextlib.contextmanager
def quiet_downloads() -> Iterator[None]:
    """No MLflow progress bar per artifact transfer while inside (readable command-line output)."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    before = os.environ.get(key)
    os.environ[key] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


def _quote(value: str) -> str:
    return str(value).replace("'", "\\'")


def run_filter(*, stage: str | None = None, tags: Mapping[str, str] | None = None, status: str | None = None,
               started_before: int | None = None) -> str:
    """An MLflow search filter for runs with the given stage, tags, status and start bound."""
    parts = [f"tags.`{names.STAGE}` = '{_quote(stage)}'"] if stage else []
    parts += [f"tags.`{k}` = '{_quote(v)}'" for k, v in (tags or {}).items()]
    if status:
        parts.append(f"attributes.status = '{status}'")
    if started_before is not None:
        parts.append(f"attributes.start_time < {int(started_before)}")
    return " and ".join(parts)


class TrackingReader:
    """Reads one tracking store (`tracking_uri`: sqlite:///..., http://..., postgresql://...)."""

    def __init__(self, tracking_uri: str, client: MlflowClient | None = None) -> None:
        self.tracking_uri = tracking_uri
        self._client = client or MlflowClient(tracking_uri)

    # --- runs
    def get_run(self, run_id: str, *, what: str = "run") -> RunRecord:
        try:
            return RunRecord.from_mlflow(self._client.get_run(run_id))
        except MlflowException as exc:
            raise NotFoundError(f"{what} {run_id!r} not found on {self.tracking_uri}: {exc.message}") from None

    def find_run(self, run_id: str) -> RunRecord | None:
        try:
            return self.get_run(run_id)
        except NotFoundError:
            return None

    def resolve_run(self, ref: str, *, what: str = "run") -> RunRecord:
        """A run by its full id, a unique id prefix (4+ hex characters, as the logs print 8) or a unique run
        name. NotFoundError when nothing matches, AmbiguousRunError (listing the matches) when several do."""
        ref = ref.strip()
        if FULL_RUN_ID.match(ref):
            return self.get_run(ref, what=what)
        found: list[RunRecord] = []
        how = "run id prefix"
        if RUN_ID_PREFIX.match(ref):
            found = self.search_runs(f"attributes.run_id LIKE '{ref}%'", max_results=11)
        if not found:
            how = "run name"
            found = self.search_runs(f"attributes.run_name = '{_quote(ref)}'", max_results=11)
        if len(found) == 1:
            return found[0]
        if not found:
            short = " (an id prefix needs 4+ characters)" if re.fullmatch(r"[0-9a-f]{1,3}", ref) else ""
            raise NotFoundError(f"{what} {ref!r} not found on {self.tracking_uri}: no run has that id, id prefix "
                                f"or name{short}; the run's page in the MLflow UI shows its id")
        listed = "; ".join(f"{r.run_id} ({r.name}, {r.stage or 'no stage'})" for r in found[:10])
        more = " and more" if len(found) > 10 else ""
        raise AmbiguousRunError(f"{what} {ref!r} is ambiguous on {self.tracking_uri}: {len(found)}{'+' if more else ''} "
                                f"runs match that {how}: {listed}{more}; give more of the id")

    def experiment_ids(self) -> list[str]:
        return [e.experiment_id for e in self._client.search_experiments()]

    def experiment_name(self, experiment_id: str) -> str:
        try:
            return self._client.get_experiment(experiment_id).name
        except MlflowException:
            return experiment_id

    def search_runs(self, filter_string: str = "", *, experiment_ids: Iterable[str] | None = None,
                    max_results: int = 100, newest_first: bool = True) -> list[RunRecord]:
        ids = list(experiment_ids) if experiment_ids is not None else self.experiment_ids()
        if not ids:
            return []
        order = ["attributes.start_time DESC" if newest_first else "attributes.start_time ASC"]
        runs = self._client.search_runs(ids, filter_string=filter_string, max_results=max_results, order_by=order)
        return [RunRecord.from_mlflow(r) for r in runs]

    def find_runs(self, *, stage: str | None = None, tags: Mapping[str, str] | None = None,
                  status: str | None = None, started_before: int | None = None,
                  experiment_ids: Iterable[str] | None = None, max_results: int = 100) -> list[RunRecord]:
        """Runs matching every given condition, newest first."""
        flt = run_filter(stage=stage, tags=tags, status=status, started_before=started_before)
        return self.search_runs(flt, experiment_ids=experiment_ids, max_results=max_results)

    def previous_run(self, run: RunRecord) -> RunRecord | None:
        """The latest FINISHED run of the same stage in the same experiment that started before `run`."""
        if not run.stage or run.start_time is None:
            return None
        found = self.find_runs(stage=run.stage, status="FINISHED", started_before=run.start_time,
                               experiment_ids=[run.experiment_id], max_results=5)
        return next((r for r in found if r.run_id != run.run_id), None)

    def metric_history(self, run_id: str, key: str) -> list[MetricPoint]:
        points = self._client.get_metric_history(run_id, key)
        return sorted((MetricPoint(int(m.step), int(m.timestamp), float(m.value)) for m in points),
                      key=lambda p: (p.step, p.timestamp))

    # --- artifacts
    def list_artifacts(self, run_id: str, path: str | None = None) -> list[ArtifactEntry]:
        return [ArtifactEntry(f.path, bool(f.is_dir), f.file_size) for f in self._client.list_artifacts(run_id, path)]

    def download_artifacts(self, run_id: str, path: str, dst_dir: str | Path) -> Path:
        """Download `path` of the run into `dst_dir`; returns the local path. Raises OSError/MlflowException
        subclasses as MLflow does (callers name the run and the fix)."""
        return Path(self._client.download_artifacts(run_id, path, str(dst_dir)))

    def logged_images(self, run_id: str, key: str | None = None) -> list[LoggedImage]:
        """The run's stepped images (of one key, or all), by key, step and time."""
        found = (parse_image_path(a.path) for a in self.list_artifacts(run_id, names.IMAGES_DIR))
        return sorted((i for i in found if i is not None and (key is None or i.key == key)),
                      key=lambda i: (i.key, i.step, i.timestamp))

    def latest_image(self, run_id: str, key: str) -> LoggedImage | None:
        """The image of `key` at its last step (the last one logged there, for a step logged twice)."""
        found = self.logged_images(run_id, key)
        return found[-1] if found else None

    def download_image(self, run_id: str, image: LoggedImage, dst_dir: str | Path) -> Path:
        """The image's PNG, downloaded into `dst_dir`."""
        return self.download_artifacts(run_id, image.path, dst_dir)

    # --- registry
    def registered_model(self, name: str) -> RegisteredModelRecord | None:
        try:
            return RegisteredModelRecord.from_mlflow(self._client.get_registered_model(name))
        except MlflowException:
            return None

    def model_versions(self, name: str) -> list[VersionRecord]:
        """Every version of `name`, oldest first, with its aliases (search results carry none)."""
        found = self._client.search_model_versions(f"name = '{_quote(name)}'")
        model = self.registered_model(name)
        by_version: dict[str, list[str]] = {}
        for alias, version in (model.aliases if model else {}).items():
            by_version.setdefault(version, []).append(alias)
        out = []
        for v in found:
            rec = VersionRecord.from_mlflow(v)
            out.append(replace(rec, aliases=tuple(sorted(by_version.get(rec.version, ())))))
        return sorted(out, key=lambda v: int(v.version))

    def model_version(self, name: str, version: str | int) -> VersionRecord:
        try:
            return VersionRecord.from_mlflow(self._client.get_model_version(name, str(version)))
        except MlflowException as exc:
            raise NotFoundError(f"{name} v{version} not found on {self.tracking_uri}: {exc.message}") from None

    def version_by_alias(self, name: str, alias: str) -> VersionRecord | None:
        try:
            return VersionRecord.from_mlflow(self._client.get_model_version_by_alias(name, alias))
        except MlflowException:
            return None
