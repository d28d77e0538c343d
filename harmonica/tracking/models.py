"""The write side for MLflow models: log a models-from-code pyfunc (nothing pickled) into an open run.

Callers describe the model with plain values (staged artifact directories, a code path, pinned
requirements, the signature as (name, type, ...) tuples); the MLflow types stay here.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow.models.signature import ModelSignature
from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

from harmonica.tracking.adapter import Run


@dataclass(frozen=True)
class LoggedModel:
    model_uri: str  # models:/<model id>, what a registry version is created from
    model_id: str


@dataclass(frozen=True)
class SignatureSpec:
    """A model signature in plain values: inputs (name, type, required), outputs (name, type),
    params (name, type, default); types are MLflow's (string, long, double, ...)."""

    inputs: Sequence[tuple[str, str, bool]]
    outputs: Sequence[tuple[str, str]]
    params: Sequence[tuple[str, str, Any]] = ()

    def to_mlflow(self) -> ModelSignature:
        inputs = Schema([ColSpec(kind, name, required=required) for name, kind, required in self.inputs])
        outputs = Schema([ColSpec(kind, name) for name, kind in self.outputs])
        params = ParamSchema([ParamSpec(name, kind, default) for name, kind, default in self.params])
        return ModelSignature(inputs=inputs, outputs=outputs, params=params if self.params else None)


def log_code_model(run: Run, name: str, *, model_code: Path, artifacts: Mapping[str, str],
                   code_paths: Sequence[str], pip_requirements: Sequence[str], signature: SignatureSpec,
                   metadata: Mapping[str, Any] | None = None) -> LoggedModel:
    """`mlflow.pyfunc.log_model` of the models-from-code file `model_code` into `run`, which must be
    the run open in this process (Tracker.run): MLflow logs models into its active run."""
    active = mlflow.active_run()
    if active is None or active.info.run_id != run.run_id:
        raise RuntimeError(f"log_code_model needs run {run.run_id} to be the active run (open it with Tracker.run); "
                           f"the active run is {active.info.run_id if active else 'none'}")
    with warnings.catch_warnings():
        # no input_example on purpose: MLflow would load the model and predict to validate it, which
        # promote's smoke test already does on the staged artifacts
        warnings.filterwarnings("ignore", message=".*An input example was not provided")
        info = mlflow.pyfunc.log_model(
            name=name,
            python_model=str(model_code),
            artifacts=dict(artifacts),
            code_paths=list(code_paths),
            pip_requirements=list(pip_requirements),
            signature=signature.to_mlflow(),
            metadata=dict(metadata) if metadata else None,
        )
    return LoggedModel(model_uri=info.model_uri, model_id=str(getattr(info, "model_id", "") or ""))
