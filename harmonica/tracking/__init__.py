"""The MLflow seam: the only package that imports mlflow (adapter: the write side for runs; read: the
read side; registry and lock: the model registry; models: logging a pyfunc; names: every shared name).

MLFLOW_OUTSIDE_TRACKING lists the one documented exception, paths relative to the harmonica package:
the pyfunc model that MLflow itself loads in serving must subclass mlflow.pyfunc.PythonModel (and
raise MlflowException for a bad request), and its models-from-code entry calls mlflow.models.set_model.
"""

MLFLOW_OUTSIDE_TRACKING: tuple[str, ...] = ("registry/pyfunc.py", "registry/model_code.py")
