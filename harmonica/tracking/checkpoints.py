"""Checkpoints as MLflow 3 LoggedModels: one model per saved checkpoint and weight set (raw, EMA).

A training run publishes each checkpoint it saves as two LoggedModels of that run, named
`<kind>-<weights>-step<step>` (e.g. `ar-ema-step0000300`). Each holds what decoding needs and nothing
pickled: `meta.json`, the one weights file (`model.safetensors` or `ema.safetensors`) and the bundled
`codec/` state. The trainer logs `val/*` with the raw model's id and `val_ema/*` with the EMA model's id
(and the token-cache dataset), so the UI's Models tab and `search_logged_models` rank checkpoints by
any validation metric; "best" is such a query, not a folder overwritten in place. Optimizer and
trainer state stay in the local `step_*` directory that `--resume` reads.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import LoggedModelInput
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from harmonica.tracking import names

MODEL_TYPE = "harmonica-checkpoint"
WEIGHT_FILES = {"raw": names.CKPT_MODEL, "ema": names.CKPT_EMA}
METRIC_PREFIX = {"raw": "val/", "ema": "val_ema/"}  # the validation family each weight set is scored by


class CheckpointModelError(RuntimeError):
    """A checkpoint model that does not exist, is not a harmonica checkpoint, or cannot be fetched."""


@dataclass(frozen=True)
class CheckpointModel:
    model_id: str
    name: str
    run_id: str
    kind: str  # ar | nar
    weights: str  # raw | ema
    step: int
    status: str
    metrics: dict[str, float] = field(default_factory=dict)  # the newest value of each linked metric
    artifact_location: str = ""

    @property
    def uri(self) -> str:
        return f"models:/{self.model_id}"

    @classmethod
    def from_mlflow(cls, m: Any) -> CheckpointModel:
        tags = m.tags or {}
        step = tags.get(names.CKPT_STEP_TAG, "")
        metrics: dict[str, float] = {}
        for x in sorted(m.metrics or [], key=lambda x: (x.step, x.timestamp)):
            metrics[x.key] = x.value
        return cls(model_id=m.model_id, name=m.name, run_id=m.source_run_id or "",
                   kind=tags.get(names.MODEL_KIND, ""), weights=tags.get(names.WEIGHTS, ""),
                   step=int(step) if step.isdigit() else -1, status=str(m.status), metrics=metrics,
                   artifact_location=m.artifact_location or "")


def model_name(kind: str, weights: str, step: int) -> str:
    return f"{kind}-{weights}-step{step:07d}"


def _stage(directory: Path, weights: str, dest: Path) -> Path:
    """dest/: meta.json, the one weights file and the bundled dirs of `directory`, hard-linked if possible."""
    dest.mkdir(parents=True)
    for f in (names.CKPT_META, WEIGHT_FILES[weights]):
        try:
            os.link(directory / f, dest / f)
        except OSError:
            shutil.copy2(directory / f, dest / f)
    for sub in directory.iterdir():
        if sub.is_dir():
            shutil.copytree(sub, dest / sub.name)
    return dest


def publish_checkpoint(client: MlflowClient, run_id: str, directory: Path, *, kind: str, step: int,
                       params: Mapping[str, Any], tags: Mapping[str, str]) -> dict[str, str]:
    """Log `directory` (a `step_*` checkpoint) as a raw and, when it has EMA weights, an EMA LoggedModel of
    `run_id`; returns {weights: model id}. A model whose upload fails is finalized FAILED and re-raised.

    Idempotent: a weight set this run already holds a READY model of at `step` is not published again (a
    resumed run re-publishes the checkpoint it resumed from, in case it was killed before or during the
    upload), and an unfinished model of that step (its process was killed mid-upload) is deleted."""
    directory = Path(directory)
    experiment_id = client.get_run(run_id).info.experiment_id
    out: dict[str, str] = {}
    for m in _models_at_step(client, experiment_id, run_id, step):
        if m.status.endswith("READY") and m.weights not in out:
            out[m.weights] = m.model_id
        else:
            delete_models(client, [m.model_id])
    with tempfile.TemporaryDirectory(prefix="harmonica-ckpt-model-") as tmp:
        for weights, file in WEIGHT_FILES.items():
            if weights in out or not (directory / file).is_file():
                continue
            staged = _stage(directory, weights, Path(tmp) / weights)
            model = client.create_logged_model(
                experiment_id, name=model_name(kind, weights, step), source_run_id=run_id,
                tags={**tags, names.MODEL_KIND: kind, names.WEIGHTS: weights, names.CKPT_STEP_TAG: str(step)},
                params={k: _param(v) for k, v in params.items()}, model_type=MODEL_TYPE,
            )
            try:
                client.log_model_artifacts(model.model_id, str(staged))
            except Exception:  # a Ctrl-C goes straight up: a request made now could replace it with its own error
                client.finalize_logged_model(model.model_id, "FAILED")
                raise
            client.finalize_logged_model(model.model_id, "READY")
            out[weights] = model.model_id
    return out


def _models_at_step(client: MlflowClient, experiment_id: str, run_id: str, step: int) -> list[CheckpointModel]:
    where = (f"source_run_id = '{run_id}' AND model_type = '{MODEL_TYPE}' "
             f"AND tags.`{names.CKPT_STEP_TAG}` = '{step}'")
    return _search(client, experiment_id, where)


def _search(client: MlflowClient, experiment_id: str, where: str,
            order: list[dict[str, Any]] | None = None) -> list[CheckpointModel]:
    """Every logged model of the experiment matching `where` (all pages), any status."""
    found, token = [], None
    while True:
        page = client.search_logged_models([experiment_id], filter_string=where, order_by=order,
                                           page_token=token, max_results=100)
        found += [CheckpointModel.from_mlflow(m) for m in page]
        token = page.token
        if not token:
            return found


def _param(value: Any) -> str:
    text = json.dumps(value, sort_keys=True) if isinstance(value, (dict, list, tuple)) else str(value)
    return text[:6000]


def delete_models(client: MlflowClient, model_ids: list[str]) -> None:
    for model_id in model_ids:
        try:
            client.delete_logged_model(model_id)
        except MlflowException:
            pass  # already gone: pruning is idempotent


def link_inputs(client: MlflowClient, run_id: str, model_ids: list[str]) -> None:
    """Record on `run_id` that it used these models (the run page's "Logged models" inputs)."""
    client.log_inputs(run_id, models=[LoggedModelInput(m) for m in model_ids])


class CheckpointModels:
    """The read side: a run's checkpoint models, the best by a metric, one model's files."""

    def __init__(self, tracking_uri: str, client: MlflowClient | None = None) -> None:
        self.tracking_uri = tracking_uri
        self._client = client or MlflowClient(tracking_uri)

    def get(self, model_id: str) -> CheckpointModel:
        try:
            m = self._client.get_logged_model(model_id)
        except MlflowException as exc:
            raise CheckpointModelError(f"model {model_id} not found on {self.tracking_uri}: {exc.message}") from None
        if m.model_type != MODEL_TYPE:
            raise CheckpointModelError(f"model {model_id} ({m.name}) is a {m.model_type or 'untyped'} model, not a "
                                       f"harmonica checkpoint")
        return CheckpointModel.from_mlflow(m)

    def run_tags(self, run_id: str) -> dict[str, str]:
        try:
            return dict(self._client.get_run(run_id).data.tags)
        except MlflowException as exc:
            raise CheckpointModelError(f"run {run_id} not found on {self.tracking_uri}: {exc.message}") from None

    def of_run(self, run_id: str, *, weights: str | None = None, order_by: str | None = None,
               ascending: bool = True) -> list[CheckpointModel]:
        """The run's READY checkpoint models (optionally one weight set): best first by `order_by` (a metric
        name; models without it come last), else newest step first."""
        try:
            experiment_id = self._client.get_run(run_id).info.experiment_id
        except MlflowException as exc:
            raise CheckpointModelError(f"run {run_id} not found on {self.tracking_uri}: {exc.message}") from None
        where = [f"source_run_id = '{run_id}'", f"model_type = '{MODEL_TYPE}'"]
        if weights:
            where.append(f"tags.`{names.WEIGHTS}` = '{weights}'")
        order = [{"field_name": f"metrics.{order_by}", "ascending": ascending}] if order_by else None
        found = [m for m in _search(self._client, experiment_id, " AND ".join(where), order)
                 if m.status.endswith("READY")]
        if not order_by:
            found.sort(key=lambda m: -m.step)
        return found

    def best(self, run_id: str, metric: str, mode: str = "min", weights: str = "ema") -> CheckpointModel | None:
        """The run's best `weights` model by `metric`; the newest when none carries the metric."""
        ranked = self.of_run(run_id, weights=weights, order_by=metric, ascending=mode == "min")
        scored = [m for m in ranked if metric in m.metrics]
        if scored:
            return scored[0]
        newest = self.of_run(run_id, weights=weights)
        return newest[0] if newest else None

    def at_step(self, run_id: str, step: int, weights: str = "ema") -> CheckpointModel | None:
        return next((m for m in self.of_run(run_id, weights=weights) if m.step == step), None)

    def read_meta(self, model: CheckpointModel, dest: Path) -> dict[str, Any]:
        """The model's meta.json alone (step, kind, contract, saved_at, code version)."""
        try:
            got = mlflow.artifacts.download_artifacts(artifact_uri=f"{model.artifact_location}/{names.CKPT_META}",
                                                      dst_path=str(dest), tracking_uri=self.tracking_uri)
            meta = json.loads(Path(got).read_text(encoding="utf-8"))
        except (MlflowException, OSError, ValueError) as exc:
            raise CheckpointModelError(f"cannot read {names.CKPT_META} of {model.name} ({model.uri}): {exc}") from None
        return meta if isinstance(meta, dict) else {}

    def download(self, model: CheckpointModel, dest: Path) -> Path:
        """The model's files into dest/<model id>/ (a checkpoint directory evaluate and promote can read)."""
        target = Path(dest) / model.model_id
        if (target / names.CKPT_META).is_file():
            return target
        Path(dest).mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".dl-", dir=dest))
        try:
            got = mlflow.artifacts.download_artifacts(artifact_uri=model.artifact_location, dst_path=str(tmp),
                                                      tracking_uri=self.tracking_uri)
            os.replace(got, target)  # got: tmp/<last part of the location>
        except MlflowException as exc:
            raise CheckpointModelError(f"cannot fetch {model.name} ({model.uri}): {exc.message}") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return target
