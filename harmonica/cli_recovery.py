"""Command-line helpers for failures: checking the --corpus path, the resume command after Ctrl-C."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import click
from harmonica.tracking import names


def corpus_path(corpus_dir: str) -> Path:
    """The --corpus directory, resolved; a symlink loop or an unreadable directory is a usage error."""
    try:
        path = Path(corpus_dir).resolve(strict=True)
    except RuntimeError:  # Python < 3.13 reports a symlink loop this way
        raise click.BadParameter(f"{corpus_dir} is a symlink loop; point --corpus at the real corpus directory",
                                 param_hint="--corpus") from None
    except OSError as exc:
        why = {40: "is a symlink loop", 2: "does not exist"}.get(exc.errno or 0, f"cannot be opened ({exc.strerror})")
        raise click.BadParameter(f"{corpus_dir} {why}; point --corpus at the corpus directory",
                                 param_hint="--corpus") from None
    if not path.is_dir() or not os.access(path, os.R_OK | os.X_OK):
        raise click.BadParameter(f"{corpus_dir} is not a readable directory", param_hint="--corpus")
    return path


def resume_hint(kind: str, project: str, project_name: str, workdir: str, overrides: tuple[str, ...]) -> str:
    """What to type to continue an interrupted training (the same overrides, the newest checkpoint)."""
    from harmonica.stages.train import checkpoints_root
    from harmonica.training.checkpoint import list_checkpoints

    root = checkpoints_root(Path(workdir), project_name, kind)
    ckpts = sorted((c for d in root.glob("*") for c in list_checkpoints(d / "ckpt")),
                   key=lambda c: (c / names.CKPT_META).stat().st_mtime) if root.is_dir() else []
    cmd = ["harmonica", "train", "--model-type", kind, "--project", project, "--workdir", str(Path(workdir).resolve())]
    if not ckpts:
        return ("\ninterrupted before the first checkpoint: nothing to resume; start again with\n  "
                + shlex.join([*cmd, *overrides]))
    return (f"\ninterrupted; the run is marked KILLED. Its newest checkpoint is {ckpts[-1]}; continue with\n  "
            + shlex.join([*cmd, "--resume", *overrides]))
