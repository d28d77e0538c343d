"""Corpus manifests: the utterance records every later stage (cache, training, eval) consumes.

A manifest is a JSON-lines file, one utterance a line, so it can be streamed, diffed and grepped.
Rejected inputs are kept in their own file instead of being dropped, so a shrinking corpus is
always explainable.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "val", "eval", "prompt")
_UTT_KEYS: tuple[str, ...] = ("id", "speaker", "text", "path", "duration", "sample_rate", "split")


@dataclass(frozen=True)
class Utterance:
    """One usable recording. `path` is absolute (or relative to the working directory)."""

    id: str
    speaker: str
    text: str
    path: str
    duration: float
    sample_rate: int
    split: str

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(f"utterance {self.id!r}: split {self.split!r} is not one of {SPLITS}")

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in _UTT_KEYS}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Utterance:
        missing = [k for k in _UTT_KEYS if k not in d]
        if missing:
            raise ValueError(f"manifest row lacks keys {missing}: {d!r}")
        return cls(
            id=str(d["id"]),
            speaker=str(d["speaker"]),
            text=str(d["text"]),
            path=str(d["path"]),
            duration=float(d["duration"]),
            sample_rate=int(d["sample_rate"]),
            split=str(d["split"]),
        )


@dataclass
class Rejection:
    """An input that was not turned into an Utterance; `reason` is a machine-readable code."""

    id: str
    path: str
    reason: str
    detail: str = ""
    speaker: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Rejection:
        return cls(
            id=str(d["id"]),
            path=str(d.get("path", "")),
            reason=str(d["reason"]),
            detail=str(d.get("detail", "")),
            speaker=str(d.get("speaker", "")),
        )


def _write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write-then-rename so a crash never leaves a half-written manifest that looks complete.
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path


def _read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e})") from e
    return rows


def write_manifest(path: str | Path, utts: Iterable[Utterance]) -> Path:
    return _write_jsonl(path, (u.to_dict() for u in utts))


def read_manifest(path: str | Path) -> list[Utterance]:
    return [Utterance.from_dict(d) for d in _read_jsonl(path)]


def write_rejections(path: str | Path, rejected: Iterable[Rejection]) -> Path:
    return _write_jsonl(path, (r.to_dict() for r in rejected))


def read_rejections(path: str | Path) -> list[Rejection]:
    return [Rejection.from_dict(d) for d in _read_jsonl(path)]


@dataclass
class CorpusManifests:
    """What a corpus recipe returns: usable utterances (all splits) plus every rejection."""

    utterances: list[Utterance] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)

    def by_split(self, name: str) -> list[Utterance]:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; expected one of {SPLITS}")
        return [u for u in self.utterances if u.split == name]

    @property
    def speakers(self) -> list[str]:
        return sorted({u.speaker for u in self.utterances})

    def split_counts(self) -> dict[str, int]:
        return {s: len(self.by_split(s)) for s in SPLITS}

    def write(self, out_dir: str | Path) -> dict[str, Path]:
        """Write manifest_<split>.jsonl for every split (empty ones too) and rejected.jsonl."""
        out = Path(out_dir)
        paths = {s: write_manifest(out / f"manifest_{s}.jsonl", self.by_split(s)) for s in SPLITS}
        paths["rejected"] = write_rejections(out / "rejected.jsonl", self.rejected)
        logger.info("wrote manifests to %s: %s, %d rejected", out, self.split_counts(), len(self.rejected))
        return paths

    @classmethod
    def read(cls, out_dir: str | Path) -> CorpusManifests:
        out = Path(out_dir)
        utts = [u for s in SPLITS if (out / f"manifest_{s}.jsonl").exists()
                for u in read_manifest(out / f"manifest_{s}.jsonl")]
        rej_path = out / "rejected.jsonl"
        return cls(utts, read_rejections(rej_path) if rej_path.exists() else [])
