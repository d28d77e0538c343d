"""What the trainer keeps and returns, and what it needs from a tracking run.

`TrainState` is the trainer's counters and records, saved whole in every checkpoint's trainer state and
restored by `--resume`; `TrainResult` is what `fit` returns; `MetricSink` is the tracking run as the trainer
sees it (the adapter's `Run`, a resume de-duplicating wrapper, or a no-op on ranks > 0).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


class MetricSink(Protocol):
    """What the trainer needs from a tracking run (the adapter's `Run`, or a no-op on rank > 0)."""

    def log_metrics(self, metrics: dict[str, float], step: int | None = None, **links: Any) -> None: ...
    def set_tags(self, tags: dict[str, Any]) -> None: ...
    def log_artifacts(self, directory: Path | str, artifact_path: str | None = None) -> None: ...
    def log_text(self, text: str, artifact_file: str) -> None: ...
    def publish_checkpoint(self, directory: Path, *, kind: str, step: int, params: dict[str, Any],
                           tags: dict[str, str]) -> dict[str, str] | None: ...
    def prune_checkpoint_models(self, keep_steps: set[int]) -> None: ...
    def log_image(self, key: str, image: Any, step: int) -> None: ...


@dataclass
class TrainState:
    step: int = 0  # optimizer steps taken
    best_value: float | None = None
    best_step: int | None = None
    collapse_events: list[dict[str, Any]] = field(default_factory=list)
    instability_events: list[dict[str, Any]] = field(default_factory=list)
    stop_reason: str | None = None
    tokens_seen: int = 0
    util_history: list[dict[str, Any]] = field(default_factory=list)  # figures.util_entry per validation
    # the newest validation's record for the tracking store ({step, metrics, better, early_stop}): saved with the
    # checkpoint of that step, so a run killed between the checkpoint and the record logs it when resumed
    last_validation: dict[str, Any] | None = None


@dataclass
class TrainResult:
    state: TrainState
    last_checkpoint: Path | None
    best_checkpoint: Path | None
    final_metrics: dict[str, float]
