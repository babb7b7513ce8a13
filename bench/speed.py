"""Training speed of the default model, in one run on this machine.

    python -m bench.speed [--params params.yaml] [--steps 200] [--rounds 3]

Prints (1) examples/s of the project's compiled train step and of the seed notebook's eager
GradientTape loop (batch 64), and their ratio; (2) model FLOP utilisation: the train step's
achieved FLOP/s against this machine's matmul throughput, measured in the same rounds, in
float32 and in bfloat16 (whatever train.precision computes in; on a CPU without bfloat16
instructions the bfloat16 "peak" is TensorFlow's emulation, and says so).
Both ratios come from one run, so a busy shared machine slows numerator and denominator alike.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf

from bench.args import count
from bench.seed_vae import eager_examples_per_second
from hvae.config import load_params
from hvae.data.pipeline import train_dataset
from hvae.training import precision
from hvae.training.fit import compiled_model


def compiled_examples_per_second(model, data: tf.data.Dataset, batch: int, steps: int) -> float:
    started = time.perf_counter()
    model.fit(data, epochs=1, steps_per_epoch=steps, verbose=0, shuffle=False)
    return steps * batch / (time.perf_counter() - started)


def matmul_flops_per_second(dtype: str = "float32", n: int = 2048, repeats: int = 20) -> float:
    """Sustained matmul throughput in `dtype`, the machine's practical peak."""
    a = tf.cast(tf.random.normal((n, n)), dtype)
    b = tf.cast(tf.random.normal((n, n)), dtype)

    @tf.function
    def chain():
        # Each product feeds the next, so no matmul can be skipped or merged by the compiler.
        x = a
        for _ in range(repeats):
            x = tf.matmul(x, b) * (1.0 / n**0.5)
        return x

    chain().numpy()
    started = time.perf_counter()
    chain().numpy()
    return 2 * n**3 * repeats / (time.perf_counter() - started)


def train_step_flops_per_example(model) -> int:
    """6 FLOPs per weight of every matmul (2 forward, 4 backward): each Dense kernel is used
    once per example. Elementwise work (activations, sampling, KL) is not counted, so the
    utilisation below is a slight underestimate."""
    kernels = sum(int(np.prod(w.shape)) for w in model.trainable_weights if "kernel" in w.path)
    return 6 * kernels


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--steps", type=count(1, 100_000), default=200)
    parser.add_argument("--rounds", type=count(1, 100), default=3)
    return parser


def main() -> None:
    args = build_parser().parse_args()
    params = load_params(args.params)
    keras.utils.set_random_seed(0)
    images = np.random.default_rng(0).integers(0, 256, (20_000, 28, 28), dtype=np.uint8)

    model = compiled_model(params, steps_per_epoch=len(images) // params.train.batch_size)
    batch = params.train.batch_size
    data = train_dataset(images, batch, seed=0).repeat()
    # Warm-up: tracing, oneDNN primitive caches, tf.data buffers.
    compiled_examples_per_second(model, data, batch, 5 * params.train.steps_per_execution)

    # Interleaved rounds, so a neighbour's load slows every measurement alike; medians.
    # The train step's matmuls run in its compute dtype (train.precision); its share of both
    # peaks is reported, so runs on machines with and without bfloat16 compare.
    compute = model.compute_dtype
    peak_dtypes = ["float32", "bfloat16"]
    ours, seed, peaks = [], [], {d: [] for d in peak_dtypes}
    for _ in range(args.rounds):
        ours.append(compiled_examples_per_second(model, data, batch, args.steps))
        seed.append(eager_examples_per_second(images / 255.0, steps=args.steps))
        for dtype in peak_dtypes:
            peaks[dtype].append(matmul_flops_per_second(dtype))
    ours_eps, seed_eps = float(np.median(ours)), float(np.median(seed))
    peak = {d: float(np.median(v)) for d, v in peaks.items()}
    print(f"threads: {tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count()}")
    print(f"rounds: {args.rounds}, {args.steps} steps each; medians below")
    for i, (o, e) in enumerate(zip(ours, seed, strict=True)):
        matmul = ", ".join(f"{d} {peaks[d][i] / 1e9:.0f}" for d in peak_dtypes)
        print(f"  round {i + 1}: project {o:.0f} ex/s, seed {e:.0f} ex/s, matmul GFLOP/s {matmul}")
    print(f"train throughput, project (compiled, batch {batch}, {compute}): "
          f"{ours_eps:10.0f} examples/s")  # fmt: skip
    print(f"train throughput, seed loop (eager, batch 64, float32): {seed_eps:10.0f} examples/s")
    print(f"ratio project / seed: {ours_eps / seed_eps:.1f}x")

    per_example = train_step_flops_per_example(model)
    achieved = ours_eps * per_example
    print(f"train step: {per_example / 1e6:.2f} MFLOP per example, {achieved / 1e9:.1f} GFLOP/s")
    for dtype in reversed(peak_dtypes):
        utilisation = 100 * achieved / peak[dtype]
        note = " (the step's compute dtype)" if dtype == compute else ""
        print(f"{dtype} matmul peak (2048^3, measured now): {peak[dtype] / 1e9:.1f} GFLOP/s; "
              f"share of it reached by the train step: {utilisation:.0f} %{note}")  # fmt: skip
    if not precision.bfloat16_is_native():
        print("no native bfloat16 matmuls (AMX, AVX-512 BF16, a GPU) here: that peak is emulated")


if __name__ == "__main__":
    main()
