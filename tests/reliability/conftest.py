"""Shared fixtures of the reliability cases."""

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest


@pytest.fixture
def read_only_dir(tmp_path):
    """make(seed=None) -> a directory this process cannot write to, holding a copy of `seed`. Not root:
    a mode of r-x. Root writes through modes, so it gets a read-only bind mount; a root without mount
    rights cannot have one (skip)."""
    undo = []

    def make(seed: Path | None = None, name: str = "ro") -> Path:
        src = tmp_path / f"{name}-src"
        shutil.copytree(seed, src) if seed is not None else src.mkdir()
        if os.geteuid() != 0:
            src.chmod(stat.S_IRUSR | stat.S_IXUSR)
            undo.append(lambda: src.chmod(stat.S_IRWXU))
            return src
        mnt = tmp_path / name
        mnt.mkdir()
        if subprocess.run(["mount", "--bind", str(src), str(mnt)], capture_output=True).returncode != 0:
            pytest.skip("this machine does not allow bind mounts (needs root in its own mount namespace)")
        undo.append(lambda: subprocess.run(["umount", str(mnt)], capture_output=True))
        assert subprocess.run(["mount", "-o", "remount,bind,ro", str(mnt)], capture_output=True).returncode == 0
        return mnt

    yield make
    for step in reversed(undo):
        step()
