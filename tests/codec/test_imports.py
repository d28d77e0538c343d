from __future__ import annotations

import pytest
import subprocess
import sys


@pytest.mark.slow
def test_import_is_light() -> None:
    code = (
        "import sys\n"
        "import harmonica.codec as c\n"
        "from harmonica.config.schema import CodecConfig\n"
        "c.build_codec(CodecConfig())\n"
        "bad = [m for m in ('encodec', 'torchaudio', 'mlflow') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr


def test_no_mlflow_in_codec_sources() -> None:
    from pathlib import Path

    import harmonica.codec

    for path in Path(harmonica.codec.__file__).parent.glob("*.py"):
        assert "mlflow" not in path.read_text(), path
