"""train.precision auto: bfloat16 only where the hardware multiplies it natively."""

from __future__ import annotations

from pathlib import Path

import pytest
import tensorflow as tf

from hvae.training import precision

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
flags\t\t: fpu sse2 avx2 avx512f {extra}
bogomips\t: 5199.99
"""


@pytest.mark.parametrize(
    ("extra", "native"),
    [("avx512_bf16 amx_bf16 amx_tile", True), ("avx512_bf16", True), ("avx512_vnni", False)],
)
def test_cpu_flags_decide_bfloat16(tmp_path: Path, extra: str, native: bool) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(CPUINFO.format(extra=extra))
    flags = precision.cpu_flags(cpuinfo)
    assert "avx2" in flags
    assert precision.bfloat16_is_native(gpus=[], flags=flags) is native


def test_no_cpuinfo_means_no_flags(tmp_path: Path) -> None:
    assert precision.cpu_flags(tmp_path / "missing") == set()
    assert precision.bfloat16_is_native(gpus=[], flags=set()) is False


def test_gpus_decide_by_compute_capability(monkeypatch: pytest.MonkeyPatch) -> None:
    details = {"ampere": {"compute_capability": (8, 0)}, "volta": {"compute_capability": (7, 0)}}
    monkeypatch.setattr(tf.config.experimental, "get_device_details", lambda gpu: details[gpu])
    # A GPU machine decides by its GPUs, whatever the CPU offers.
    assert precision.bfloat16_is_native(gpus=["ampere"], flags=set()) is True
    assert precision.bfloat16_is_native(gpus=["ampere", "volta"], flags={"amx_bf16"}) is False


def test_resolve(monkeypatch: pytest.MonkeyPatch) -> None:
    assert precision.resolve("float32") == "float32"
    assert precision.resolve("mixed_bfloat16") == "mixed_bfloat16"
    monkeypatch.setattr(precision, "bfloat16_is_native", lambda: True)
    assert precision.resolve("auto") == "mixed_bfloat16"
    monkeypatch.setattr(precision, "bfloat16_is_native", lambda: False)
    assert precision.resolve("auto") == "float32"
