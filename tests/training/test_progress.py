"""The progress module: a bar on a terminal with the training postfix, nothing otherwise; the trainer
drives it over optimizer steps and a resumed run starts at its step."""

import io

import pytest
import torch

from harmonica.data.cache import find_cache
from harmonica.training import checkpoint as ckpt
from harmonica.training.progress import (BarProgress, LineProgress, NoProgress, make_progress, progress_wanted,
                                         training_postfix)
from harmonica.training.trainer import Trainer
from tests.tiny import RecordingSink, tiny_cfg, tiny_steps


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


METRICS = {"ar/loss": 4.56789, "ar/util_pred_median": 0.4375, "val/loss": 5.25, "throughput/steps_per_sec": 12.5,
           "ar/cb0/ce": 9.0}


def test_a_bar_on_a_terminal_shows_steps_total_and_the_postfix_fields():
    stream = Terminal()
    bar = make_progress(True, "train ar", postfix=training_postfix("ar"), stream=stream)
    assert isinstance(bar, BarProgress)
    bar.start(10, initial=3)
    bar.update(4)
    bar.update(6, METRICS)
    bar.close()
    out = stream.getvalue()
    assert "train ar" in out and "3/10" in out  # the first draw is at the resumed step
    last = out.split("\r")[-1]
    assert "6/10" in last
    for field in ("loss=4.57", "util=0.438", "val=5.25", "steps/s=12.5"):
        assert field in last, (field, last)
    assert "ce" not in last  # only the chosen fields


def test_a_bar_without_a_postfix_function_shows_the_fields_as_given():
    stream = Terminal()
    bar = make_progress(True, "sweep s", unit="trial", stream=stream)
    bar.start(3)
    bar.update(1, {"best": "#0 val/loss=1.2"})
    bar.close()
    assert "1/3" in stream.getvalue() and "best=#0 val/loss=1.2" in stream.getvalue()


@pytest.mark.parametrize("stream", [Terminal(), io.StringIO()], ids=["terminal", "not a terminal"])
def test_no_progress_writes_nothing(stream):
    bar = make_progress(False, "train ar", postfix=training_postfix("ar"), stream=stream)
    assert isinstance(bar, NoProgress)
    bar.start(10, initial=2)
    bar.update(5, METRICS)
    bar.close()
    assert stream.getvalue() == ""


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_not_a_terminal_gets_a_plain_line_a_minute_and_one_at_the_end():
    """nohup / CI / a pipe: no carriage returns, a line when a minute has passed, the ETA from the steps
    done in this process (a resumed run's earlier steps do not count), and the last position at close."""
    stream, clock = io.StringIO(), Clock()
    bar = make_progress(True, "train ar", postfix=training_postfix("ar"), stream=stream)
    assert isinstance(bar, LineProgress)
    bar.clock = clock
    bar.start(100, initial=20)
    for step in range(21, 31):  # 10 steps in 59 s: not yet a minute
        clock.now += 5.9
        bar.update(step, METRICS)
    assert stream.getvalue() == ""
    clock.now += 1.0
    bar.update(31, METRICS)  # 60 s: a line; 11 steps in 60 s, 69 to go -> ~376 s
    clock.now += 30.0
    bar.update(40)  # not a minute since the last line
    bar.close()  # moved since the last line: a final one
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue() and len(lines) == 2, lines
    assert lines[0] == "train ar: 31/100 step (31%) loss=4.57 util=0.438 val=5.25 steps/s=12.5 [1:00 elapsed, ~6:16 left]"
    assert lines[1].startswith("train ar: 40/100 step (40%) loss=4.57") and "[1:30 elapsed, ~4:30 left]" in lines[1]


def test_lines_every_update_for_few_slow_phases_and_no_repeat_at_close():
    stream = io.StringIO()
    bar = make_progress(True, "sweep s", unit="trial", stream=stream, every=True)
    bar.start(3)
    bar.update(1, {"best": "#0 val/loss=1.2"})
    bar.close()  # nothing moved since the last line
    bar.update(2)  # closed: ignored
    assert stream.getvalue().splitlines() == ["sweep s: 1/3 trial (33%) best=#0 val/loss=1.2 [0:00 elapsed, ~0:00 left]"]


def test_progress_items_yields_every_item_and_closes_the_progress():
    stream = io.StringIO()
    import harmonica.training.progress as progress

    seen = list(progress.progress_items(True, ["a", "b", "c"], "evaluate", "utt", stream=stream))
    assert seen == ["a", "b", "c"]
    assert stream.getvalue().startswith("evaluate: 3/3 utt (100%) [")  # a quick loop: only the closing line
    assert list(progress.progress_items(False, [1, 2], "evaluate", "utt", stream=stream)) == [1, 2]


def test_progress_wanted_needs_the_flag_and_a_terminal():
    assert progress_wanted(True, Terminal()) and not progress_wanted(False, Terminal())
    assert not progress_wanted(True, io.StringIO())
    closed = io.StringIO()
    closed.close()  # isatty() raises on a closed stream
    assert not progress_wanted(True, closed)


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def start(self, total, initial=0):
        self.calls.append(("start", total, initial))

    def update(self, position, metrics=None):
        self.calls.append(("update", position, dict(metrics or {})))

    def close(self):
        self.calls.append(("close",))


def test_the_trainer_drives_the_bar_and_a_resume_starts_at_its_step(tiny_corpus, tiny_cache_workdir, tmp_path):
    cfg = tiny_cfg(tiny_corpus, *tiny_steps("ar"))
    cache, _ = find_cache(cfg, tiny_cache_workdir)
    rec = Recorder()
    Trainer(cfg, "ar", cache, tmp_path / "ckpt", RecordingSink(), device=torch.device("cpu"), progress=rec).fit()
    assert rec.calls[0] == ("start", 8, 0) and rec.calls[-1] == ("close",)
    updates = [c for c in rec.calls if c[0] == "update"]
    assert [c[1] for c in updates] == list(range(1, 9))
    assert "ar/loss" not in updates[0][2] and "ar/loss" in updates[1][2]  # logged every 2 steps
    assert "val/loss" in updates[3][2]  # validated at step 4
    assert set(training_postfix("ar")(updates[-1][2])) == {"loss", "util", "val", "steps/s"}

    step4 = next(p for p in ckpt.list_checkpoints(tmp_path / "ckpt") if ckpt.read_meta(p)["step"] == 4)
    again = Recorder()
    Trainer(cfg, "ar", cache, tmp_path / "ckpt2", RecordingSink(), device=torch.device("cpu"),
            progress=again).fit(resume_from=step4)
    assert again.calls[0] == ("start", 8, 4)
    assert [c[1] for c in again.calls if c[0] == "update"] == [5, 6, 7, 8]


def test_the_bar_is_closed_when_training_fails(tiny_corpus, tiny_cache_workdir, tmp_path):
    cfg = tiny_cfg(tiny_corpus, *tiny_steps("ar"))
    cache, _ = find_cache(cfg, tiny_cache_workdir)
    rec = Recorder()
    trainer = Trainer(cfg, "ar", cache, tmp_path / "ckpt", RecordingSink(fail_at_step=2), device=torch.device("cpu"),
                      progress=rec)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    assert rec.calls[-1] == ("close",)


def test_log_lines_print_above_an_open_bar(monkeypatch):
    import logging
    import sys

    stream = Terminal()
    monkeypatch.setattr(sys, "stderr", stream)
    handler = logging.StreamHandler()  # a console handler on stderr, as setup_logging installs
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        bar = make_progress(True, "train ar")
        bar.start(4)
        bar.update(1)
        logging.getLogger("harmonica.test").warning("COLLAPSE somewhere")
        bar.close()
        assert handler in root.handlers  # the console handler is back after the bar
    finally:
        root.removeHandler(handler)
    text = stream.getvalue()
    # the bar's line is blanked, the message gets its own line, the bar is drawn again below it
    before, after = text.split("COLLAPSE somewhere\n")
    assert before.endswith(" \r") and after.startswith("\rtrain ar:"), repr(text)
