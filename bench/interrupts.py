"""How often Ctrl-C during Keras fit() is lost, without and with hvae.interrupts.

    python -m bench.interrupts [--trials 30] [--seed 0]

Each trial starts a 300-epoch fit() of a small MLP and sends the process SIGINT at a random
moment 0.3 to 1.5 s in. A trial in which fit() returns instead of raising KeyboardInterrupt
ran every epoch: the signal was lost (TensorFlow's `AtomicFunction.__del__` or Keras'
`pythonify_logs` swallowed it). Runs the trials with Python's own handler, then with
`interrupts.recorded()` and the RaiseIfInterrupted callback the train stage uses.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import signal
import threading

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np

from bench.args import count
from hvae import interrupts
from hvae.training.callbacks import RaiseIfInterrupted


def _lost(model: keras.Model, x: np.ndarray, trials: int, rng: random.Random, fix: bool) -> int:
    lost = 0
    for _ in range(trials):
        timer = threading.Timer(rng.uniform(0.3, 1.5), os.kill, (os.getpid(), signal.SIGINT))
        scope = interrupts.recorded() if fix else contextlib.nullcontext()
        with scope:
            timer.start()
            try:
                model.fit(
                    x, x, epochs=300, batch_size=256, verbose=0,
                    callbacks=[RaiseIfInterrupted()] if fix else [],
                )  # fmt: skip
                lost += 1
            except KeyboardInterrupt:
                pass
            timer.join()
    return lost


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=count(1, 10_000), default=30)
    parser.add_argument("--seed", type=count(0, 2**32 - 1), default=0)
    return parser


def main() -> None:
    args = build_parser().parse_args()
    # The disposition a terminal gives a program (a background job inherits SIGINT ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    x = np.random.default_rng(args.seed).random((4096, 64)).astype("float32")
    model = keras.Sequential(
        [keras.Input((64,)), keras.layers.Dense(512, activation="elu"), keras.layers.Dense(64)]
    )
    model.compile("adam", "mse", steps_per_execution=4)
    model.fit(x, x, epochs=1, batch_size=256, verbose=0)  # compile outside the trials
    rng = random.Random(args.seed)
    for fix in (False, True):
        lost = _lost(model, x, args.trials, rng, fix)
        label = "hvae.interrupts" if fix else "Python's handler"
        print(f"{label}: Ctrl-C lost in {lost} of {args.trials} fit() calls")


if __name__ == "__main__":
    main()
