"""Models-from-code entry of the `harmonica-tts` pyfunc: MLflow executes this file when loading
the model (no pickled Python object in the artifact). The harmonica package it imports travels
with the model (code_paths). It imports mlflow because `mlflow.models.set_model` is how MLflow
learns which object to serve: with pyfunc.py, the documented exception of
harmonica.tracking.MLFLOW_OUTSIDE_TRACKING."""

import mlflow

from harmonica.registry.pyfunc import HarmonicaTTS

mlflow.models.set_model(HarmonicaTTS())
