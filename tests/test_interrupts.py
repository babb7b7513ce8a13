"""Ctrl-C and SIGTERM survive library code that swallows KeyboardInterrupt (hvae.interrupts).

Each test swallows the exception the way TensorFlow's `AtomicFunction.__del__` and Keras'
`pythonify_logs` do, and checks that the signal still ends the work.
"""

from __future__ import annotations

import contextlib
import io
import signal

import keras
import numpy as np
import pytest

from hvae import cli, interrupts
from hvae.progress import Progress
from hvae.training.callbacks import RaiseIfInterrupted


@pytest.fixture(autouse=True)
def default_handlers():
    """The dispositions a terminal gives a program (a pytest worker may inherit others)."""
    previous = {
        signal.SIGINT: signal.signal(signal.SIGINT, signal.default_int_handler),
        signal.SIGTERM: signal.signal(signal.SIGTERM, signal.SIG_DFL),
    }
    yield
    for signum, handler in previous.items():
        signal.signal(signum, handler)


def _swallowed(signum: int) -> None:
    with contextlib.suppress(BaseException):  # what the library code does
        signal.raise_signal(signum)


@pytest.mark.parametrize(
    ("signum", "raised"),
    [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, interrupts.Terminated)],
)
def test_a_swallowed_signal_is_raised_again(signum: int, raised: type) -> None:
    with interrupts.recorded():
        interrupts.raise_if_received()  # nothing received: a no-op
        _swallowed(signum)
        with pytest.raises(raised) as info:
            interrupts.raise_if_received()
    assert type(info.value) is raised
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_a_signal_the_parent_ignores_stays_ignored() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with interrupts.recorded():
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        signal.raise_signal(signal.SIGINT)  # would raise if it were handled
        interrupts.raise_if_received()


def test_a_second_sigterm_does_not_break_off_the_clean_up() -> None:
    with interrupts.recorded(), pytest.raises(interrupts.Terminated):
        try:
            signal.raise_signal(signal.SIGTERM)
        finally:
            signal.raise_signal(signal.SIGTERM)  # ignored: the clean-up goes on


def test_nothing_is_raised_again_outside_the_block_or_in_the_next() -> None:
    with interrupts.recorded():
        _swallowed(signal.SIGINT)
    interrupts.raise_if_received()
    with interrupts.recorded():
        interrupts.raise_if_received()


def test_fit_stops_at_the_batch_where_keras_swallowed_ctrl_c() -> None:
    class SwallowAtBatch3(keras.callbacks.Callback):
        batches = 0

        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            SwallowAtBatch3.batches += 1
            if SwallowAtBatch3.batches == 3:
                _swallowed(signal.SIGINT)

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    x = np.zeros((64, 4), "float32")
    with interrupts.recorded(), pytest.raises(KeyboardInterrupt):
        model.fit(
            x, x[:, :1], batch_size=8, epochs=5, verbose=0,
            callbacks=[SwallowAtBatch3(), RaiseIfInterrupted()],
        )  # fmt: skip
    assert SwallowAtBatch3.batches == 3  # not the 40 of all five epochs


def test_a_scoring_loop_stops_at_its_next_progress_step() -> None:
    progress = Progress("scoring", total=10, stream=io.StringIO())
    with interrupts.recorded():
        progress.advance(1)
        _swallowed(signal.SIGINT)
        with pytest.raises(KeyboardInterrupt):
            progress.advance(1)
    assert progress.done == 1


def test_a_command_that_swallowed_ctrl_c_exits_130_not_0(monkeypatch, capsys) -> None:
    def run(args) -> None:
        _swallowed(signal.SIGINT)  # and then the stage finished as though nothing happened

    monkeypatch.setattr(cli, "_run", run)
    assert cli.main(["prepare"]) == 130
    captured = capsys.readouterr()
    assert captured.err == "hvae prepare: interrupted\n"
    assert "done in" not in captured.out
