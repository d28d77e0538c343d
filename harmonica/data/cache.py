"""The token cache: codec codes + text ids per split, with a deterministic fingerprint.

Layout of one cache (`<workdir>/cache/<key>/`):
    cache.json                settings, corpus digest, fingerprint, contract part, split stats
    codec/                    codec state (fitted codebooks or weights), safetensors + json
    tokens_<split>.safetensors  codes int16 [n_q, sum T], code_offsets [N+1], text int16, text_offsets
    index_<split>.jsonl       id, speaker, text, frames, duration per utterance (row i = offsets i)
    manifests/, quality/      what went in and what was filtered out

The *key* is a hash of every setting that changes the tokens plus the corpus digest; it names the
directory so a second identical preprocess finds it. The *fingerprint* adds the codec state hash
(fitted codebooks or weights): it is the dataset digest every later run links to.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from harmonica.config.schema import HarmonicaConfig
from harmonica.data.generated import GENERATOR_VERSION
from harmonica.data.manifest import Utterance
from harmonica.data.sentences import GRAMMAR_VERSION
from harmonica.data.text import build_frontend

CACHE_VERSION = 2
COMPLETE_MARKER = "COMPLETE"


class StaleCacheError(RuntimeError):
    """The cache on disk was built with settings other than the config's."""


def cache_settings(cfg: HarmonicaConfig) -> dict[str, Any]:
    """Everything that changes the tokens (the fingerprint inputs), as a flat JSON-able dict."""
    # codebook_sizes only when set, so caches of uniform codecs keep their keys
    codec = cfg.codec.model_dump(mode="json", exclude={"weights_path", "ladder_utterances"}
                                 | ({"codebook_sizes"} if cfg.codec.codebook_sizes is None else set()))
    frontend = build_frontend(cfg.text)
    data = cfg.data
    return {
        "cache_version": CACHE_VERSION,
        **{f"codec.{k}": v for k, v in sorted(codec.items())},
        "codec.effective_n_q": cfg.codec.effective_n_q,
        "sample_rate": cfg.codec.sample_rate,
        "data.min_duration": data.min_duration,
        "data.max_duration": data.max_duration,
        "data.trim_silence": data.trim_silence,
        "data.trim_db": data.trim_db,
        "data.normalize": data.normalize,
        "data.normalize_level_db": data.normalize_level_db,
        "data.corpus_format": data.corpus_format,
        # which corpus: two corpora with equal settings must never share a cache
        "data.corpus_dir": str(Path(data.corpus_dir).resolve()) if data.corpus_dir else "bundled",
        # a generated corpus is identified by its generator settings (it has no corpus_dir) and by the
        # versions of the code that writes it: a checkout with another grammar must not pick up the
        # newest cache of equal settings, which holds the other grammar's sentences
        **({"data.generated": data.generated.model_dump(mode="json"),
            "data.generated_code": {"grammar": GRAMMAR_VERSION, "generator": GENERATOR_VERSION}}
           if data.corpus_format == "demo_generated" else {}),
        "data.split": [data.val_fraction, data.eval_fraction, sorted(data.eval_speakers), data.split_seed],
        **{f"data.quality.{k}": v for k, v in sorted(data.quality.model_dump(mode="json").items())},
        "text.frontend": cfg.text.frontend,
        "text.vocab_hash": frontend.vocab_hash(),
        "text.max_text_len": cfg.text.max_text_len,
        "model.ar.max_seq_len": cfg.model.ar.max_seq_len,
        "model.nar.max_seq_len": cfg.model.nar.max_seq_len,
    }


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def corpus_digest(utterances: Iterable[Utterance]) -> str:
    """Content identity of a corpus manifest; paths are left out so a moved corpus still matches."""
    rows = sorted((u.id, u.speaker, u.text, u.split, round(u.duration, 3), u.sample_rate) for u in utterances)
    return _sha(rows)[:32]


def cache_key(settings: dict[str, Any], digest: str) -> str:
    return _sha({"settings": settings, "corpus": digest})[:16]


def fingerprint(key: str, codec_fingerprint: str) -> str:
    return _sha({"key": key, "codec": codec_fingerprint})[:32]


def cache_root(workdir: Path) -> Path:
    """All caches of a workdir; projects with identical token settings share one."""
    return Path(workdir) / "cache"


@dataclass
class SplitTokens:
    """All utterances of one split, concatenated; row i spans offsets[i]:offsets[i+1]."""

    codes: torch.Tensor  # [n_q, sum_T] int16
    code_offsets: torch.Tensor  # [N+1] int64
    text: torch.Tensor  # [sum_L] int16
    text_offsets: torch.Tensor  # [N+1] int64
    index: list[dict[str, Any]]

    def __len__(self) -> int:
        return len(self.index)

    def item(self, i: int) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        codes = self.codes[:, self.code_offsets[i] : self.code_offsets[i + 1]].long()  # [n_q, T]
        text = self.text[self.text_offsets[i] : self.text_offsets[i + 1]].long()  # [L]
        return text, codes, self.index[i]


def write_split(directory: Path, split: str, items: list[dict[str, Any]]) -> dict[str, float]:
    """items: dicts with id, speaker, text, text_ids (list[int]), codes (np [n_q, T]), duration."""
    n_q = items[0]["codes"].shape[0] if items else 0
    code_lens = [int(it["codes"].shape[1]) for it in items]
    text_lens = [len(it["text_ids"]) for it in items]
    codes = np.concatenate([it["codes"] for it in items], axis=1) if items else np.zeros((n_q, 0))
    text = np.concatenate([np.asarray(it["text_ids"]) for it in items]) if items else np.zeros(0)
    tensors = {
        "codes": torch.from_numpy(codes.astype(np.int16)),  # [n_q, sum_T]
        "code_offsets": torch.from_numpy(np.concatenate([[0], np.cumsum(code_lens)]).astype(np.int64)),
        "text": torch.from_numpy(text.astype(np.int16)),  # [sum_L]
        "text_offsets": torch.from_numpy(np.concatenate([[0], np.cumsum(text_lens)]).astype(np.int64)),
    }
    save_file(tensors, str(directory / f"tokens_{split}.safetensors"))
    with open(directory / f"index_{split}.jsonl", "w", encoding="utf-8") as fh:
        for it, frames in zip(items, code_lens, strict=True):
            row = {k: it[k] for k in ("id", "speaker", "text", "duration")}
            fh.write(json.dumps({**row, "frames": frames}, ensure_ascii=False) + "\n")
    seconds = float(sum(it["duration"] for it in items))
    return {"utterances": len(items), "frames": int(sum(code_lens)), "seconds": round(seconds, 3)}


@dataclass
class TokenCache:
    directory: Path
    meta: dict[str, Any]

    @property
    def fingerprint(self) -> str:
        return self.meta["fingerprint"]

    @property
    def contract(self) -> dict[str, Any]:
        return self.meta["contract"]

    def splits(self) -> list[str]:
        return sorted(self.meta["splits"])

    def load_split(self, split: str) -> SplitTokens:
        tensors = load_file(str(self.directory / f"tokens_{split}.safetensors"))
        with open(self.directory / f"index_{split}.jsonl", encoding="utf-8") as fh:
            index = [json.loads(line) for line in fh if line.strip()]
        return SplitTokens(index=index, **tensors)

    @property
    def codec_dir(self) -> Path:
        return self.directory / "codec"


def is_complete(directory: Path) -> bool:
    return (directory / COMPLETE_MARKER).is_file() and (directory / "cache.json").is_file()


class DamagedCacheError(RuntimeError):
    """A cache marked complete lacks a required part (deleted by hand, a crashed copy, an old race)."""


def missing_parts(directory: Path) -> list[str]:
    """Required parts of a complete cache that are absent or unreadable (relative paths)."""
    try:
        meta = json.loads((directory / "cache.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ["cache.json"]
    required = ["codec/codec.json", "manifests", "quality"]
    for split in meta.get("splits", {}):
        required += [f"tokens_{split}.safetensors", f"index_{split}.jsonl"]
    return [part for part in required if not (directory / part).exists()]


def open_cache(directory: Path) -> TokenCache:
    meta = json.loads((directory / "cache.json").read_text(encoding="utf-8"))
    return TokenCache(directory=directory, meta=meta)


def finalize(build: Path, final: Path, meta: dict[str, Any]) -> TokenCache:
    """Move a finished build into place; the COMPLETE marker is written last, after a check that
    every required part is there. Call with the cache's build lock held."""
    (build / "cache.json").write_text(json.dumps(meta, indent=2, sort_keys=True), encoding="utf-8")
    missing = missing_parts(build)
    if missing:
        raise DamagedCacheError(f"the cache build {build} lacks {', '.join(missing)}; not marking it complete")
    if final.exists():
        shutil.rmtree(final)  # a damaged or unmarked leftover: we hold the lock, nobody reads it
    build.rename(final)
    (final / COMPLETE_MARKER).write_text(meta["fingerprint"] + "\n", encoding="utf-8")
    return TokenCache(directory=final, meta=meta)


def fresh_dir(directory: Path) -> Path:
    """An empty build directory; a half-written cache from a killed run is discarded."""
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    return directory


def settings_diff(expected: dict[str, Any], found: dict[str, Any]) -> list[str]:
    keys = sorted(set(expected) | set(found))
    return [
        f"{k}: cache has {found.get(k, '<missing>')!r}, config says {expected.get(k, '<missing>')!r}"
        for k in keys
        if expected.get(k) != found.get(k)
    ]


def find_cache(cfg: HarmonicaConfig, workdir: Path, allow_mismatch: bool = False,
               prefer: str | None = None) -> tuple[TokenCache, list[str]]:
    """The newest complete cache built with the config's settings (any project's: equal settings,
    including the corpus, mean equal tokens). prefer: a cache fingerprint (the one a checkpoint was
    trained on) that wins over a newer cache of the same standing.

    Returns (cache, differences); differences is non-empty only when allow_mismatch let a stale
    cache through. Raises StaleCacheError (naming each differing setting) or FileNotFoundError.
    """
    root = cache_root(workdir)
    candidates = [d for d in root.glob("*") if d.is_dir() and is_complete(d)] if root.is_dir() else []
    damaged = {d: missing_parts(d) for d in candidates}
    candidates = [d for d in candidates if not damaged[d]]
    candidates.sort(key=lambda d: os.path.getmtime(d / "cache.json"), reverse=True)
    expected = cache_settings(cfg)
    caches = [open_cache(d) for d in candidates]
    caches.sort(key=lambda c: c.fingerprint != prefer)  # stable: the preferred one first, else newest first
    for cache in caches:
        if cache.meta["settings"] == expected:
            return cache, []
    own = [c for c in caches if c.meta.get("project") == cfg.project]
    for d, missing in damaged.items():
        if missing:
            try:
                same = json.loads((d / "cache.json").read_text(encoding="utf-8")).get("settings") == expected
            except (OSError, ValueError):
                same = False
            if same:
                raise DamagedCacheError(
                    f"the token cache {d} is marked complete but lacks {', '.join(missing)}: re-run "
                    f"`harmonica preprocess --project {cfg.project}`, which detects and rebuilds it"
                )
    if not own:
        raise FileNotFoundError(
            f"no token cache for project '{cfg.project}' under {root}: run "
            f"`harmonica preprocess --project {cfg.project}` first"
        )
    newest = own[0]
    diff = settings_diff(expected, newest.meta["settings"])
    if allow_mismatch:
        return newest, diff
    raise StaleCacheError(
        f"the token cache {newest.directory} was built with other settings:\n  "
        + "\n  ".join(diff)
        + f"\nre-run `harmonica preprocess --project {cfg.project}` with this config, "
        "or pass --allow-cache-mismatch to train on it anyway (recorded on the run)"
    )
