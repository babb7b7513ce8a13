"""One measurement of bench.determinism, in its own process: argv params, steps, deterministic."""

from __future__ import annotations

import json
import sys
import time

from hvae.training import determinism


def main() -> None:
    path, steps, deterministic = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
    determinism.configure(deterministic)  # before any other TensorFlow work

    import keras
    import numpy as np

    from hvae.config import load_params
    from hvae.data.pipeline import train_dataset
    from hvae.training.distribute import weights_digest
    from hvae.training.fit import compiled_model

    params = load_params(path)
    batch = params.train.batch_size
    keras.utils.set_random_seed(params.seed)
    images = np.random.default_rng(0).integers(0, 256, (20 * batch, 28, 28), dtype=np.uint8)
    model = compiled_model(params, steps_per_epoch=20)
    data = train_dataset(images, batch, seed=0).repeat()
    warmup = 2 * params.train.steps_per_execution  # tracing and oneDNN caches, not timed
    model.fit(data, epochs=1, steps_per_epoch=warmup, verbose=0, shuffle=False)
    started = time.perf_counter()
    model.fit(data, epochs=1, steps_per_epoch=steps, verbose=0, shuffle=False)
    seconds = time.perf_counter() - started
    print(
        json.dumps(
            {
                "examples_per_second": steps * batch / seconds,
                "digest": weights_digest(model),
                "policy": model.dtype_policy.name,
            }
        )
    )


if __name__ == "__main__":
    main()
