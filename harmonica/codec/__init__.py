"""Audio codecs: waveform <-> discrete codes ``[n_q, T_frames]``.

`build_codec(cfg)` makes a codec from `CodecConfig`; `load_codec(cfg, dir)` also restores fitted
state saved with `Codec.save_state`. Backends are imported lazily, so importing this package
never imports encodec (or torchaudio).
"""

from __future__ import annotations

import importlib
from pathlib import Path

from harmonica.codec.base import Codec, num_frames
from harmonica.config.schema import CodecConfig

__all__ = ["Codec", "build_codec", "load_codec", "num_frames", "CODECS"]

# name -> "module:Class"; strings keep heavy backends unimported until used
CODECS: dict[str, str] = {
    "mel_rvq": "harmonica.codec.mel_rvq:MelRVQCodec",
    "encodec": "harmonica.codec.encodec_codec:EncodecCodec",
}


def build_codec(cfg: CodecConfig) -> Codec:
    """A fresh codec for `cfg` (mel_rvq unfitted; encodec with the best weights available)."""
    try:
        target = CODECS[cfg.name]
    except KeyError:
        raise ValueError(f"unknown codec {cfg.name!r}; known: {sorted(CODECS)}") from None
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)(cfg)


def load_codec(cfg: CodecConfig, state_dir: Path) -> Codec:
    """`build_codec` + `Codec.load_state(state_dir)`."""
    codec = build_codec(cfg)
    codec.load_state(Path(state_dir))
    return codec
