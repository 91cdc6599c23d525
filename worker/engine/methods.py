"""Precision methods, chosen by name: config is data, behaviour is a registered method (as in vLLM).

A method prepares what it needs from a layer's base weight once (the quantized copy) and computes the
layer's output from it. `bf16` is just another method: the base weight as loaded.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from worker.engine import kernels
from worker.engine.fp8 import check_finite, quantize

BASE = "bf16"  # the name of the base method: the weights as loaded, in the model's own dtype
PER_CHANNEL, PER_TENSOR = "fp8", "fp8-tensor"  # the FP8 weight formats a layer may keep


@dataclass(frozen=True)
class Prepared:
    """What a method keeps per layer: FP8 weights and their scales."""

    weight: torch.Tensor
    scale: torch.Tensor

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.weight, self.scale))


class PrecisionMethod:
    name: str
    # The weight format it computes from, shared by methods that quantize weights alike (fp8 and
    # fp8-weight-only keep one per-channel copy between them); None: the base weight.
    weights: str | None = None
    # Whether its output for one token depends on that token alone (per-tensor activation scales look
    # at the whole batch, padding included): what lets the sweep skip padding rows exactly.
    token_wise: bool = True

    @property
    def uses_base_weight(self) -> bool:
        return self.weights is None

    def prepare(self, base_weight: torch.Tensor, layer: str) -> Prepared | None:
        """Quantize the base weight into this method's format; NaN/Inf weights are refused."""
        if self.weights is None:
            return None
        check_finite(base_weight, layer)
        return Prepared(*quantize(base_weight, rowwise=self.weights == PER_CHANNEL))

    def forward(self, x, base_weight, bias, prepared: Prepared | None, kernel: str, inputs=None) -> torch.Tensor:
        """`inputs`: a worker.engine.shared_inputs.SharedInputs, so that layers reading one tensor
        quantize it once; None quantizes here."""
        raise NotImplementedError

    def kernel_name(self, kernel: str) -> str:
        return kernel


class Base(PrecisionMethod):
    name = BASE

    def forward(self, x, base_weight, bias, prepared, kernel, inputs=None):
        return F.linear(x, base_weight, bias)

    def kernel_name(self, kernel):
        return "base"


class FP8(PrecisionMethod):
    """W8A8: weights per output channel and activations per token, or both per tensor."""

    def __init__(self, name: str, weights: str):
        self.name, self.weights = name, weights
        self.token_wise = weights == PER_CHANNEL

    def forward(self, x, base_weight, bias, prepared, kernel, inputs=None):
        per_token = self.weights == PER_CHANNEL
        quantized = None if inputs is None else inputs.quantized(x, per_token, kernels.quantize_activation)
        return kernels.fp8_linear(x, prepared.weight, prepared.scale, bias, per_token=per_token, kernel=kernel,
                                  quantized=quantized)


class FP8WeightOnly(PrecisionMethod):
    """FP8 weights (per channel) in memory, dequantized for a matmul in the activations' dtype."""

    name = "fp8-weight-only"
    weights = PER_CHANNEL

    def forward(self, x, base_weight, bias, prepared, kernel, inputs=None):
        return kernels.weight_only_linear(x, prepared.weight, prepared.scale, bias)

    def kernel_name(self, kernel):
        return "dequantize"  # worker.engine.binding names the Triton kernel where it runs


METHODS: dict[str, PrecisionMethod] = {
    m.name: m for m in (Base(), FP8("fp8", PER_CHANNEL), FP8("fp8-tensor", PER_TENSOR), FP8WeightOnly())
}
