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


@dataclass(frozen=True)
class Prepared:
    """What a method keeps per layer: FP8 weights and their scales (nothing for the base method)."""

    weight: torch.Tensor | None = None
    scale: torch.Tensor | None = None

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.weight, self.scale) if t is not None)


class PrecisionMethod:
    name: str
    uses_base_weight = False
    fp8_compute = False

    def prepare(self, base_weight: torch.Tensor, layer: str) -> Prepared:
        raise NotImplementedError

    def forward(self, x, base_weight, bias, prepared: Prepared, kernel: str) -> torch.Tensor:
        raise NotImplementedError

    def kernel_name(self, kernel: str) -> str:
        return kernel


class Base(PrecisionMethod):
    name = "bf16"
    uses_base_weight = True

    def prepare(self, base_weight, layer):
        return Prepared()

    def forward(self, x, base_weight, bias, prepared, kernel):
        return F.linear(x, base_weight, bias)

    def kernel_name(self, kernel):
        return "base"


class FP8(PrecisionMethod):
    """W8A8: weights per output channel, activations per token (or both per tensor)."""

    fp8_compute = True

    def __init__(self, name: str, rowwise: bool):
        self.name = name
        self.rowwise = rowwise

    def prepare(self, base_weight, layer):
        check_finite(base_weight, layer)
        weight, scale = quantize(base_weight, rowwise=self.rowwise)
        return Prepared(weight, scale)

    def forward(self, x, base_weight, bias, prepared, kernel):
        return kernels.fp8_linear(x, prepared.weight, prepared.scale, bias, per_token=self.rowwise, kernel=kernel)


class FP8WeightOnly(PrecisionMethod):
    name = "fp8-weight-only"

    def prepare(self, base_weight, layer):
        check_finite(base_weight, layer)
        weight, scale = quantize(base_weight, rowwise=True)
        return Prepared(weight, scale)

    def forward(self, x, base_weight, bias, prepared, kernel):
        return kernels.weight_only_linear(x, prepared.weight, prepared.scale, bias)

    def kernel_name(self, kernel):
        return "dequantize"


METHODS: dict[str, PrecisionMethod] = {
    m.name: m for m in (Base(), FP8("fp8", rowwise=True), FP8("fp8-tensor", rowwise=False), FP8WeightOnly())
}
