"""The model registry: the `harmonica-tts` pyfunc model, promotion gates, gated promotion and
registry operations (list / show / rollback). This package may use MLflow directly.

Submodules import lazily heavy pieces (torch, the synthesizer) only where needed.
"""

from harmonica.registry.gates import GateResult, beats, evaluate_gates
from harmonica.registry.pyfunc import MODEL_NAME

__all__ = ["MODEL_NAME", "GateResult", "beats", "evaluate_gates"]
