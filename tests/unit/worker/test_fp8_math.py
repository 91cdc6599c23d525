"""FP8 quantization and kernels: rounding bounds, scale granularity, the two kernel paths agree."""

from __future__ import annotations

import pytest
import torch

from mixprec.errors import FailedPrecondition, InvalidArgument
from worker.engine import kernels
from worker.engine.fp8 import E4M3_MAX, FP8, dequantize, quantize
from worker.engine.methods import METHODS

# e4m3 keeps 3 mantissa bits: a normal value rounds to within 2^-4 of itself (relative).
E4M3_RELATIVE = 2.0**-4


def test_weights_dequantize_within_e4m3_rounding():
    torch.manual_seed(0)
    w = torch.randn(96, 128) * torch.logspace(-2, 1, 96).unsqueeze(1)  # rows of very different magnitude
    q, scale = quantize(w, rowwise=True)
    assert q.dtype == torch.float8_e4m3fn and scale.shape == (96, 1)
    back = dequantize(q, scale)
    # Normal range of e4m3 starts at 2^-6 of the scale; below it the error is bounded absolutely.
    bound = torch.maximum(w.abs() * E4M3_RELATIVE, scale * 2.0**-9)
    assert ((back - w).abs() <= bound + 1e-12).all()
    assert torch.allclose(q.float().abs().amax(1), torch.full((96,), E4M3_MAX))  # each row uses the full range


def test_per_channel_beats_per_tensor_on_a_matrix_with_an_outlier_row():
    torch.manual_seed(1)
    w = torch.randn(64, 64) * 0.02
    w[7] *= 20_000  # one row of large weights: a shared scale pushes the others into subnormals
    others = torch.ones(64, dtype=torch.bool)
    others[7] = False
    errors = {}
    for rowwise in (True, False):
        q, s = quantize(w, rowwise=rowwise)
        # Relative error on the ordinary rows, which one shared scale squeezes into few FP8 steps.
        errors[rowwise] = ((dequantize(q, s) - w)[others].norm() / w[others].norm()).item()
    assert errors[True] * 2 < errors[False], errors


def test_all_zero_rows_do_not_divide_by_zero():
    q, s = quantize(torch.zeros(4, 8), rowwise=True)
    assert torch.equal(dequantize(q, s), torch.zeros(4, 8))


@pytest.mark.parametrize("per_token", [True, False])
def test_scaled_mm_and_emulated_paths_agree_within_fp8_tolerance(per_token):
    if not kernels.scaled_mm_available("cpu"):
        pytest.fail("this torch has no CPU torch._scaled_mm for FP8; the kernel path cannot be checked")
    torch.manual_seed(2)
    x, w, b = torch.randn(2, 5, 384), torch.randn(1536, 384) / 20, torch.randn(1536)
    wq, ws = quantize(w, rowwise=per_token)
    real = kernels.fp8_linear(x, wq, ws, b, per_token=per_token, kernel=kernels.SCALED_MM)
    emulated = kernels.fp8_linear(x, wq, ws, b, per_token=per_token, kernel=kernels.EMULATED)
    exact = torch.nn.functional.linear(x, w, b)
    assert real.shape == emulated.shape == exact.shape
    # Same quantized operands: the two paths differ only by accumulation order.
    assert torch.allclose(real, emulated, rtol=1e-4, atol=1e-4)
    relative = (real - exact).norm() / exact.norm()
    assert 0 < relative < 0.05  # FP8 is lossy, and not by much


def test_weight_only_keeps_activations_in_full_precision():
    torch.manual_seed(3)
    x, w = torch.randn(3, 64), torch.randn(32, 64)
    method = METHODS["fp8-weight-only"]
    prepared = method.prepare(w, "layer")
    y = method.forward(x, w, None, prepared, kernels.EMULATED)
    expected = x @ dequantize(prepared.weight, prepared.scale).T
    assert torch.allclose(y, expected, atol=1e-5)
    assert prepared.nbytes() == 32 * 64 + 32 * 4  # one byte a weight, one float32 scale a row


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_naming_the_layer(bad):
    w = torch.randn(8, 8)
    w[3, 3] = bad
    for precision in ("fp8", "fp8-tensor", "fp8-weight-only"):
        with pytest.raises(FailedPrecondition, match=r"layer 'layers.2.mlp.up_proj' has 1 NaN/Inf"):
            METHODS[precision].prepare(w, "layers.2.mlp.up_proj")


def test_unknown_kernel_is_an_error_and_auto_finds_the_cpu_kernel():
    with pytest.raises(InvalidArgument, match="kernel: 'cuda-magic' is not one of auto, scaled_mm, emulated"):
        kernels.resolve_kernel("cuda-magic", torch.device("cpu"))
    assert kernels.resolve_kernel("emulated", torch.device("cpu")) == kernels.EMULATED
    for dtype in (torch.float32, torch.bfloat16):
        assert kernels.resolve_kernel("auto", torch.device("cpu"), dtype) == kernels.SCALED_MM


def test_a_layer_whose_shape_the_gpu_kernel_cannot_take_falls_back_to_emulation():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")  # only the rule is checked: no GPU needed
    assert kernels.layer_kernel(kernels.SCALED_MM, 384, 1536, cuda) == kernels.SCALED_MM
    assert kernels.layer_kernel(kernels.SCALED_MM, 32, 8, cuda) == kernels.EMULATED
    assert kernels.layer_kernel(kernels.SCALED_MM, 32, 8, cpu) == kernels.SCALED_MM
    assert kernels.layer_kernel(kernels.EMULATED, 384, 1536, cuda) == kernels.EMULATED


def test_every_e4m3_code_dequantizes_to_its_dtype_value():
    """Codes are read back through a table on CPU: each of the 256 gives what the dtype conversion gives
    (NaN codes stay NaN), scaled per row as the kernel does."""
    codes = torch.arange(256, dtype=torch.uint8).view(FP8).reshape(16, 16)
    scale = torch.logspace(-3, 3, 16).reshape(16, 1)
    expected = codes.float() * scale
    got = dequantize(codes, scale)
    assert torch.equal(got.isnan(), expected.isnan())
    assert torch.equal(got.nan_to_num(), expected.nan_to_num())
    assert dequantize(codes.t(), scale.t(), torch.bfloat16).dtype == torch.bfloat16  # a strided view works too
