"""Peak memory of in-process scoring against the rows of one request.

    python -m bench.predict_memory [--rows 100 5000] [--iw-samples 40]

For each row count a fresh process saves a model of the params.yaml architecture (untrained
weights: as costly to score as a trained one), loads it with HVAEScorer, builds a DataFrame of
random grey levels, and reads its peak resident memory (VmHWM) before and after `predict`.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile

from bench.args import count
from hvae.serving.pyfunc import MAX_IW_SAMPLES, MAX_ROWS

CHILD = """
import sys, tempfile
from pathlib import Path
import keras, numpy as np, pandas as pd
from hvae import artifacts
from hvae.config import load_params
from hvae.model import build_model
from hvae.serving.pyfunc import HVAEScorer

def peak_mib():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024

rows, k = int(sys.argv[1]), int(sys.argv[2])
m = load_params("params.yaml").model
keras.utils.set_random_seed(0)
model = build_model({"latent_dims": m.latent_dims, "hidden_dim": m.hidden_dim,
                     "blocks_per_layer": m.blocks_per_layer, "min_sigma": m.min_sigma,
                     "activation": m.activation})
folder = Path(tempfile.mkdtemp())
model.save_weights(folder / artifacts.WEIGHTS)
artifacts.save_config(model, folder)
scorer = HVAEScorer(folder)
frame = pd.DataFrame(np.random.default_rng(1).integers(0, 256, (rows, 784)).astype(np.float64))
before = peak_mib()
scorer.predict(frame, {"iw_samples": k})
print(f"{rows} rows, k={k}: peak {before:.0f} MiB before predict, {peak_mib():.0f} MiB after")
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=count(1, MAX_ROWS), nargs="+", default=[100, 5000])
    parser.add_argument("--iw-samples", type=count(1, MAX_IW_SAMPLES), default=40)
    return parser


def main() -> None:
    args = build_parser().parse_args()
    for rows in args.rows:
        with tempfile.TemporaryDirectory():
            subprocess.run(
                [sys.executable, "-c", CHILD, str(rows), str(args.iw_samples)], check=True
            )


if __name__ == "__main__":
    main()
