"""What train.deterministic costs, and whether the weights repeat, in one run on this machine.

    python -m bench.determinism [--params params.yaml] [--steps 150] [--rounds 3] [--load]

Each round trains the default model (train.precision as configured) from the same seed for
`--steps` optimizer steps on the same synthetic data, once with train.deterministic true and
once false, each in a fresh process (TensorFlow's thread settings are fixed once its runtime
starts), interleaved so a neighbour's load slows both alike. Prints examples/s per mode (the
median and the ratio) and every run's weights digest. `--load` runs two busy loops beside
every measurement, as on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

from bench.args import count

CHILD = "bench.determinism_child"


def _child(params: str, steps: int, deterministic: bool) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", CHILD, params, str(steps), str(int(deterministic))],
        capture_output=True, text=True, check=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--steps", type=count(1, 100_000), default=150)
    parser.add_argument("--rounds", type=count(1, 100), default=3)
    parser.add_argument("--load", action="store_true", help="two busy loops beside each run")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    results: dict[bool, list[dict]] = {True: [], False: []}
    for i in range(args.rounds):
        for deterministic in (True, False):
            busy = []
            if args.load:
                loop = "import time\nt = time.time() + 3600\nwhile time.time() < t: pass"
                busy = [subprocess.Popen([sys.executable, "-c", loop]) for _ in range(2)]
            started = time.perf_counter()
            try:
                result = _child(args.params, args.steps, deterministic)
            finally:
                for process in busy:
                    process.kill()
                    process.wait()
            results[deterministic].append(result)
            print(
                f"round {i + 1}, deterministic={deterministic}: {result['examples_per_second']:.0f}"
                f" ex/s, weights {result['digest']}, {time.perf_counter() - started:.0f} s",
                flush=True,
            )
    speeds = {d: [r["examples_per_second"] for r in v] for d, v in results.items()}
    median = {d: float(np.median(v)) for d, v in speeds.items()}
    digests = {r["digest"] for v in results.values() for r in v}
    print(f"load: {'two busy loops' if args.load else 'none'}; precision {result['policy']}")
    print(f"median examples/s: deterministic {median[True]:.0f}, not {median[False]:.0f}")
    print(f"cost of train.deterministic: {100 * (1 - median[True] / median[False]):.1f} % slower")
    print(f"distinct weights digests over {2 * args.rounds} runs: {len(digests)} {sorted(digests)}")


if __name__ == "__main__":
    main()
