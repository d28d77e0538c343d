"""Live metrics that stay unique per step across kill + resume.

MLflow keeps every value ever logged for a (key, step). A run killed between two checkpoints and
resumed from the older one recomputes the steps in between; resume is exact (weights, optimizer,
schedules, sampler and RNG states all come from the checkpoint), so those recomputed values are
the ones already logged. `ResumeDedupMetrics` sends every metric at once -- the live curves
advance every `log_every` steps -- and, on a resumed run, drops a key's value at a step that the
run's history of that key already holds. Every history then has unique steps, equal to an
uninterrupted run's. Stepped images likewise: an image of a key at a step the run already has an image
of is dropped. Tags, texts and artifacts pass through unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any


class ResumeDedupMetrics:
    def __init__(self, sink: Any, history: Callable[[str], list[tuple[int, float]]] | None = None,
                 image_steps: Callable[[], Mapping[str, Sequence[int]]] | None = None) -> None:
        """history: key -> [(step, value)] of the run being resumed; image_steps: its images' key -> steps;
        None for a new run."""
        self.sink = sink
        self.history = history
        self.image_steps = image_steps
        self._image_last: dict[str, int] | None = None  # image key -> last step the run already had
        self.logged_to: dict[str, int] = {}  # key -> last step the run already had before this process

    def _last_logged(self, key: str) -> int:
        if key not in self.logged_to:
            steps = [s for s, _ in self.history(key)] if self.history is not None else []
            self.logged_to[key] = max(steps, default=-1)
        return self.logged_to[key]

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None, **links: Any) -> None:
        """links: the sink's model/dataset links (model_ids=, dataset=), passed on unchanged."""
        if self.history is not None and step is not None:
            metrics = {k: v for k, v in metrics.items() if step > self._last_logged(k)}
        if metrics:
            self.sink.log_metrics(dict(metrics), step=step, **links)

    def log_image(self, key: str, image: Any, step: int) -> None:
        if self.image_steps is not None:
            if self._image_last is None:
                self._image_last = {k: max(v, default=-1) for k, v in self.image_steps().items()}
            if step <= self._image_last.get(key, -1):
                return
        self.sink.log_image(key, image, step)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sink, name)
