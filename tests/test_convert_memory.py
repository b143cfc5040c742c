"""Converting streams tensors: peak resident memory stays near one tensor (in practice one
block of rows), not the model. Figures: benchmarks/convert_memory.py."""

from __future__ import annotations

import sys

import pytest


@pytest.fixture(scope="module")
def large_checkpoint(tmp_path_factory):
    from tests.kit.checkpoint import build_large_checkpoint

    work = tmp_path_factory.mktemp("convmem")
    return build_large_checkpoint(work / "ckpt"), work   # ~400 MiB float32, largest tensor 64 MiB


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads VmHWM from /proc")
@pytest.mark.parametrize("outtype", ["f16", "bf16"])
def test_peak_memory_stays_below_one_and_a_half_largest_tensors(outtype, large_checkpoint):
    from tests.kit.memory import measure_convert

    src, work = large_checkpoint
    r = measure_convert(src, work, outtype)
    assert r["total"] > 300 * 2**20 and r["largest"] == 64 * 2**20
    # the conversion's own memory, over an interpreter that imported the same modules
    assert r["extra"] < 1.5 * r["largest"], r
    # and far below the model: the whole checkpoint never sits in memory
    assert r["peak"] < r["baseline"] + r["total"] / 4, r
