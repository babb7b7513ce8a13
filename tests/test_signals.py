"""hvae.signals: an interrupt is raised where it lands and remembered if something swallows it."""

from __future__ import annotations

import os
import signal

import pytest

from hvae import signals


@pytest.fixture
def installed():
    previous = signals.install()
    yield
    signals.restore(previous)


def _swallowed(signum: int) -> None:
    """What a library that catches everything does with the interrupt raised inside it."""
    try:
        os.kill(os.getpid(), signum)
        for _ in range(1000):  # the handler runs at one of the next bytecode boundaries
            pass
    except BaseException:
        pass


def test_nothing_received_nothing_raised(installed) -> None:
    signals.raise_if_received()


def test_a_swallowed_ctrl_c_is_raised_again(installed) -> None:
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
    _swallowed(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt) as again:
        signals.raise_if_received()
    assert type(again.value) is KeyboardInterrupt


def test_sigterm_is_terminated_once(installed) -> None:
    _swallowed(signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN  # a second one cannot cut in
    with pytest.raises(signals.Terminated):
        signals.raise_if_received()


def test_install_forgets_earlier_interrupts_and_restore_puts_handlers_back() -> None:
    before = signal.getsignal(signal.SIGINT)
    previous = signals.install()
    _swallowed(signal.SIGINT)
    signals.restore(previous)
    assert signal.getsignal(signal.SIGINT) is before
    signals.restore(signals.install())  # a new command starts clean
    signals.raise_if_received()


def test_an_ignored_signal_stays_ignored() -> None:
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        previous = signals.install()
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        signals.restore(previous)
    finally:
        signal.signal(signal.SIGINT, before)


def test_the_train_callback_stops_on_a_swallowed_interrupt(installed) -> None:
    from hvae.training.callbacks import StopOnSignal

    callback = StopOnSignal()
    callback.on_train_batch_end(0)  # nothing received: training goes on
    _swallowed(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        callback.on_train_batch_end(1)
    with pytest.raises(KeyboardInterrupt):
        callback.on_epoch_end(0)
