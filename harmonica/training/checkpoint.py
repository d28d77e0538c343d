"""Checkpoints as safetensors + JSON (never pickle), written atomically.

Layout of ``<root>/step_0001200/``:
    model.safetensors                  model state dict
    ema.safetensors                    EMA shadow tensors (absent when there is no EMA)
    optimizer.safetensors + .json      optimizer state: tensors + JSON skeleton (see flatten_state)
    trainer.safetensors + .json        trainer state (counters, RNG states, scheduler, data position)
    meta.json                          caller's meta + step + saved_at (UTC, ISO 8601)

A checkpoint is built in a hidden temp dir inside root, every file fsynced, then renamed into
place: a crash leaves only a ``.tmp-*`` dir that `list_checkpoints` ignores (and `clean_temp`
removes), never a half-written ``step_*``.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import Tensor

from harmonica.training import ckpt_check as check
from harmonica.tracking import names

__all__ = [
    "Checkpoint", "NonFiniteWeightsError", "clean_temp", "flatten_state", "latest_checkpoint",
    "list_checkpoints", "load_checkpoint", "prune_checkpoints", "read_meta", "save_checkpoint",
    "unflatten_state",
]

STEP_DIR = re.compile(r"^step_(\d+)$")
TMP_PREFIX = ".tmp-"
# Skeleton markers: a JSON object with exactly one of these keys is an encoded value, not a dict.
_TENSOR, _NDARRAY, _TUPLE, _FLOAT, _ITEMS = "__tensor__", "__ndarray__", "__tuple__", "__float__", "__items__"
_MARKERS = {_TENSOR, _NDARRAY, _TUPLE, _FLOAT, _ITEMS}


class NonFiniteWeightsError(RuntimeError):
    """Model or EMA weights hold NaN/inf; saving them would poison every later resume."""


# ------------------------------------------------------------------------------ state <-> skeleton


def _owned(t: Tensor, storages: set[tuple[int, int]]) -> Tensor:
    """Detached, CPU, contiguous, and not sharing memory with anything already in `storages`:
    safetensors refuses aliased tensors (tied weights), and a view would drag its base along."""
    t = t.detach().to("cpu").contiguous()  # [same shape]
    st = t.untyped_storage()
    if (st.data_ptr(), st.nbytes()) in storages or st.nbytes() != t.numel() * t.element_size():
        t = t.clone()
        st = t.untyped_storage()
    storages.add((st.data_ptr(), st.nbytes()))
    return t


def flatten_state(obj: Any) -> tuple[dict[str, Tensor], Any]:
    """Split a nested state into (tensors, JSON-able skeleton); `unflatten_state` inverts it exactly.

    Encoded: dict (str keys as a JSON object; any other key type -- e.g. an optimizer's int param
    ids -- or a key colliding with a marker as {"__items__": [[key, value], ...]}, since JSON would
    turn int keys into strings), list, tuple ({"__tuple__": [...]}), Tensor ({"__tensor__": name},
    stored detached, on CPU, contiguous, never sharing memory), numpy array ({"__ndarray__": name}),
    None/bool/int/str, float (non-finite as {"__float__": "nan" | "inf" | "-inf"}).
    """
    tensors: dict[str, Tensor] = {}
    storages: set[tuple[int, int]] = set()

    def put(t: Tensor, path: str) -> str:
        name = path or "root"
        while name in tensors:  # a str key containing "/" could collide with a nested path
            name += "~"
        tensors[name] = _owned(t, storages)
        return name

    def enc(x: Any, path: str) -> Any:
        if isinstance(x, Tensor):
            return {_TENSOR: put(x, path)}
        if isinstance(x, np.ndarray):
            return {_NDARRAY: put(torch.from_numpy(np.ascontiguousarray(x)), path)}
        if isinstance(x, np.generic):
            x = x.item()  # numpy scalars come back as Python scalars (same value)
        if x is None or isinstance(x, (bool, int, str)):
            return x
        if isinstance(x, float):
            return x if math.isfinite(x) else {_FLOAT: repr(x)}  # 'nan', 'inf', '-inf'
        if isinstance(x, tuple):
            return {_TUPLE: [enc(v, f"{path}/{i}") for i, v in enumerate(x)]}
        if isinstance(x, list):
            return [enc(v, f"{path}/{i}") for i, v in enumerate(x)]
        if isinstance(x, dict):
            plain = all(isinstance(k, str) for k in x) and not (len(x) == 1 and next(iter(x)) in _MARKERS)
            if plain:
                return {k: enc(v, f"{path}/{k}") for k, v in x.items()}
            return {_ITEMS: [[enc(k, f"{path}/key{i}"), enc(v, f"{path}/{k}")] for i, (k, v) in enumerate(x.items())]}
        raise TypeError(f"cannot checkpoint {type(x).__name__} at {path or '<root>'}: not a tensor/JSON value")

    return tensors, enc(obj, "")


def unflatten_state(tensors: dict[str, Tensor], skeleton: Any) -> Any:
    """Inverse of `flatten_state` (tuples come back as tuples, int keys as ints)."""

    def dec(x: Any) -> Any:
        if isinstance(x, list):
            return [dec(v) for v in x]
        if not isinstance(x, dict):
            return x
        if len(x) == 1 and next(iter(x)) in _MARKERS:
            (tag, val), = x.items()
            if tag == _TENSOR:
                return tensors[val]
            if tag == _NDARRAY:
                return tensors[val].numpy()
            if tag == _FLOAT:
                return float(val)
            if tag == _TUPLE:
                return tuple(dec(v) for v in val)
            return {dec(k): dec(v) for k, v in val}
        return {k: dec(v) for k, v in x.items()}

    return dec(skeleton)


# ------------------------------------------------------------------------------------- file helpers


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, allow_nan=False), encoding="utf-8")


def _plain_json(x: Any) -> Any:
    """meta must stay readable by any JSON tool: non-finite floats -> strings, scalars unwrapped."""
    if isinstance(x, dict):
        return {str(k): _plain_json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain_json(v) for v in x]
    if isinstance(x, (Tensor, np.generic)) and getattr(x, "ndim", 0) == 0:
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return repr(x)
    if isinstance(x, Path):
        return str(x)
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    raise TypeError(f"meta value of type {type(x).__name__} is not JSON-able")


def _save_tensors(path: Path, tensors: dict[str, Tensor]) -> None:
    storages: set[tuple[int, int]] = set()
    save_file({k: _owned(t, storages) for k, t in tensors.items()}, str(path))


def _non_finite(tensors: dict[str, Tensor]) -> list[str]:
    return [k for k, t in tensors.items()
            if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all())]


def _swap_into_place(tmp: Path, final: Path) -> None:
    """rename(2) cannot replace a non-empty dir: move the old one aside first, delete it after.
    Only a re-save of the same name has a (tiny) window where `final` is missing."""
    old = None
    if final.exists():
        old = Path(tempfile.mkdtemp(prefix=TMP_PREFIX + "old-", dir=final.parent))
        os.replace(final, old / final.name)
    os.replace(tmp, final)
    _fsync(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------------------- save/load


def step_dir(root: Path, step: int) -> Path:
    return Path(root) / f"step_{step:07d}"


def step_of(path: Path) -> int:
    """The optimizer step of a step directory (the inverse of step_dir), from its name: no file is read."""
    m = STEP_DIR.match(Path(path).name)
    if m is None:
        raise ValueError(f"{path} is not a step_<N> checkpoint directory")
    return int(m.group(1))


def save_checkpoint(root: Path, step: int, *, model: dict[str, Tensor], ema: dict[str, Tensor] | None,
                    optimizer: dict[str, Any], trainer: dict[str, Any], meta: dict[str, Any],
                    bundle: dict[str, Path] | None = None) -> Path:
    """Write root/step_{step:07d}/ atomically (an existing one for the same step is replaced).

    bundle: directories copied in under the given names (e.g. {"codec": codec state dir}) so a
    checkpoint can be decoded to audio on its own. Raises NonFiniteWeightsError, writing nothing,
    when a floating model/EMA tensor has NaN/inf."""
    bad = _non_finite(model) + [f"ema:{k}" for k in _non_finite(ema or {})]
    if bad:
        raise NonFiniteWeightsError(f"refusing to save step {step}: non-finite values in {bad[:8]}"
                                    + (f" and {len(bad) - 8} more" if len(bad) > 8 else ""))
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}step_{step:07d}-", dir=root))
    try:
        _save_tensors(tmp / names.CKPT_MODEL, model)
        if ema is not None:
            _save_tensors(tmp / names.CKPT_EMA, ema)
        for name, state in (("optimizer", optimizer), ("trainer", trainer)):
            tensors, skeleton = flatten_state(state)
            save_file(tensors, str(tmp / f"{name}.safetensors"))
            _write_json(tmp / f"{name}.json", skeleton)
        saved_at = datetime.now(UTC).isoformat(timespec="milliseconds")
        _write_json(tmp / names.CKPT_META, _plain_json({**meta, "step": step, "saved_at": saved_at}))
        for name, src in (bundle or {}).items():
            shutil.copytree(src, tmp / name)
        for f in tmp.iterdir():
            if f.is_file():
                _fsync(f)
        _fsync(tmp)
        final = step_dir(root, step)
        _swap_into_place(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


@dataclass
class Checkpoint:
    path: Path
    step: int
    model: dict[str, Tensor]
    ema: dict[str, Tensor] | None
    optimizer: dict[str, Any]
    trainer: dict[str, Any]
    meta: dict[str, Any]


def _load_state(path: Path, name: str) -> Any:
    skeleton = check.read_json(path, f"{name}.json")
    tensors = check.read_tensors(path, f"{name}.safetensors")
    try:
        return unflatten_state(tensors, skeleton)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise check.CheckpointInvalid(path, f"{name}.json", f"does not match {name}.safetensors ({exc!r})") from None


def read_meta(path: Path) -> dict[str, Any]:
    meta = check.read_json(Path(path), names.CKPT_META)
    if not isinstance(meta, dict) or not isinstance(meta.get("step"), int):
        raise check.CheckpointInvalid(Path(path), names.CKPT_META, "has no integer 'step'")
    return meta


def load_checkpoint(path: Path) -> Checkpoint:
    """Every damaged part raises `CheckpointInvalid` naming the file (never pickle)."""
    path = Path(path)
    meta = read_meta(path)
    ema = check.read_tensors(path, names.CKPT_EMA) if (path / names.CKPT_EMA).exists() else None
    return Checkpoint(path=path, step=int(meta["step"]), model=check.read_tensors(path, names.CKPT_MODEL),
                      ema=ema, optimizer=_load_state(path, "optimizer"), trainer=_load_state(path, "trainer"),
                      meta=meta)


# ---------------------------------------------------------------------------------- housekeeping


def list_checkpoints(root: Path) -> list[Path]:
    """Complete step_* dirs under root, oldest step first (temp dirs, named copies and strays ignored)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), d) for d in root.iterdir()
             if (m := STEP_DIR.match(d.name)) and d.is_dir() and (d / names.CKPT_META).is_file()]
    return [d for _, d in sorted(found)]


def latest_checkpoint(root: Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def prune_checkpoints(root: Path, keep_last: int, protect: set[Path] | frozenset[Path] = frozenset()) -> list[Path]:
    """Delete step dirs older than the newest keep_last, except protected ones; returns the deleted."""
    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1, got {keep_last}")
    keep = {p.resolve() for p in protect}
    doomed = [d for d in list_checkpoints(root)[:-keep_last] if d.resolve() not in keep]
    for d in doomed:
        shutil.rmtree(d)
    return doomed


def clean_temp(root: Path) -> list[Path]:
    """Remove temp dirs left by crashed saves. Only call when no save is in progress."""
    root = Path(root)
    stale = [d for d in root.iterdir() if d.name.startswith(TMP_PREFIX)] if root.is_dir() else []
    for d in stale:
        shutil.rmtree(d, ignore_errors=True)
    return stale
