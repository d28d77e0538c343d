"""`harmonica train` on a terminal shows a bar over optimizer steps; with stderr a pipe (nohup, CI) plain
lines instead; with --no-progress neither. Every long command takes --no-progress."""

import fcntl
import os
import pty
import select
import shutil
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest
from click.testing import CliRunner

from harmonica.cli import main
from tests.tiny import TINY, tiny_steps

LONG_COMMANDS = ["preprocess", "train", "evaluate", "sweep", "pipeline", "synthesize"]
STAGES = {  # command -> (stage module, runner, required arguments)
    "preprocess": ("harmonica.stages.preprocess", "run_preprocess", ["--corpus", "{tmp}"]),
    "train": ("harmonica.stages.train", "run_train", ["--model-type", "ar"]),
    "evaluate": ("harmonica.stages.evaluate", "run_evaluate", ["--ar", "a", "--nar", "n"]),
    "sweep": ("harmonica.stages.sweep", "run_sweep", ["--space", "s.yaml"]),
    "pipeline": ("harmonica.stages.pipeline", "run_pipeline", []),
    "synthesize": ("harmonica.stages.synthesize", "run_synthesize",
                   ["--ar", "a", "--nar", "n", "--text", "hi", "--out", "{tmp}/o.wav"]),
}


@pytest.mark.parametrize("command", LONG_COMMANDS)
def test_every_long_command_takes_no_progress(command):
    out = CliRunner().invoke(main, [command, "--help"], prog_name="harmonica")
    assert out.exit_code == 0, out.output
    assert "--no-progress" in out.output


class _Stop(Exception):
    pass


@pytest.mark.parametrize("command", LONG_COMMANDS)
def test_the_flag_decides_what_the_stage_gets(command, monkeypatch, tmp_path):
    """progress=True without --no-progress, terminal or not (the stage draws a bar or writes lines); it
    travels as the stage's argument."""
    import importlib

    from harmonica.training import progress

    module, runner, required = STAGES[command]
    args = [a.format(tmp=tmp_path) for a in required]
    seen: list[bool] = []

    def fake(*_, progress, **__):
        seen.append(progress)
        raise _Stop

    monkeypatch.setattr(importlib.import_module(module), runner, fake)
    for flags, terminal in (([], True), (["--no-progress"], True), ([], False)):
        monkeypatch.setattr(progress, "is_terminal", lambda stream, terminal=terminal: terminal)
        out = CliRunner().invoke(main, [command, *args, *flags], prog_name="harmonica")
        assert isinstance(out.exception, _Stop), out.output
    assert seen == [True, False, True]


def _train(workdir: Path, corpus: Path, *flags: str, terminal: bool) -> tuple[int, str, str]:
    """Run `harmonica train --model-type ar` with stderr on a pseudo terminal (or a pipe) -> (rc, stdout, stderr)."""
    cmd = [sys.executable, "-m", "harmonica.cli", "train", "--model-type", "ar", "--workdir", str(workdir), *flags,
           *TINY, "data.corpus_format=ljspeech", f"data.corpus_dir={corpus}", *tiny_steps("ar")]
    env = {**os.environ, "COLUMNS": "160"}
    if not terminal:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
        return proc.returncode, proc.stdout, proc.stderr
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))  # a 160-column terminal
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=slave, text=True, env=env)
    os.close(slave)
    chunks: list[bytes] = []
    try:
        while True:
            ready, _, _ = select.select([master], [], [], 600)
            if not ready:
                raise TimeoutError("harmonica train wrote nothing for 600 s")
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every writer closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        stdout = proc.stdout.read()
        rc = proc.wait(timeout=60)
    finally:
        os.close(master)
        proc.stdout.close()
    return rc, stdout, b"".join(chunks).decode("utf-8", "replace")


@pytest.fixture
def train_workdir(tmp_path: Path, tiny_cache_workdir: Path) -> Path:
    work = tmp_path / "work"
    shutil.copytree(tiny_cache_workdir / "cache", work / "cache")
    return work


@pytest.mark.slow
def test_train_on_a_terminal_shows_the_step_bar_with_its_postfix(train_workdir, tiny_corpus):
    rc, stdout, err = _train(train_workdir, tiny_corpus, terminal=True)
    assert rc == 0, err[-3000:]
    assert "train_ar finished: 8 steps" in stdout
    assert "train ar" in err and "0/8" in err and "8/8" in err, err[-3000:]
    final = err.split("8/8")[-1].split("\n")[0]  # the bar's last draw
    for field in ("loss=", "util=", "val=", "steps/s="):
        assert field in final, (field, final)


@pytest.mark.slow
def test_train_shows_nothing_with_no_progress(train_workdir, tiny_corpus):
    rc, stdout, err = _train(train_workdir, tiny_corpus, "--no-progress", terminal=True)
    assert rc == 0, err[-3000:]
    assert "train_ar finished: 8 steps" in stdout
    assert "train ar" not in err and "8/8" not in err and "step/s" not in err, err[-3000:]


@pytest.mark.slow
def test_train_on_a_pipe_writes_plain_lines_not_a_bar(train_workdir, tiny_corpus):
    """stderr to a file or pipe (nohup, CI): no carriage returns; a line a minute (a tiny run takes less)
    and the last position with the training fields when it ends."""
    rc, stdout, err = _train(train_workdir, tiny_corpus, terminal=False)
    assert rc == 0, err[-3000:]
    assert "train_ar finished: 8 steps" in stdout
    assert "\r" not in err, err[-3000:]
    [final] = [line for line in err.splitlines() if line.startswith("train ar: ")]
    assert final.startswith("train ar: 8/8 step (100%) loss="), final
    for field in ("util=", "val=", "steps/s=", "elapsed]"):
        assert field in final, (field, final)
