"""Signals inside the training loop are raised at the next step boundary; a second one at once."""

from __future__ import annotations

import os
import signal

import pytest

from harmonica import interrupts


@pytest.fixture(autouse=True)
def python_default_handlers():
    """As in a terminal: SIGINT raises KeyboardInterrupt (a worker started with `&` may ignore it)."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    yield
    for s, h in saved.items():
        signal.signal(s, h)


@pytest.mark.parametrize("sig, exc", [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, interrupts.Terminated)])
def test_first_signal_waits_for_check(sig, exc, capfd):
    reached = []
    with pytest.raises(exc):
        with interrupts.at_step_boundaries():
            os.kill(os.getpid(), sig)
            reached.append("after the signal")  # the step goes on
            interrupts.check()
            reached.append("after check")
    assert reached == ["after the signal"]
    assert "stopping after this step" in capfd.readouterr().err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored
    interrupts.check()  # nothing left pending


def test_second_signal_raises_at_once():
    reached = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts.at_step_boundaries():
            os.kill(os.getpid(), signal.SIGINT)
            reached.append(1)
            os.kill(os.getpid(), signal.SIGINT)
            reached.append(2)
    assert reached == [1]
    interrupts.check()


def test_signal_after_the_last_check_is_raised_on_exit():
    with pytest.raises(KeyboardInterrupt):
        with interrupts.at_step_boundaries():
            interrupts.check()
            os.kill(os.getpid(), signal.SIGINT)
    interrupts.check()


def test_ignored_sigint_stays_ignored():
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with interrupts.at_step_boundaries():
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        os.kill(os.getpid(), signal.SIGINT)
        interrupts.check()
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def test_outside_the_loop_a_signal_raises_where_it_lands():
    interrupts.install()
    with pytest.raises(interrupts.Terminated):
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):  # the handler runs between bytecodes, before the loop ends
            pass
