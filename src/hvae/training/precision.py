"""train.precision: which compute dtype training uses on this machine.

`auto` trains in mixed bfloat16 where the hardware multiplies bfloat16 natively (CPUs with
AMX or AVX512-BF16, GPUs of compute capability 8.0 and up) and in float32 elsewhere, where
emulated bfloat16 would be slower than float32. Weights, losses and evaluation are float32
either way.
"""

from __future__ import annotations

from pathlib import Path

import tensorflow as tf

BF16_CPU_FLAGS = {"amx_bf16", "avx512_bf16"}


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The CPU's feature flags as Linux lists them; empty where that file does not exist."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def bfloat16_is_native(gpus: list | None = None, flags: set[str] | None = None) -> bool:
    """True if every device training would use multiplies bfloat16 in hardware."""
    gpus = tf.config.list_physical_devices("GPU") if gpus is None else gpus
    if gpus:
        capability = [
            tf.config.experimental.get_device_details(gpu).get("compute_capability", (0, 0))
            for gpu in gpus
        ]
        return all(c >= (8, 0) for c in capability)
    return bool(BF16_CPU_FLAGS & (cpu_flags() if flags is None else flags))


def resolve(precision: str) -> str:
    """The keras dtype policy for train.precision: float32 or mixed_bfloat16."""
    if precision == "auto":
        return "mixed_bfloat16" if bfloat16_is_native() else "float32"
    return precision
