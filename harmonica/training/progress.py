"""Progress behind a three-call interface (start / update / close): a tqdm bar on a terminal, plain lines
elsewhere.

The trainer and the sweep only talk to a `Progress`; `make_progress` decides what it is: `NoProgress` when
the caller says so (`--no-progress`) and on DDP ranks > 0; a `BarProgress` when the stream is a terminal;
otherwise (nohup, CI logs, pipes, `mlflow run` output captured to a file) a `LineProgress`: one plain line
at most every minute and one at the end, so a 20-minute training in a log file says where it is without
filling the log with carriage returns.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator, Mapping
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


class LineProgress:
    """Plain lines on `stream` (not a terminal): `desc: 1200/2800 (43%) loss=2.1 ... [5:41 elapsed, ~7:30 left]`
    when `interval` seconds have passed since the last line (every update with `every`), and at close
    when the position moved since the last line."""

    def __init__(self, stream: TextIO, desc: str, unit: str, postfix: Postfix | None = None,
                 every: bool = False, interval: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.stream, self.desc, self.unit, self.postfix = stream, desc, unit, postfix
        self.interval, self.clock = 0.0 if every else interval, clock
        self.total = self.initial = self.position = self.shown = 0
        self.metrics: Mapping[str, Any] = {}
        self.started = self.last = 0.0
        self.open = False

    def start(self, total: int, initial: int = 0) -> None:
        self.close()
        self.total, self.initial, self.position, self.shown = total, initial, initial, initial
        self.metrics, self.open = {}, True
        self.started = self.last = self.clock()

    def update(self, position: int, metrics: Mapping[str, Any] | None = None) -> None:
        if not self.open:
            return
        self.position, self.metrics = position, metrics or self.metrics
        if self.clock() - self.last >= self.interval:
            self._line()

    def close(self) -> None:
        if self.open and self.position != self.shown:
            self._line()
        self.open = False

    def _line(self) -> None:
        now = self.clock()
        self.last, self.shown = now, self.position
        elapsed, done = now - self.started, self.position - self.initial
        fields = ""
        if self.metrics:
            shown = self.postfix(self.metrics) if self.postfix is not None else {k: str(v) for k, v in self.metrics.items()}
            fields = " " + " ".join(f"{k}={v}" for k, v in shown.items())
        pct = f" ({100 * self.position / self.total:.0f}%)" if self.total else ""
        timing = f"{_clock(elapsed)} elapsed"
        if 0 < done and self.position < self.total:
            timing += f", ~{_clock(elapsed / done * (self.total - self.position))} left"
        self.stream.write(f"{self.desc}: {self.position}/{self.total} {self.unit}{pct}{fields} [{timing}]\n")
        self.stream.flush()


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}" if minutes >= 60 else f"{minutes}:{secs:02d}"


def is_terminal(stream: Any) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except (ValueError, OSError):  # a closed stream
        return False


def progress_wanted(enabled: bool, stream: Any = None) -> bool:
    """Whether a bar may be drawn (tqdm loops of their own): asked for and stderr (or `stream`) is a terminal."""
    return enabled and is_terminal(sys.stderr if stream is None else stream)


def make_progress(enabled: bool, desc: str, unit: str = "step", postfix: Postfix | None = None,
                  stream: TextIO | None = None, every: bool = False) -> Progress:
    """enabled: the command's progress wish (not --no-progress); a bar on a terminal, lines elsewhere."""
    stream = sys.stderr if stream is None else stream
    if not enabled:
        return NoProgress()
    if is_terminal(stream):
        return BarProgress(stream, desc, unit, postfix, every)
    return LineProgress(stream, desc, unit, postfix, every)


def progress_items(enabled: bool, items: list[Any], desc: str, unit: str,
                   stream: TextIO | None = None) -> Iterator[Any]:
    """`items` one by one under `make_progress` (a bar or lines): the loop of a long stage over a list."""
    bar = make_progress(enabled, desc, unit=unit, stream=stream)
    bar.start(len(items))
    try:
        for i, item in enumerate(items):
            yield item
            bar.update(i + 1)
    finally:
        bar.close()


def _fmt(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"


def training_postfix(kind: str) -> Postfix:
    """loss and median codebook utilisation of the last logged window, last val loss, steps/s."""
    keys = {"loss": f"{kind}/loss", "util": f"{kind}/util_pred_median", "val": "val/loss",
            "steps/s": "throughput/steps_per_sec"}

    def postfix(metrics: Mapping[str, float]) -> dict[str, str]:
        return {label: _fmt(float(metrics[key])) for label, key in keys.items() if key in metrics}

    return postfix
