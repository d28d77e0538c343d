"""The model registry: promotion as evidence -> decision -> registration (evidence, refusals, gates,
decision, package, registration, promote), the `harmonica-tts` pyfunc model (pyfunc, model_code) and
registry operations (cli_ops: list / show / rollback). MLflow is reached through harmonica.tracking
(registry, models, read, adapter); only pyfunc.py and model_code.py use mlflow directly, because MLflow
itself loads them in serving (harmonica.tracking.MLFLOW_OUTSIDE_TRACKING).

Submodules import lazily heavy pieces (torch, the synthesizer) only where needed.
"""

from harmonica.registry.gates import GateResult, beats, evaluate_gates

__all__ = ["GateResult", "beats", "evaluate_gates"]
