"""Checkpoint validation: every damaged file becomes one `CheckpointInvalid` naming it and the fault.

Reads JSON and safetensors defensively (a pickle or `torch.save` zip renamed `.safetensors` is
recognised by its first bytes and never unpickled), checks the meta keys a trainer checkpoint must
hold and compares tensor shapes with the model a config builds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import Tensor
from harmonica.tracking import names

TRAINER_META_KEYS = ("step", "kind", "contract", "model_config")
# what trainer.json must hold for a resume (Trainer._trainer_state writes them)
TRAINER_STATE_KEYS = ("state", "scheduler", "stream", "generator", "torch_rng", "ema_meta", "guard", "early")
_PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")  # pickle protocol >= 2, torch.save's zip container


class CheckpointInvalid(RuntimeError):
    """A checkpoint file is missing, truncated, of the wrong format or does not fit the model."""

    def __init__(self, path: Path, file: str, problem: str) -> None:
        self.path, self.file, self.problem = Path(path), file, problem
        super().__init__(f"damaged checkpoint {self.path}: {file} {problem}")


def read_json(path: Path, name: str) -> Any:
    file = Path(path) / name
    if not file.is_file():
        raise CheckpointInvalid(path, name, "is missing")
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointInvalid(path, name, f"is not valid JSON (truncated or edited by hand?): {exc}") from None


def _check_format(path: Path, name: str) -> Path:
    file = Path(path) / name
    if not file.is_file():
        raise CheckpointInvalid(path, name, "is missing")
    with open(file, "rb") as fh:
        head = fh.read(4)
    if any(head.startswith(m) for m in _PICKLE_MAGIC):
        raise CheckpointInvalid(path, name, "is a pickle / torch.save file renamed as .safetensors; harmonica never "
                                "loads pickles (they can run code): re-save it with harmonica")
    return file


def check_tensors(path: Path, name: str) -> None:
    """Header and size check without reading the tensors (safetensors memory-maps the file)."""
    file = _check_format(path, name)
    try:
        with safe_open(str(file), framework="pt") as fh:
            fh.keys()
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointInvalid(path, name, f"is not a readable safetensors file (truncated?): {exc}") from None


def read_tensors(path: Path, name: str) -> dict[str, Tensor]:
    file = _check_format(path, name)
    try:
        return load_file(str(file))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointInvalid(path, name, f"is not a readable safetensors file (truncated?): {exc}") from None


def check_trainer_meta(path: Path, meta: Any) -> dict[str, Any]:
    if not isinstance(meta, dict):
        raise CheckpointInvalid(path, names.CKPT_META, "does not hold a JSON object")
    missing = [k for k in TRAINER_META_KEYS if k not in meta]
    if missing:
        raise CheckpointInvalid(path, names.CKPT_META, f"lacks the key(s) {missing}: not a complete trainer checkpoint")
    if not isinstance(meta["step"], int) or meta["step"] < 0:
        raise CheckpointInvalid(path, names.CKPT_META, f"has an invalid step {meta['step']!r}")
    return meta


def validate(path: Path) -> dict[str, Any]:
    """Cheap full check of a trainer checkpoint (every file present and parseable); returns its meta."""
    path = Path(path)
    meta = check_trainer_meta(path, read_json(path, names.CKPT_META))
    for name in (names.CKPT_MODEL, "optimizer.safetensors", "trainer.safetensors"):
        check_tensors(path, name)
    if (path / names.CKPT_EMA).exists():
        check_tensors(path, names.CKPT_EMA)
    for name in ("optimizer.json", "trainer.json"):
        read_json(path, name)
    return meta


def check_shapes(path: Path, name: str, found: dict[str, Tensor], expected: dict[str, Tensor]) -> None:
    """The tensors of `name` must match the model's state dict key for key and shape for shape."""
    missing = sorted(set(expected) - set(found))
    wrong = [f"{k} {list(found[k].shape)} (the model needs {list(v.shape)})"
             for k, v in expected.items() if k in found and found[k].shape != v.shape]
    if missing or wrong:
        detail = "; ".join([*(f"no {k}" for k in missing[:3]), *wrong[:3]])
        raise CheckpointInvalid(path, name, f"does not fit the model of this config: {detail} -- its meta.json "
                                "and weights disagree, or the config's model.* differs from the checkpoint's")


def check_fits(c: Any, kind: str, own: dict[str, Tensor]) -> None:
    """A loaded trainer checkpoint `c` (checkpoint.load_checkpoint) must be of `kind`, fit the model's
    state dict `own` (weights and EMA) and hold every piece of trainer state a resume restores."""
    check_trainer_meta(c.path, c.meta)
    if c.meta["kind"] != kind:
        raise CheckpointInvalid(c.path, names.CKPT_META, f"is a {c.meta['kind']} checkpoint, not {kind}")
    check_shapes(c.path, names.CKPT_MODEL, c.model, own)
    if c.ema is not None:
        check_shapes(c.path, names.CKPT_EMA, {k: v for k, v in c.ema.items() if k in own},
                     {k: v for k, v in own.items() if k in c.ema})
    missing = [k for k in TRAINER_STATE_KEYS if not isinstance(c.trainer, dict) or k not in c.trainer]
    if missing:
        raise CheckpointInvalid(c.path, "trainer.json", f"lacks {missing}")
