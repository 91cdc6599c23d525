"""benchmarks/gpu.py --size tiny: the GPU benchmark's whole path runs on a CPU and prints every table."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_gpu_benchmark_runs_its_tiny_size_on_cpu():
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("MIXPREC_TRITON_ON_CPU", None)
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--size", "tiny", "--device", "cpu",
                           "--repeats", "2"], capture_output=True, text=True, timeout=240, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    assert "NOT an FP8 speed claim" in out  # a CPU run says what its timings are not
    for shape in ("q, o: 16 x 64 x 64", "k, v: 256 x 64 x 32", "gate, up: 16 x 64 x 128", "down: 256 x 128 x 64"):
        assert re.search(rf"^{re.escape(shape)}\s+[0-9.]+", out, re.M), shape
    for name in ("base", "MLP fp8", "attention+MLP fp8", "+ KV cache fp8", "fp8-tensor", "fp8-weight-only"):
        assert re.search(rf"^{re.escape(name)}\s+\d+\s+\d+\s+[0-9.]+x$", out, re.M), name
    assert re.search(r"switching all 16 units BF16 <-> FP8: [0-9.]+ ms", out)
    # 2 blocks: q/k/v share one quantize and gate/up another, so 4 quantizes a block serve 7 linears.
    assert "8 activation quantizes for 14 FP8 linears" in out
    difference = float(re.search(r"emulated product of the same FP8 operands: rel. diff ([0-9.]+)", out).group(1))
    assert difference < 0.01
    for name in ("base", "attention+MLP fp8", "+ KV cache fp8", "fp8-weight-only"):  # decode, batch 1
        assert re.search(rf"^{re.escape(name)}\s+[0-9.]+\s+[0-9.]+x\s+[0-9.]+\s+[0-9.]+  peak unknown$", out, re.M), name
    assert "one decode step at 64 tokens of context" in out
    rows = dict(re.findall(r"^(bf16|fp8)\s+[0-9.]+\s+[0-9.]+\s+[0-9.]+\s+([0-9.]+)x$", out, re.M))
    # the tiny model's head_dim 16: an FP8 token-head takes 16 code bytes + a 4-byte scale against 32
    assert rows == {"bf16": "1.000", "fp8": "0.625"}
    last = out.strip().splitlines()[-1]
    assert re.fullmatch(r"gpu: prefill attention\+MLP fp8 \d+\.\d\dx bf16, fp8 linear \d+\.\d\dx raw scaled_mm "
                        r"at 256 tokens \(CPU\)", last), last
