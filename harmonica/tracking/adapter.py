"""The one place that talks to MLflow for runs, metrics, params, tags, inputs and artifacts.

Everything else hands plain dicts, paths and numbers to a `Run`. With nothing configured the store
is embedded: `sqlite:///<workdir>/mlflow.db` and artifacts under `<workdir>/mlartifacts`;
`MLFLOW_TRACKING_URI` (a tracking server, PostgreSQL-backed or not) always wins.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from harmonica.config.load import config_hash, flatten, to_yaml
from harmonica.config.schema import HarmonicaConfig, TrackingConfig
from harmonica.data import locks
from harmonica.tracking.health import TrackingUnavailable, bound_requests, check_server, is_server, server_answers
from harmonica.tracking.provenance import code_version
from harmonica.tracking.spool import Spool
from harmonica.tracking import names

log = logging.getLogger(__name__)

MAX_PARAMS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
MAX_PARAM_LEN = 6000


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


def experiment_name(cfg: TrackingConfig, project: str) -> str:
    return f"{cfg.experiment_prefix}/{project}"


class Run:
    """An open MLflow run; all logging goes through here.

    With a spool (runs on a tracking server), a failed request whose server no longer answers its
    health check marks the server lost: that and every later operation goes to the spool instead of
    blocking, a probe every PROBE_EVERY seconds sends the spool once the server is back."""

    PROBE_EVERY = 30.0

    def __init__(self, client: MlflowClient, run_id: str, async_logging: bool = True,
                 spool: Spool | None = None, uri: str = "") -> None:
        self.client = client
        self.run_id = run_id
        self.async_logging = async_logging and spool is None  # a spool needs to know what failed
        self.spool, self.uri = spool, uri
        self.lost: str | None = None
        self._next_probe = 0.0

    def _guard(self, send: Callable[[], None], keep: Callable[[Spool], None]) -> None:
        if self.spool is None:
            send()
            return
        if self.lost is not None and time.monotonic() >= self._next_probe:
            self.reconnect()
        if self.lost is None:
            try:
                send()
                return
            except Exception as exc:  # noqa: BLE001 -- classified by the health probe below
                if server_answers(self.uri, 2.0):
                    raise  # the server is fine: a real error of this request
                self.lost = f"{type(exc).__name__}: {str(exc)[:300]}"
                self._next_probe = time.monotonic() + self.PROBE_EVERY
                log.error("the tracking server %s stopped answering; from now on everything is kept in %s and sent "
                          "when it is back (or with `harmonica sync %s`)", self.uri, self.spool.directory, self.run_id)
        keep(self.spool)

    def reconnect(self) -> bool:
        """Send the spool if the server answers again; True when nothing is left unsent."""
        if self.spool is None:
            return True
        self._next_probe = time.monotonic() + self.PROBE_EVERY
        if self.lost is not None and not server_answers(self.uri, 2.0):
            return False
        try:
            sent = self.spool.replay(self.client, self.run_id)
        except Exception as exc:  # noqa: BLE001 -- still (or again) unreachable
            self.lost = self.lost or f"{type(exc).__name__}: {str(exc)[:300]}"
            return False
        if self.lost is not None:
            log.warning("the tracking server %s is back: sent %d spooled operations", self.uri, sent)
        self.lost = None
        return True

    # ------------------------------------------------------------------ params, tags, metrics
    def log_params(self, params: Mapping[str, Any]) -> None:
        values = {k: _param_value(v) for k, v in params.items()}

        def send() -> None:
            existing = self.client.get_run(self.run_id).data.params
            # params are immutable; a resumed run re-logs the same ones
            items = [Param(k, v) for k, v in values.items() if k not in existing]
            for i in range(0, len(items), MAX_PARAMS_PER_BATCH):
                self.client.log_batch(self.run_id, params=items[i : i + MAX_PARAMS_PER_BATCH])

        self._guard(send, lambda sp: sp.params(values))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        items = [RunTag(k, str(v)) for k, v in tags.items()]

        def send() -> None:
            for i in range(0, len(items), MAX_PARAMS_PER_BATCH):
                self.client.log_batch(self.run_id, tags=items[i : i + MAX_PARAMS_PER_BATCH])

        self._guard(send, lambda sp: sp.tags({t.key: t.value for t in items}))

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Non-finite values are dropped with a warning: MLflow stores them but plots break."""
        ts = int(time.time() * 1000)
        items = []
        for key, value in metrics.items():
            value = float(value)
            if not math.isfinite(value):
                log.warning("metric %s=%s at step %s is not finite; not logged", key, value, step)
                continue
            items.append(Metric(key, value, ts, step or 0))

        def send() -> None:
            for i in range(0, len(items), MAX_METRICS_PER_BATCH):
                self.client.log_batch(
                    self.run_id, metrics=items[i : i + MAX_METRICS_PER_BATCH], synchronous=not self.async_logging
                )

        self._guard(send, lambda sp: sp.metrics(items))

    def get_metric_history(self, key: str) -> list[tuple[int, float]]:
        return [(m.step, m.value) for m in self.client.get_metric_history(self.run_id, key)]

    def tags(self) -> dict[str, str]:
        return dict(self.client.get_run(self.run_id).data.tags) if self.lost is None else {}

    # ------------------------------------------------------------------ artifacts
    def log_artifact(self, path: Path | str, artifact_path: str | None = None) -> None:
        self._guard(lambda: self.client.log_artifact(self.run_id, str(path), artifact_path),
                    lambda sp: sp.artifact(Path(path), artifact_path))

    def log_artifacts(self, directory: Path | str, artifact_path: str | None = None) -> None:
        self._guard(lambda: self.client.log_artifacts(self.run_id, str(directory), artifact_path),
                    lambda sp: sp.artifact(Path(directory), artifact_path))

    def log_text(self, text: str, artifact_file: str) -> None:
        parent = str(Path(artifact_file).parent)
        self._guard(lambda: self.client.log_text(self.run_id, text, artifact_file),
                    lambda sp: sp.artifact(Path(artifact_file), None if parent == "." else parent, text=text))

    def log_dict(self, data: Mapping[str, Any], artifact_file: str) -> None:
        if self.spool is None:
            self.client.log_dict(self.run_id, dict(data), artifact_file)
        else:  # as JSON text, so a lost server spools it like any text
            self.log_text(json.dumps(dict(data), indent=2, default=str), artifact_file)

    def log_table(self, data: Mapping[str, list[Any]], artifact_file: str) -> None:
        self.client.log_table(self.run_id, data=dict(data), artifact_file=artifact_file)

    # ------------------------------------------------------------------ higher level
    def log_config(self, cfg: HarmonicaConfig, sections: tuple[str, ...] | None = None) -> str:
        """`config.yaml` artifact, flattened params and the config hash tag; returns the hash."""
        digest = config_hash(cfg, sections)
        self.log_text(to_yaml(cfg), "config.yaml")
        self.log_params(flatten(cfg.model_dump(mode="json")))
        self.set_tags({names.CONFIG_HASH: digest})
        return digest

    def log_dataset(
        self,
        *,
        name: str,
        digest: str,
        source: Path | str,
        context: str,
        profile: Mapping[str, Any] | None = None,
    ) -> None:
        """`mlflow.log_input` of a dataset identified by its fingerprint (the digest)."""
        uri = str(source) if "://" in str(source) else Path(source).resolve().as_uri()
        entity = Dataset(
            name=name,
            digest=digest[:36],
            source_type="local" if uri.startswith("file:") else uri.split(":", 1)[0],
            source=json.dumps({"uri": uri}),
            profile=json.dumps(dict(profile)) if profile else None,
        )
        tags = [InputTag(MLFLOW_DATASET_CONTEXT, context)]
        self._guard(lambda: self.client.log_inputs(self.run_id, [DatasetInput(dataset=entity, tags=tags)]),
                    lambda sp: sp.tags({names.DATASET_UNLOGGED: f"{name} {digest} ({context})"}))

    def dataset_digests(self) -> list[str]:
        return [d.dataset.digest for d in self.client.get_run(self.run_id).inputs.dataset_inputs]

    def flush(self) -> None:
        mlflow.flush_async_logging()


def attach(tracking_uri: str, run_id: str) -> Run:
    """A handle on an existing run (any status) to add artifacts or tags after the fact, e.g. a report."""
    return Run(MlflowClient(tracking_uri), run_id, async_logging=False, uri=tracking_uri)


class TrackingLost(RuntimeError):
    """The tracking server went away during a run; the spool holds what it did not get."""


def _end_lost_run(run: Run, status: str, raise_error: bool) -> None:
    """Keep the end status in the spool, drop the fluent run without a long wait on the server."""
    run.spool.end(status)
    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ.update({"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "2"})
    try:
        mlflow.end_run(status=status)  # pops the fluent run; its one request may fail fast
    except Exception:  # noqa: BLE001 -- the server is gone: the spool has the status
        pass
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    message = (f"the tracking server {run.uri} was lost during run {run.run_id} ({run.lost}); nothing is lost: "
               f"what it did not get is kept in {run.spool.directory}. When the server is back, send it with "
               f"`harmonica sync {run.run_id} --workdir <this workdir>`")
    log.error(message)
    if raise_error:
        raise TrackingLost(message)


class NullRun:
    """Stands in for a run on processes that must not talk to MLflow (DDP ranks > 0)."""

    run_id = ""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


def _param_value(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (list, dict, tuple)) else str(value)
    return text[:MAX_PARAM_LEN]


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
                self.client = MlflowClient(self.tracking_uri)
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
        run_name: str,
        *,
        description: str = "",
        tags: Mapping[str, Any] | None = None,
        run_id: str | None = None,
        parent_run_id: str | None = None,
        spool_dir: Callable[[str], Path] | None = None,
    ) -> Iterator[Run]:
        """Start (or resume, with run_id) a run tagged with stage, project and code version.

        Under `mlflow run`, MLFLOW_RUN_ID names the run the project launcher created; it is adopted
        so the entry point's run is the one that holds everything.
        """
        run_id = run_id or launched_run_id()
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
        kwargs: dict[str, Any] = {"log_system_metrics": self.cfg.tracking.system_metrics}
        experiment_id = self.experiment_id()  # also refuses a moved workdir before anything is written
        if run_id:
            kwargs["run_id"] = run_id
        else:
            kwargs.update(experiment_id=experiment_id, run_name=run_name)
        # a fluent run so MLflow's system-metrics monitor attaches to it
        active = mlflow.start_run(**kwargs, nested=mlflow.active_run() is not None)
        spool = None
        if is_server(self.tracking_uri):  # what a lost server could not take waits here
            rid = active.info.run_id
            spool = Spool(spool_dir(rid) if spool_dir else self.workdir / "spool" / rid)
        run = Run(self.client, active.info.run_id, async_logging=self.cfg.tracking.async_logging, spool=spool,
                  uri=self.tracking_uri)
        status = "FAILED"
        ok = False
        try:
            run.set_tags({"mlflow.runName": run_name, **all_tags})
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
            if run.spool is None or (run.lost is None and not run.spool.pending) or run.reconnect():
                mlflow.flush_async_logging()
                mlflow.end_run(status=status)
            else:
                _end_lost_run(run, status, raise_error=ok)

    def find_runs(self, filter_string: str, max_results: int = 50) -> list[Any]:
        exp = self.client.get_experiment_by_name(self.experiment_name)
        if exp is None:
            return []
        return self.client.search_runs(
            [exp.experiment_id], filter_string=filter_string, max_results=max_results, order_by=["attributes.start_time DESC"]
        )
