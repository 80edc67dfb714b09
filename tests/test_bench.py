"""Inference variants and `diffsampler bench` (CPU; the GPU numbers are in docs/performance.md)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

import diffsampler as ds
from diffsampler.bench import Variant, run_bench

# Stated tolerances: relative L2 deviation of the final samples (digits, iPNDM, NFE 5) from fp32.
TOLERANCE = {"fp32": 1e-6, "fp16": 3e-2, "bf16": 1.5e-1}


def test_variant_parsing():
    v = Variant.parse("fp16+cl+compile+graph")
    assert (v.precision, v.channels_last, v.compile, v.cuda_graph) == ("fp16", True, True, True)
    assert v.label == "fp16+cl+compile+graph" and Variant.parse("fp32").is_reference
    with pytest.raises(ds.OptionError, match="bad variant 'fp8'"):
        Variant.parse("fp8")
    tuned = Variant.parse("tf32+cl+tune")
    assert tuned.autotune and tuned.label == "tf32+cl+tune" and not tuned.is_reference


def test_cudnn_autotune_is_scoped_to_the_block():
    import torch

    from diffsampler.tuning import cudnn_autotune

    before = torch.backends.cudnn.benchmark
    try:
        torch.backends.cudnn.benchmark = False
        with cudnn_autotune(True):
            assert torch.backends.cudnn.benchmark
        assert not torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = True  # the caller's own choice is kept
        with cudnn_autotune(False):
            assert torch.backends.cudnn.benchmark
        assert torch.backends.cudnn.benchmark
    finally:
        torch.backends.cudnn.benchmark = before


def test_every_cpu_variant_is_finite_and_close_to_fp32():
    variants = [Variant.parse(t) for t in ("fp32", "fp32+cl", "bf16", "bf16+cl", "fp16", "fp16+cl")]
    rows = run_bench(model="digits", solver="ipndm", nfe=5, batches=(8,), variants=variants,
                     device="cpu", repeat=1, warmup=0)
    assert [r.variant for r in rows] == [v.label for v in variants]
    for r in rows:
        assert math.isfinite(r.images_per_s) and r.images_per_s > 0
        assert r.overhead_ratio > 0 and r.ms_per_forward > 0
        precision = r.variant.split("+")[0]
        assert r.rel_l2_deviation < TOLERANCE[precision], r
    assert rows[0].max_abs_deviation == 0.0  # the reference itself


def test_graph_variant_needs_cuda_and_analytic_models_have_no_precision():
    rows = []  # refused before anything is timed: not even the fp32 reference row
    with pytest.raises(ds.OptionError, match="CUDA graphs need --device cuda"):
        run_bench(model="digits", batches=(2,), variants=[Variant(), Variant.parse("graph")],
                  device="cpu", repeat=1, warmup=0, on_row=rows.append)
    with pytest.raises(ds.OptionError, match="model 'gmm' has no precision option"):
        run_bench(model="gmm", batches=(2,), variants=[Variant(), Variant.parse("bf16")],
                  device="cpu", repeat=1, warmup=0, on_row=rows.append)
    with pytest.raises(ds.OptionError, match="has no channels_last option"):
        run_bench(model="empirical", batches=(2,), variants=[Variant(), Variant.parse("fp32+cl")],
                  device="cpu", repeat=1, warmup=0, on_row=rows.append)
    assert rows == []


def test_bench_json_reports_all_fields():
    proc = subprocess.run(
        [sys.executable, "-m", "diffsampler", "bench", "--batch", "4,8", "--variant", "bf16",
         "--repeat", "1", "--warmup", "0", "--device", "cpu", "--json"],
        capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["nfe"] == 5 and data["solver"] == "ipndm" and "CPU" in data["machine"]["device"]
    assert len(data["rows"]) == 4
    assert set(data["rows"][0]) == {
        "variant", "batch", "nfe", "images_per_s", "ms_per_batch", "ms_per_forward",
        "overhead_ratio", "peak_memory_mb", "max_abs_deviation", "rel_l2_deviation",
    }


@pytest.mark.slow
def test_compiled_variant_matches_fp32_eager():
    (_, compiled) = run_bench(model="digits", nfe=5, batches=(8,), device="cpu", repeat=1,
                                warmup=1, variants=[Variant(), Variant.parse("compile")])
    assert compiled.variant == "fp32+compile"
    assert compiled.rel_l2_deviation < 1e-4, compiled
