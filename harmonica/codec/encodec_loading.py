"""Importing `encodec` without torchaudio, and choosing where the 24 kHz weights come from.

`encodec/utils.py` imports torchaudio at module top although the model classes never use it;
torchaudio is not installable on every machine (e.g. its CUDA wheel fails with OSError on a
CPU box). `import_encodec` hides a missing/broken torchaudio behind a placeholder module for the
duration of the import only.

Weight sources, in order (`load_encodec_model`):
  a. ``codec.weights_path``: a local state dict (``.safetensors`` or a torch file loaded with
     ``weights_only=True``); treated as real weights.
  b. ``codec.pretrained``: the published checkpoint through torch hub (its cache first; a
     download is tried only if the host answers within a few seconds; ``HARMONICA_OFFLINE=1``
     skips the network entirely).
  c. random init seeded by ``codec.seed``; the quantizer then has to be `fit`.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import types
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from harmonica.config.schema import CodecConfig

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "encodec_24khz-d7cc33bc.th"
CHECKPOINT_URL = "https://dl.fbaipublicfiles.com/encodec/v0/" + CHECKPOINT_NAME
PROBE_TIMEOUT_S = 3.0  # connectivity probe; an offline machine must not wait for minutes
DOWNLOAD_SOCKET_TIMEOUT_S = 15.0  # per socket operation while downloading
_PLACEHOLDER_MSG = "torchaudio unavailable; harmonica does its own audio I/O"


class _TorchaudioPlaceholder(types.ModuleType):
    """Stands in for torchaudio while encodec imports; any real use raises."""

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):  # import machinery probes dunders with getattr(..., default)
            raise AttributeError(attr)
        raise RuntimeError(_PLACEHOLDER_MSG)


def import_encodec() -> types.ModuleType:
    """Import and return the `encodec` package, tolerating a missing or broken torchaudio."""
    if "encodec" in sys.modules:
        return sys.modules["encodec"]
    placeholder = None
    if "torchaudio" not in sys.modules:
        before = set(sys.modules)
        try:
            import torchaudio  # noqa: F401
        except (ImportError, OSError) as exc:
            log.debug("torchaudio not usable (%s); importing encodec with a placeholder", exc)
            for key in set(sys.modules) - before:  # drop half-imported torchaudio submodules
                if key == "torchaudio" or key.startswith("torchaudio."):
                    del sys.modules[key]
            placeholder = _TorchaudioPlaceholder("torchaudio", _PLACEHOLDER_MSG)
            sys.modules["torchaudio"] = placeholder
    try:
        import encodec
    except ModuleNotFoundError as exc:
        if exc.name != "encodec":
            raise
        raise ModuleNotFoundError(
            "codec.name=encodec needs the encodec package, installed without its dependencies (it requires "
            "torchaudio, which has no build for torch 2.13): pip install --no-deps encodec==0.1.1",
            name="encodec") from exc
    finally:
        if placeholder is not None and sys.modules.get("torchaudio") is placeholder:
            del sys.modules["torchaudio"]
    return encodec


@dataclass
class LoadedModel:
    model: torch.nn.Module  # encodec.EncodecModel, eval mode
    source: str  # "file:<path>" | "published" | "random"
    pretrained: bool


def _build(pretrained: bool) -> torch.nn.Module:
    encodec = import_encodec()
    with warnings.catch_warnings():
        # encodec uses the deprecated torch.nn.utils.weight_norm; nothing we can change
        warnings.simplefilter("ignore", FutureWarning)
        return encodec.EncodecModel.encodec_model_24khz(pretrained=pretrained)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """State dict from ``.safetensors`` or a torch file (``weights_only=True``, never pickle code)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict")
    return state


def hub_checkpoint_path() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / CHECKPOINT_NAME


def network_reachable(url: str = CHECKPOINT_URL, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """True if a TCP connection to the URL's host opens within `timeout` seconds.

    Runs in a daemon thread because DNS resolution ignores socket timeouts and can hang.
    """
    if os.environ.get("HARMONICA_OFFLINE", "") not in ("", "0"):
        return False
    host = urlparse(url).hostname or ""
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, 443), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True, name="encodec-probe")
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def load_published() -> torch.nn.Module:
    """The published 24 kHz model from the torch hub cache, downloading only if reachable."""
    cached = hub_checkpoint_path()
    if not cached.is_file() and not network_reachable():
        raise ConnectionError(f"no cached checkpoint at {cached} and the download host is unreachable")
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_SOCKET_TIMEOUT_S)  # a stalled download fails, not hangs
    try:
        return _build(pretrained=True)
    finally:
        socket.setdefaulttimeout(old)


def load_random(seed: int) -> torch.nn.Module:
    """Randomly initialised model; the global RNG is left untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _build(pretrained=False)


def load_encodec_model(cfg: CodecConfig) -> LoadedModel:
    """Pick the weights source for `cfg` (see module docstring)."""
    if cfg.weights_path:
        path = Path(cfg.weights_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"codec.weights_path={cfg.weights_path!r} does not exist")
        model = load_random(cfg.seed)
        model.load_state_dict(read_state_dict(path), strict=True)
        return LoadedModel(model.eval(), f"file:{path.resolve()}", True)
    if cfg.pretrained:
        try:
            return LoadedModel(load_published().eval(), "published", True)
        except Exception as exc:  # offline: URLError/OSError/RuntimeError(hash)/...
            log.warning(
                "EnCodec published weights unavailable (%s: %s). Falling back to a RANDOMLY "
                "initialised EnCodec (codes are meaningful only after fit(), audio quality is "
                "poor). To use the real weights, place %s in %s or set codec.weights_path to a "
                "local state-dict file.",
                type(exc).__name__, exc, CHECKPOINT_NAME, hub_checkpoint_path().parent,
            )
    return LoadedModel(load_random(cfg.seed).eval(), "random", False)
