"""`harmonica synthesize` end to end with tiny checkpoints, and its refusals."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import soundfile as sf
import pytest

from tests.tiny import TINY


def _synth(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harmonica.cli", "synthesize", *args, *TINY],
                          cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_synthesize_writes_audio_and_refuses_bad_pairs(tiny_checkpoints, tiny_corpus, tmp_path):
    prompt = next((tiny_corpus / "wavs").glob("*.wav"))
    out = tmp_path / "x.wav"
    ok = _synth("--ar", str(tiny_checkpoints["ar"]), "--nar", str(tiny_checkpoints["nar"]), "--text",
                "a quiet river", "--prompt-wav", str(prompt), "--out", str(out), "--workdir", str(tmp_path),
                cwd=tmp_path)
    if "stopped at once" not in ok.stderr:  # an 8-step AR may stop at once; both outcomes are handled
        assert ok.returncode == 0, ok.stderr[-2000:]
        wav, sr = sf.read(out)
        assert sr == 24000 and wav.size > 0
        assert "frames" in ok.stdout

    no_prompt = _synth("--ar", str(tiny_checkpoints["ar"]), "--nar", str(tiny_checkpoints["nar"]),
                       "--text", "hi", "--out", str(out), "--workdir", str(tmp_path), cwd=tmp_path)
    assert no_prompt.returncode != 0 and "--prompt-wav" in no_prompt.stderr

    garbage = tmp_path / "garbage.wav"
    garbage.write_text("not audio")
    unreadable = _synth("--ar", str(tiny_checkpoints["ar"]), "--nar", str(tiny_checkpoints["nar"]), "--text", "hi",
                        "--prompt-wav", str(garbage), "--out", str(out), "--workdir", str(tmp_path), cwd=tmp_path)
    assert unreadable.returncode == 1 and "Traceback" not in unreadable.stderr
    assert "--prompt-wav" in unreadable.stderr and "is not audio harmonica can read" in unreadable.stderr

    missing = _synth("--ar", str(tmp_path / "nope"), "--nar", str(tiny_checkpoints["nar"]), "--text", "hi",
                     "--out", str(out), "--workdir", str(tmp_path), cwd=tmp_path)
    assert missing.returncode != 0 and "not a checkpoint reference" in missing.stderr

    swapped = _synth("--ar", str(tiny_checkpoints["nar"]), "--nar", str(tiny_checkpoints["ar"]), "--text", "hi",
                     "--prompt-wav", str(prompt), "--out", str(out), "--workdir", str(tmp_path), cwd=tmp_path)
    assert swapped.returncode != 0 and "kind:" in swapped.stderr and "Traceback" not in swapped.stderr

    other = tmp_path / "nar_other"
    shutil.copytree(tiny_checkpoints["nar"], other)
    meta = json.loads((other / "meta.json").read_text())
    meta["contract"]["codebook_size"] = 1024
    (other / "meta.json").write_text(json.dumps(meta))
    mismatch = _synth("--ar", str(tiny_checkpoints["ar"]), "--nar", str(other), "--text", "hi",
                      "--prompt-wav", str(prompt), "--out", str(out), "--workdir", str(tmp_path), cwd=tmp_path)
    assert mismatch.returncode != 0
    assert "codebook_size: AR has 16, NAR has 1024" in mismatch.stderr


def test_synthesize_on_a_terminal_shows_its_phases(tiny_checkpoints, tiny_corpus, tmp_path, monkeypatch):
    import io

    from harmonica.stages.synthesize import PHASES, SynthesisError, run_synthesize
    from tests.tiny import tiny_cfg

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    monkeypatch.setattr(sys, "stderr", stream)
    prompt = next((tiny_corpus / "wavs").glob("*.wav"))
    try:
        run_synthesize(tiny_cfg(tiny_corpus), tmp_path, str(tiny_checkpoints["ar"]), str(tiny_checkpoints["nar"]),
                       "a quiet river", tmp_path / "x.wav", prompt_wav=str(prompt), progress=True)
        done = f"{len(PHASES)}/{len(PHASES)}"
    except SynthesisError as exc:  # an 8-step AR may stop at once: the bar stops at the decode phase
        assert "stopped at once" in str(exc)
        done = f"2/{len(PHASES)}"
    text = stream.getvalue()
    assert "synthesize" in text and f"0/{len(PHASES)}" in text and "now=fetch checkpoints" in text
    assert done in text.split("\r")[-1] and text.endswith("\n")  # closed, also after a refusal
