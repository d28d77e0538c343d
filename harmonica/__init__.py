"""harmonica: VALL-E-style neural-codec TTS research code with MLflow tracking, gates and sweeps."""

__version__ = "0.1.0"
