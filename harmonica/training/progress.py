"""Progress on a terminal: a tqdm bar behind a three-call interface (start / update / close).

The trainer and the sweep only talk to a `Progress`; `make_progress` decides whether it is a real bar
or `NoProgress`: off when the caller says so (`--no-progress`), on DDP ranks > 0, and whenever the
stream is not a terminal (CI logs, pipes, `mlflow run` output captured to a file stay clean).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import Any, Protocol, TextIO

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

Postfix = Callable[[Mapping[str, Any]], dict[str, str]]


class Progress(Protocol):
    def start(self, total: int, initial: int = 0) -> None: ...
    def update(self, position: int, metrics: Mapping[str, Any] | None = None) -> None: ...
    def close(self) -> None: ...


class NoProgress:
    """Writes nothing."""

    def start(self, total: int, initial: int = 0) -> None:
        pass

    def update(self, position: int, metrics: Mapping[str, Any] | None = None) -> None:
        pass

    def close(self) -> None:
        pass


class BarProgress:
    """A tqdm bar on `stream`; `update` moves it to an absolute position (a resumed run starts at its
    step) and shows `postfix(metrics)` (the metrics themselves without one). A bar opened while another
    is open sits below it and vanishes when closed (a sweep's per-trial step bar under its trial bar)."""

    def __init__(self, stream: TextIO, desc: str, unit: str, postfix: Postfix | None = None,
                 every: bool = False) -> None:
        """every: draw every update (a few slow phases), not at most twice a second (many steps)."""
        self.stream, self.desc, self.unit, self.postfix, self.every = stream, desc, unit, postfix, every
        self.bar: Any = None
        self._logs: Any = None

    def start(self, total: int, initial: int = 0) -> None:
        self.close()
        self._logs = logging_redirect_tqdm()  # log lines print above the bar instead of through it
        self._logs.__enter__()
        self.bar = tqdm(total=total, initial=initial, desc=self.desc, unit=self.unit, file=self.stream,
                        leave=None, dynamic_ncols=True, mininterval=0 if self.every else 0.5, smoothing=0.1)

    def update(self, position: int, metrics: Mapping[str, Any] | None = None) -> None:
        if self.bar is None:
            return
        if metrics:
            shown = self.postfix(metrics) if self.postfix is not None else {k: str(v) for k, v in metrics.items()}
            self.bar.set_postfix(shown, refresh=False)
        self.bar.update(position - self.bar.n)
        if self.every:
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self._logs is not None:
            self._logs.__exit__(None, None, None)
            self._logs = None


def is_terminal(stream: Any) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except (ValueError, OSError):  # a closed stream
        return False


def progress_wanted(enabled: bool, stream: Any = None) -> bool:
    """What a command passes on as `progress=`: asked for and stderr (or `stream`) is a terminal."""
    return enabled and is_terminal(sys.stderr if stream is None else stream)


def make_progress(enabled: bool, desc: str, unit: str = "step", postfix: Postfix | None = None,
                  stream: TextIO | None = None, every: bool = False) -> Progress:
    stream = sys.stderr if stream is None else stream
    if not progress_wanted(enabled, stream):
        return NoProgress()
    return BarProgress(stream, desc, unit, postfix, every)


def _fmt(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"


def training_postfix(kind: str) -> Postfix:
    """loss and median codebook utilisation of the last logged window, last val loss, steps/s."""
    keys = {"loss": f"{kind}/loss", "util": f"{kind}/util_pred_median", "val": "val/loss",
            "steps/s": "throughput/steps_per_sec"}

    def postfix(metrics: Mapping[str, float]) -> dict[str, str]:
        return {label: _fmt(float(metrics[key])) for label, key in keys.items() if key in metrics}

    return postfix
