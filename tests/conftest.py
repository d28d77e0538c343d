import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Tests run offline and must find the `harmonica` executable of the interpreter running them.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("MLFLOW_RUN_ID", None)
os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
os.environ["HARMONICA_ROOT"] = str(ROOT)


@pytest.fixture
def root() -> Path:
    return ROOT


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    d = tmp_path / "work"
    d.mkdir()
    return d


from tests.tiny import tiny_cache_workdir, tiny_checkpoints, tiny_corpus  # noqa: E402,F401  (shared session fixtures)
