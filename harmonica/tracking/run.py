"""An open MLflow run: every metric, param, tag and artifact of a stage goes through a `Run`.

With a spool (runs on a tracking server), a request that fails while the server no longer answers its
health check marks the server lost; that and every later operation goes to the spool instead of
blocking, and a probe every PROBE_EVERY seconds sends the spool once the server is back.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import mlflow
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT, MLFLOW_LOGGED_ARTIFACTS

from harmonica.config.load import config_hash, flatten, to_yaml
from harmonica.config.schema import HarmonicaConfig
from harmonica.tracking import checkpoints, names
from harmonica.tracking.health import server_answers
from harmonica.tracking.read import parse_image_path
from harmonica.tracking.spool import Spool

log = logging.getLogger(__name__)

MAX_PARAMS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
MAX_PARAM_LEN = 6000



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
        self.ui_url: str | None = None  # the run's page when the store is a tracking server (Tracker.run sets it)
        self._next_probe = 0.0
        self._lock = threading.RLock()  # MLflow's system-metrics thread logs through this run too

    def _guard(self, send: Callable[[], None], keep: Callable[[Spool], None]) -> None:
        with self._lock:
            self._guard_unlocked(send, keep)

    def _guard_unlocked(self, send: Callable[[], None], keep: Callable[[Spool], None]) -> None:
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

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None, *,
                    model_ids: Mapping[str, str | Sequence[str]] | None = None,
                    dataset: tuple[str, str] | None = None) -> None:
        """Non-finite values are dropped with a warning: MLflow stores them but plots break.

        model_ids: metric-name prefix -> LoggedModel id(s), e.g. {"val_ema/": <EMA checkpoint model>}: a
        metric under a prefix is linked to those models (and to `dataset`, (name, digest)), so the Models
        tab ranks them by it; the run's own history holds it once."""
        ts = int(time.time() * 1000)
        items = []
        for key, value in metrics.items():
            value = float(value)
            if not math.isfinite(value):
                log.warning("metric %s=%s at step %s is not finite; not logged", key, value, step)
                continue
            linked = next((ids for prefix, ids in (model_ids or {}).items() if key.startswith(prefix) and ids), None)
            for model_id in ([linked] if isinstance(linked, str) else list(linked or [None])):
                ds = {"dataset_name": dataset[0], "dataset_digest": dataset[1][:36]} if model_id and dataset else {}
                items.append(Metric(key, value, ts, step or 0, model_id=model_id, **ds))

        def send() -> None:
            for i in range(0, len(items), MAX_METRICS_PER_BATCH):
                self.client.log_batch(
                    self.run_id, metrics=items[i : i + MAX_METRICS_PER_BATCH], synchronous=not self.async_logging
                )

        self._guard(send, lambda sp: sp.metrics(items))

    def get_metric_history(self, key: str) -> list[tuple[int, float]]:
        return [(m.step, m.value) for m in self.client.get_metric_history(self.run_id, key)]

    def image_steps(self) -> dict[str, list[int]]:
        """Key -> steps of the stepped images the run already has (none while the server is lost)."""
        if self.lost is not None:
            return {}
        out: dict[str, list[int]] = {}
        for a in self.client.list_artifacts(self.run_id, names.IMAGES_DIR):
            if (image := parse_image_path(a.path)) is not None:
                out.setdefault(image.key, []).append(image.step)
        return {k: sorted(v) for k, v in out.items()}

    def tags(self) -> dict[str, str]:
        return dict(self.client.get_run(self.run_id).data.tags) if self.lost is None else {}

    # ------------------------------------------------------------------ artifacts
    def log_artifact(self, path: Path | str, artifact_path: str | None = None) -> None:
        self._guard(lambda: self.client.log_artifact(self.run_id, str(path), artifact_path),
                    lambda sp: sp.artifact(Path(path), artifact_path))

    def log_artifacts(self, directory: Path | str, artifact_path: str | None = None) -> None:
        self._guard(lambda: self.client.log_artifacts(self.run_id, str(directory), artifact_path),
                    lambda sp: sp.artifact(Path(directory), artifact_path))

    def log_image(self, key: str, image: Any, step: int) -> None:
        """An image at a training step (numpy array [H, W(, 3|4)] or PIL image) under `key` (names.py): MLflow
        keeps it under images/ with its step, and the UI shows each key with a step slider. Spooled (the
        image as a PNG, with its step and time) while the server is lost."""
        ts = int(time.time() * 1000)
        self._guard(lambda: self.client.log_image(self.run_id, image, key=key, step=step, timestamp=ts,
                                                  synchronous=True),
                    lambda sp: sp.image(key, image, step, ts))

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
        def keep(sp: Spool) -> None:  # the file MLflow would write, and the tag that shows it as a table
            import pandas as pd

            text = pd.DataFrame(dict(data)).to_json(orient="split", index=False, date_format="iso")
            parent = str(Path(artifact_file).parent)
            sp.artifact(Path(artifact_file), None if parent == "." else parent, text=text)
            sp.tags({MLFLOW_LOGGED_ARTIFACTS: json.dumps([{"path": artifact_file, "type": "table"}])})

        self._guard(lambda: self.client.log_table(self.run_id, data=dict(data), artifact_file=artifact_file), keep)

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

        def send() -> None:
            try:
                self.client.log_inputs(self.run_id, [DatasetInput(dataset=entity, tags=tags)])
            except MlflowException as exc:
                # two runs logging the same new dataset at once: MLflow's store looks it up, then inserts, and
                # the slower insert hits the unique key; by now the dataset exists and is simply linked
                if "UNIQUE constraint" not in str(exc) and "duplicate key" not in str(exc):
                    raise
                self.client.log_inputs(self.run_id, [DatasetInput(dataset=entity, tags=tags)])

        self._guard(send, lambda sp: sp.tags({names.DATASET_UNLOGGED: f"{name} {digest} ({context})"}))

    # ------------------------------------------------------------------ checkpoint models
    def publish_checkpoint(self, directory: Path, *, kind: str, step: int, params: Mapping[str, Any],
                           tags: Mapping[str, str]) -> dict[str, str]:
        """The checkpoint as raw + EMA LoggedModels of this run ({weights: model id}). While the server is
        lost: {} and the spool publishes it at sync, if keep_last still holds it then."""
        result: dict[str, str] = {}

        def send() -> None:
            result.update(checkpoints.publish_checkpoint(self.client, self.run_id, Path(directory), kind=kind,
                                                         step=step, params=params, tags=tags))

        self._guard(send, lambda sp: sp.checkpoint(Path(directory), kind=kind, step=step, params=dict(params),
                                                   tags=dict(tags)))
        return result

    def prune_checkpoint_models(self, keep_steps: set[int]) -> None:
        """Delete this run's checkpoint models whose step is not kept (`training.*.keep_last` + the best)."""
        def send() -> None:
            models = checkpoints.CheckpointModels(self.uri, self.client).of_run(self.run_id)
            checkpoints.delete_models(self.client, [m.model_id for m in models if m.step not in keep_steps])

        self._guard(send, lambda sp: sp.prune(keep_steps))

    def link_models(self, model_ids: list[str]) -> None:
        """Record the LoggedModels this run used as its inputs (evaluate: the AR and NAR checkpoints)."""
        ids = [m for m in model_ids if m]
        if ids:
            self._guard(lambda: checkpoints.link_inputs(self.client, self.run_id, ids), lambda sp: None)

    def dataset_digests(self) -> list[str]:
        return [d.dataset.digest for d in self.client.get_run(self.run_id).inputs.dataset_inputs]

    def flush(self) -> None:
        mlflow.flush_async_logging()


def attach(tracking_uri: str, run_id: str) -> Run:
    """A handle on an existing run (any status) to add artifacts or tags after the fact, e.g. a report."""
    return Run(MlflowClient(tracking_uri), run_id, async_logging=False, uri=tracking_uri)


class TrackingLost(RuntimeError):
    """The tracking server went away during a run; the spool holds what it did not get."""


def end_lost_run(run: Run, status: str, raise_error: bool) -> None:
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
    ui_url = None

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None

def _param_value(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (list, dict, tuple)) else str(value)
    return text[:MAX_PARAM_LEN]


class _SystemMetricsToRun:
    """Stands in for the monitor's `mlflow_logger` (record_metrics, flush, data): samples go through the
    run, so those taken while the server is lost are spooled like every other metric."""

    total_training_time = total_log_batch_time = 0.0

    def __init__(self, run: Run) -> None:
        self.run, self.data = run, []

    def record_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self.run.log_metrics(metrics, step=step)

    def flush(self) -> None:
        """Nothing is buffered here: the run sends (or spools) each sample at once."""


class SpooledSystemMetrics(SystemMetricsMonitor):
    """MLflow's system-metrics monitor (its CPU/GPU/disk/network samplers and aggregation) for a run on a
    tracking server. MLflow's own loop asks the server for the run's status after every sample and stops
    for good when that request fails; this loop ends only at shutdown, and logs through the run, so an
    outage leaves no gap in `system/*` once the spool is sent."""

    def __init__(self, run: Run, resume: bool) -> None:
        super().__init__(run.run_id, resume_logging=resume, tracking_uri=run.uri)
        self.mlflow_logger = _SystemMetricsToRun(run)

    def monitor(self) -> None:
        while not self._shutdown_event.is_set():
            for _ in range(self.samples_before_logging):
                self.collect_metrics()
                if self._shutdown_event.wait(self.sampling_interval):
                    return
            try:
                self.publish_metrics(self.aggregate_metrics())
            except Exception as exc:  # noqa: BLE001 -- a sample must never stop the training
                log.warning("system metrics sample not logged: %s", exc)


def start_system_metrics(run: Run, resume: bool) -> SpooledSystemMetrics:
    monitor = SpooledSystemMetrics(run, resume)
    monitor.start()
    return monitor
