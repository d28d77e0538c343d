"""The write side of the MLflow seam: the `Tracker` opens runs (a `Run`, tracking/run.py, takes every
metric, param, tag, input and artifact); the read side is tracking/read.py.

Everything else hands plain dicts, paths and numbers to a `Run`. With nothing configured the store
is embedded: `sqlite:///<workdir>/mlflow.db` and artifacts under `<workdir>/mlartifacts`;
`MLFLOW_TRACKING_URI` (a tracking server, PostgreSQL-backed or not) always wins.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import traceback
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

from harmonica.config.schema import HarmonicaConfig, TrackingConfig
from harmonica.data import locks
from harmonica.tracking.health import bound_requests, check_server, is_server
from harmonica.tracking.provenance import code_version
from harmonica.tracking import names
from harmonica.tracking.read import RunRecord, TrackingReader
from harmonica.tracking.run import NullRun, Run, TrackingLost, attach, end_lost_run, start_system_metrics
from harmonica.tracking.spool import Spool

__all__ = ["NullRun", "Run", "TrackingLost", "Tracker", "WorkdirMovedError", "active_run_id", "attach",
           "experiment_name", "resolve_tracking_uri", "run_ui_url"]

log = logging.getLogger(__name__)


class WorkdirMovedError(RuntimeError):
    """The embedded store's experiment points its artifacts outside the workdir (a moved copy)."""


def resolve_tracking_uri(cfg: TrackingConfig, workdir: Path) -> str:
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    if cfg.tracking_uri:
        return cfg.tracking_uri
    return f"sqlite:///{(workdir / 'mlflow.db').resolve()}"


def launched_run_id() -> str | None:
    """The run `mlflow run` created for this process (MLFLOW_RUN_ID), None when not launched by it."""
    return os.environ.get("MLFLOW_RUN_ID") or None


def run_ui_url(tracking_uri: str, experiment_id: str, run_id: str) -> str | None:
    """The run's page in the MLflow UI of a tracking server; None for a local store (no UI address)."""
    if not is_server(tracking_uri):
        return None
    return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def experiment_name(cfg: TrackingConfig, project: str) -> str:
    return f"{cfg.experiment_prefix}/{project}"


def _in_migration(exc: BaseException) -> bool:
    """Raised by SQLAlchemy or alembic, or from inside MLflow's migrations: a race lost can surface as any of
    sqlalchemy's OperationalError, alembic's CommandError, or a ValueError of alembic's batch operations
    ("No such constraint", found by CI)."""
    if type(exc).__module__.startswith(("sqlalchemy", "alembic")):
        return True
    files = [frame.filename for frame in traceback.extract_tb(exc.__traceback__)]
    return any(f"{os.sep}alembic{os.sep}" in f or f"{os.sep}db_migrations{os.sep}" in f for f in files)


def _install_new_store(path: Path) -> None:
    """Create and migrate a new store in a private file, then link it into place only if `path` still does
    not exist (atomic): harmonica never migrates a file that another MLflow client may be migrating too."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.new")
    try:
        MlflowClient(f"sqlite:///{tmp}")  # creates and migrates the private file
        os.link(tmp, path)
    except FileExistsError:
        pass  # another client created it first: open_embedded_store waits for its migration
    except OSError as e:  # a filesystem without hard links: migrate in place, as MLflow itself does
        log.info("cannot link a new MLflow store into %s (%s); creating it in place", path, e)
    finally:
        tmp.unlink(missing_ok=True)


def open_embedded_store(tracking_uri: str, attempts: int = 40, wait: float = 0.5) -> MlflowClient:
    """MlflowClient on a SQLite store. MlflowClient creates and migrates a new file, and another MLflow client
    -- `mlflow ui` started on the same file, a notebook, a test -- may migrate it at the same moment: the
    loser fails half-way ("table ... already exists", "duplicate column name", alembic's "expected to match
    one row", "No such constraint") and may leave the file half-migrated (found by CI). harmonica's own
    processes take turns (the lock around this call); against other clients a new store is migrated
    privately and linked into place (`_install_new_store`), and a store another client is still migrating
    is opened again until its migration is done."""
    if tracking_uri.startswith("sqlite:///"):
        path = Path(tracking_uri[len("sqlite:///"):])
        if not path.exists():
            _install_new_store(path)
    for attempt in range(attempts):
        try:
            return MlflowClient(tracking_uri)
        except Exception as e:
            if not _in_migration(e) or attempt == attempts - 1:
                raise
            log.info("another MLflow client is creating %s; waiting for it (%s)", tracking_uri,
                     str(e).splitlines()[0][:200])
            time.sleep(wait)
    raise AssertionError("unreachable")


class Tracker:
    """Opens runs in the project's experiment on the resolved tracking store."""

    def __init__(self, cfg: HarmonicaConfig, workdir: Path, tracking_uri: str | None = None) -> None:
        """tracking_uri: the store to use (default: resolved from MLFLOW_TRACKING_URI, cfg.tracking, workdir)."""
        self.cfg = cfg
        self.workdir = Path(workdir)
        self.tracking_uri = tracking_uri or resolve_tracking_uri(cfg.tracking, self.workdir)
        self.experiment_name = experiment_name(cfg.tracking, cfg.project)
        before = os.environ.get("MLFLOW_TRACKING_URI")
        mlflow.set_tracking_uri(self.tracking_uri)  # the fluent run (system metrics) needs it
        # ...but MLflow also exports it to the environment, where it would outrank the embedded
        # default of every later Tracker in this process and of every child process
        if before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = before
        if self.embedded:
            locks.ensure_writable(self.workdir)
            # the client creates and migrates mlflow.db; a second process must not run the migration
            # at the same time (alembic fails half-way), so it waits and finds it done
            with locks.hold(self.workdir / "mlflow.db", "creating the MLflow store"):
                self.client = open_embedded_store(self.tracking_uri)
        else:
            if is_server(self.tracking_uri):
                bound_requests(cfg.tracking.request_timeout, cfg.tracking.request_retries)
                check_server(self.tracking_uri, cfg.tracking.health_timeout)
            self.client = MlflowClient(self.tracking_uri)

    @property
    def embedded(self) -> bool:
        return self.tracking_uri.startswith("sqlite:")

    def experiment_id(self) -> str:
        existing = self.client.get_experiment_by_name(self.experiment_name)
        if existing is not None:
            self._check_artifact_location(existing.artifact_location)
            return existing.experiment_id
        location = self.cfg.tracking.artifact_location
        if location is None and self.embedded:
            location = (self.workdir / "mlartifacts").resolve().as_uri()
        # without it the MLflow 3 UI opens the experiment on its GenAI (traces) view, not the runs
        tags = {"mlflow.experimentKind": "custom_model_development"}
        try:
            return self.client.create_experiment(self.experiment_name, artifact_location=location, tags=tags)
        except mlflow.exceptions.MlflowException:
            # another process created it between our lookup and create
            return self.client.get_experiment_by_name(self.experiment_name).experiment_id

    def _check_artifact_location(self, location: str) -> None:
        """A moved or copied workdir keeps the experiment's old artifact path: refuse to write there."""
        if not (self.embedded and self.cfg.tracking.artifact_location is None and location.startswith("file:")):
            return
        path = Path(urllib.parse.unquote(urllib.parse.urlparse(location).path)).resolve()
        here = self.workdir.resolve()
        if path != here and here not in path.parents:
            raise WorkdirMovedError(
                f"experiment '{self.experiment_name}' in {here / 'mlflow.db'} stores its artifacts at {path}, "
                f"outside this workdir: the workdir was moved or copied from {path.parent}. New artifacts "
                "would land in the old place. Move the workdir back, or give this copy its own experiment "
                "with tracking.experiment_prefix=<new name> (older runs stay readable where they are)"
            )

    @contextlib.contextmanager
    def run(
        self,
        stage: str,
        run_name: str | None,
        *,
        description: str = "",
        tags: Mapping[str, Any] | None = None,
        run_id: str | None = None,
        parent_run_id: str | None = None,
        spool_dir: Callable[[str], Path] | None = None,
    ) -> Iterator[Run]:
        """Start (or resume, with run_id) a run tagged with stage, project and code version.

        run_name None: a resumed run keeps its name. Under `mlflow run`, MLFLOW_RUN_ID names the run the project launcher created; it is adopted
        so the entry point's run is the one that holds everything.
        """
        if run_id is None and parent_run_id is None and mlflow.active_run() is None and launched_run_id():
            # consumed once, as mlflow.start_run would: a pipeline's steps must not adopt it again
            run_id = os.environ.pop("MLFLOW_RUN_ID")
        all_tags = {
            names.STAGE: stage,
            names.PROJECT: self.cfg.project,
            **code_version().tags(),
            **(tags or {}),
        }
        if description:
            all_tags["mlflow.note.content"] = description
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        spooled = is_server(self.tracking_uri)  # what a lost server could not take waits in a spool
        sampled = self.cfg.tracking.system_metrics
        # MLflow's monitor stops at the first failed request: a spooled run gets one that keeps sampling
        kwargs: dict[str, Any] = {"log_system_metrics": sampled and not spooled}
        experiment_id = self.experiment_id()  # also refuses a moved workdir before anything is written
        if run_id:
            kwargs["run_id"] = run_id
        else:
            kwargs.update(experiment_id=experiment_id, run_name=run_name)
        # a fluent run so MLflow's system-metrics monitor attaches to it
        active = mlflow.start_run(**kwargs, nested=mlflow.active_run() is not None)
        spool = None
        if spooled:
            rid = active.info.run_id
            spool = Spool(spool_dir(rid) if spool_dir else self.workdir / "spool" / rid)
        run = Run(self.client, active.info.run_id, async_logging=self.cfg.tracking.async_logging, spool=spool,
                  uri=self.tracking_uri)
        run.ui_url = run_ui_url(self.tracking_uri, active.info.experiment_id, active.info.run_id)
        monitor = start_system_metrics(run, resume=bool(run_id)) if spooled and sampled else None
        status = "FAILED"
        ok = False
        try:
            run.set_tags({**({"mlflow.runName": run_name} if run_name else {}), **all_tags})
            yield run
            status = "FINISHED"
            ok = True
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        except Exception as exc:
            # an exception may say how the run ended (e.g. a pruned sweep trial is KILLED, not FAILED)
            status = getattr(exc, "run_status", "FAILED")
            raise
        finally:
            if monitor is not None:
                monitor.finish()
            if run.spool is None or (run.lost is None and not run.spool.pending) or run.reconnect():
                try:
                    mlflow.flush_async_logging()
                    mlflow.end_run(status=status)
                except Exception as exc:
                    if status != "KILLED":
                        raise
                    # a Ctrl-C can leave the store busy (found by CI: SQLite "database is locked" after an
                    # interrupted write); its error must not replace the KeyboardInterrupt and its resume
                    # hint. The lock is transient: mark the run KILLED directly, a few times, then give up.
                    if not self._mark_killed(run.run_id):
                        log.warning("could not mark run %s KILLED (%s); it shows RUNNING until resumed",
                                    run.run_id, str(exc).splitlines()[0])
            else:
                end_lost_run(run, status, raise_error=ok)

    def _mark_killed(self, run_id: str, attempts: int = 5) -> bool:
        """Set an interrupted run's status to KILLED with the client, retrying a busy store; True if done."""
        for attempt in range(attempts):
            time.sleep(0.4 * (attempt + 1))
            try:
                self.client.set_terminated(run_id, "KILLED")
            except Exception:  # still locked: wait longer
                continue
            with contextlib.suppress(Exception):  # only pops the fluent run stack now
                mlflow.end_run(status="KILLED")
            return True
        return False

    @property
    def reader(self) -> TrackingReader:
        return TrackingReader(self.tracking_uri, self.client)

    def find_runs(self, filter_string: str, max_results: int = 50) -> list[RunRecord]:
        """Runs of this project's experiment matching an MLflow filter, newest first."""
        exp = self.client.get_experiment_by_name(self.experiment_name)
        if exp is None:
            return []
        return self.reader.search_runs(filter_string, experiment_ids=[exp.experiment_id], max_results=max_results)

    def get_run(self, run_id: str) -> RunRecord | None:
        return self.reader.find_run(run_id)

    def handle(self, run_id: str) -> Run:
        """A write handle on an existing run of this store (no status change)."""
        return Run(self.client, run_id, async_logging=False, uri=self.tracking_uri)

    def create_run(self, run_name: str, tags: Mapping[str, str]) -> str:
        """A run left RUNNING for later `run(..., run_id=)` (e.g. a sweep's parent shared by workers)."""
        return self.client.create_run(self.experiment_id(), run_name=run_name, tags=dict(tags)).info.run_id

    def set_status(self, run_id: str, status: str) -> None:
        if status == "RUNNING":
            self.client.update_run(run_id, status="RUNNING")
        else:
            self.client.set_terminated(run_id, status=status)


def active_run_id() -> str | None:
    """The run a `Tracker.run` block opened in this process (the innermost), if any."""
    active = mlflow.active_run()
    return active.info.run_id if active is not None else None
