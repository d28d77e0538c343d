"""Models-from-code entry of the `harmonica-tts` pyfunc: MLflow executes this file when loading
the model (no pickled Python object in the artifact). The harmonica package it imports travels
with the model (code_paths)."""

import mlflow

from harmonica.registry.pyfunc import HarmonicaTTS

mlflow.models.set_model(HarmonicaTTS())
