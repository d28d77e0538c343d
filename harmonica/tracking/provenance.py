"""Which code produced a run: git commit, dirty flag and a hash of the package source.

The source hash is what catches the RCA's "Colab is running old code": it is computed from the files
actually imported, so a stale checkout or an un-reinstalled package shows a different hash even when
no git metadata is available.
"""

from __future__ import annotations

import functools
import hashlib
import subprocess
from dataclasses import dataclass
from pathlib import Path

import harmonica
from harmonica.tracking import names

PACKAGE_DIR = Path(harmonica.__file__).resolve().parent


@dataclass(frozen=True)
class CodeVersion:
    git_commit: str  # "unknown" outside a git checkout
    git_dirty: bool | None  # None when unknown
    source_hash: str
    version: str

    def tags(self) -> dict[str, str]:
        return {
            names.GIT_COMMIT: self.git_commit,
            names.GIT_DIRTY: "unknown" if self.git_dirty is None else str(self.git_dirty).lower(),
            names.SOURCE_HASH: self.source_hash,
            names.VERSION: self.version,
            "mlflow.source.git.commit": self.git_commit,
        }

    @property
    def label(self) -> str:
        dirty = {True: "-dirty", False: "", None: "-unknown"}[self.git_dirty]
        return f"{self.git_commit[:10]}{dirty}/{self.source_hash[:10]}"


def source_hash(package_dir: Path = PACKAGE_DIR) -> str:
    digest = hashlib.sha256()
    for path in sorted(package_dir.rglob("*.py")):
        digest.update(path.relative_to(package_dir).as_posix().encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


@functools.lru_cache(maxsize=1)
def code_version(package_dir: Path = PACKAGE_DIR) -> CodeVersion:
    commit = _git(["rev-parse", "HEAD"], package_dir.parent)
    dirty: bool | None = None
    if commit:
        status = _git(["status", "--porcelain", "--untracked-files=no", "--", "."], package_dir.parent)
        dirty = None if status is None else bool(status)
    return CodeVersion(
        git_commit=commit or "unknown",
        git_dirty=dirty,
        source_hash=source_hash(package_dir),
        version=getattr(harmonica, "__version__", "0"),
    )
