"""The GPU kernels on CPU (Triton's interpreter): the fused quantize is bit-identical to the reference,
the FP8-weight kernel agrees with dequantize-then-matmul, and layers reading one input share its quantize."""

from __future__ import annotations

import importlib
import os

import pytest
import torch
from support import require_triton
from torch import nn

from mixprec.errors import FailedPrecondition
from worker.engine import HybridEngine, kernels
from worker.engine.fp8 import E4M3_MAX, dequantize, quantize
from worker.engine.kernels import reference
from worker.engine.methods import METHODS
from worker.models.tiny import load_tiny_decoder

require_triton()


@pytest.fixture
def interpreted(monkeypatch):
    """The dispatch sends CPU tensors to the Triton kernels (tests/conftest.py chose the interpreter)."""
    assert os.environ.get("TRITON_INTERPRET") == "1", "set before Triton is first imported (tests/conftest.py)"
    monkeypatch.setenv(kernels.TRITON_ON_CPU_ENV, "1")
    assert kernels.triton_runs(torch.device("cpu"))
    return [importlib.import_module(f"worker.engine.kernels.{name}") for name in ("triton_quantize", "triton_weight_only")]


def _same_codes(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype == torch.float8_e4m3fn and torch.equal(a.view(torch.uint8), b.view(torch.uint8))


def _inputs():
    torch.manual_seed(0)
    wide = torch.randn(3, 4100) * 3  # wider than one block: the two-pass kernel
    rows = torch.randn(9, 300, dtype=torch.bfloat16) * torch.logspace(-3, 2, 9).unsqueeze(1).to(torch.bfloat16)
    rows[4] = 0  # an all-zero row: scale at its floor, codes zero
    near_max = torch.full((2, 64), E4M3_MAX) * torch.linspace(0.9, 1.0, 64)
    near_max[1] *= -1
    grid = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).float()
    grid = grid[torch.isfinite(grid)].sort().values
    ties = torch.cat([grid, (grid[1:] + grid[:-1]) / 2, torch.tensor([-0.0])]).reshape(1, -1)  # every midpoint
    return {
        "random bf16": torch.randn(16, 384, dtype=torch.bfloat16),
        "random fp16": torch.randn(5, 96, dtype=torch.float16),
        "rows of different size, one zero": rows,
        "near the e4m3 maximum": near_max,
        "one token": torch.randn(1, 4096, dtype=torch.bfloat16),
        "width 17, not a block multiple": torch.randn(7, 17),
        "wider than one block": wide,
        "non-contiguous (a transpose)": torch.randn(48, 33).t(),
        "every e4m3 value and midpoint": ties,
    }


@pytest.mark.parametrize("per_token", [True, False], ids=["per-token", "per-tensor"])
def test_fused_quantize_is_bit_identical_to_the_reference(interpreted, per_token):
    fused = interpreted[0]
    for case, x in _inputs().items():
        codes, scales = fused.quantize_2d(x, per_token)
        want_codes, want_scales = quantize(x, rowwise=per_token)
        assert _same_codes(codes, want_codes), case
        assert scales.shape == want_scales.shape and torch.equal(scales, want_scales), case


def test_the_dispatch_uses_the_fused_kernel_only_where_triton_runs(interpreted, monkeypatch):
    x = torch.randn(4, 64)
    calls = []
    fused = interpreted[0]
    original = fused.quantize_2d
    monkeypatch.setattr(fused, "quantize_2d", lambda *a: calls.append(1) or original(*a))
    kernels.quantize_activation(x, True)
    assert calls == [1]
    monkeypatch.delenv(kernels.TRITON_ON_CPU_ENV)
    assert not kernels.triton_runs(torch.device("cpu"))
    kernels.quantize_activation(x, True)
    assert calls == [1]  # the CPU without the interpreter keeps the eager reference


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_naming_the_layer_on_the_kernel_path(interpreted, bad):
    w = torch.randn(32, 32)
    w[1, 2] = bad
    for precision in ("fp8", "fp8-tensor", "fp8-weight-only"):
        with pytest.raises(FailedPrecondition, match=r"layer 'layers.0.mlp.down_proj' has 1 NaN/Inf"):
            METHODS[precision].prepare(w, "layers.0.mlp.down_proj")


@pytest.mark.parametrize("tokens", [1, 5, 16, 64])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fp8_weight_kernel_agrees_with_dequantize_then_matmul(interpreted, tokens, dtype):
    torch.manual_seed(tokens)
    x = torch.randn(tokens, 200, dtype=dtype)
    w, b = torch.randn(70, 200) / 200**0.5, torch.randn(70).to(dtype)
    wq, ws = quantize(w, rowwise=True)
    y = kernels.weight_only_linear(x, wq, ws, b)
    exact = x.float() @ dequantize(wq, ws).T + b.float()  # the same FP8 weights, in float32
    assert y.dtype == dtype and y.shape == (tokens, 70)
    tolerance = 1e-5 if dtype == torch.float32 else 1e-2  # bf16's output rounding
    assert ((y.float() - exact).norm() / exact.norm()) < tolerance
    reference_y = reference.weight_only_linear(x, wq, ws, b)  # what the CPU computes without Triton
    assert ((y.float() - reference_y.float()).norm() / exact.norm()) < tolerance


def test_fp8_weight_kernel_is_not_used_above_its_token_count(interpreted, monkeypatch):
    used = []
    module = interpreted[1]
    original = module.weight_only_2d
    monkeypatch.setattr(module, "weight_only_2d", lambda *a: used.append(a[0].shape[0]) or original(*a))
    wq, ws = quantize(torch.randn(16, 32), rowwise=True)
    for tokens in (kernels.WEIGHT_ONLY_KERNEL_MAX_TOKENS, kernels.WEIGHT_ONLY_KERNEL_MAX_TOKENS + 1):
        kernels.weight_only_linear(torch.randn(tokens, 32), wq, ws, None)
    assert used == [kernels.WEIGHT_ONLY_KERNEL_MAX_TOKENS]


FP8_EVERYWHERE = ("fp8", "fp8-tensor")


def _all(engine, precision):
    return {layer: precision for layer in engine.catalog if not layer.endswith("kv_cache")}


@pytest.mark.parametrize("precision", FP8_EVERYWHERE)
def test_layers_reading_one_input_share_one_quantize_with_identical_outputs(precision):
    model = load_tiny_decoder(layers=3)
    engine = HybridEngine(model.module, model.layer_map, kernel="auto")
    engine.apply(_all(engine, precision))
    ids = torch.randint(0, 256, (2, 12))
    shared = model.decoder.hidden(ids)
    # Per block: q, k and v read one tensor, gate and up another; o and down read their own.
    assert (engine.shared_inputs.quantizes, engine.shared_inputs.reuses) == (4 * 3, 3 * 3)
    assert engine.shared_inputs._entries() == {}  # released when the pass ended
    engine.shared_inputs.quantized = lambda x, per_token, quantize: quantize(x.reshape(-1, x.shape[-1]), per_token)
    separate = model.decoder.hidden(ids)
    assert torch.equal(shared, separate)


class _WritesItsInput(nn.Module):
    """Reads x, changes it in place, reads it again: the second read must not reuse the first quantize."""

    def __init__(self):
        super().__init__()
        self.first, self.second = nn.Linear(32, 16), nn.Linear(32, 16)

    def forward(self, x):
        a = self.first(x)
        x.mul_(3.0)
        return a + self.second(x)


def test_a_tensor_changed_in_place_between_two_reads_is_quantized_again():
    torch.manual_seed(4)
    module = _WritesItsInput()
    engine = HybridEngine(module, {"first": "first", "second": "second"}, kernel="emulated")
    engine.apply({"first": "fp8", "second": "fp8"})
    x = torch.randn(4, 32)
    with torch.no_grad():  # outside inference mode torch keeps a version counter: the change is seen
        y = module(x.clone())
    assert engine.shared_inputs.reuses == 0
    wq1, ws1 = engine.bindings["first"].prepared["fp8"].weight, engine.bindings["first"].prepared["fp8"].scale
    wq2, ws2 = engine.bindings["second"].prepared["fp8"].weight, engine.bindings["second"].prepared["fp8"].scale
    expected = (kernels.fp8_linear(x, wq1, ws1, module.first.bias, True, "emulated")
                + kernels.fp8_linear(x * 3.0, wq2, ws2, module.second.bias, True, "emulated"))
    assert torch.equal(y, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_decoder_on_the_kernel_path_matches_the_reference_path(interpreted, monkeypatch, dtype):
    """Every FP8 precision end to end through a decoder: with bit-identical codes and scales the W8A8
    outputs are identical; weight-only agrees within rounding."""
    model = load_tiny_decoder(layers=2, dtype=dtype)
    engine = HybridEngine(model.module, model.layer_map, kernel="auto")
    ids = torch.randint(0, 256, (1, 6))  # 6 tokens: under the weight kernel's limit
    for precision in ("fp8", "fp8-tensor", "fp8-weight-only"):
        engine.apply(_all(engine, precision))
        fused = model.decoder.hidden(ids)
        with monkeypatch.context() as patch:
            patch.delenv(kernels.TRITON_ON_CPU_ENV)
            plain = model.decoder.hidden(ids)
        if precision == "fp8-weight-only":
            assert ((fused.float() - plain.float()).norm() / plain.float().norm()) < 2e-2, precision
        else:
            assert torch.equal(fused, plain), precision
    engine.apply({})
    status = {s.layer: s.kernel for s in engine.status()}
    engine.apply(_all(engine, "fp8-weight-only"))
    assert {s.kernel for s in engine.status() if not s.layer.endswith("kv_cache")} == {"w8-triton"}
    assert set(status.values()) == {"base"}
