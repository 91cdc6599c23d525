"""The module that stands in for each quantizable nn.Linear: base weights plus prepared FP8 copies."""

from __future__ import annotations

import torch
from torch import nn

from worker.engine import kernels
from worker.engine.methods import METHODS, Prepared


class HybridLinear(nn.Module):
    """Owns the layer's parameters; delegates forward to the method its engine's snapshot names.

    The base weight is the original Parameter, never written to: running the base method again gives
    outputs bit-identical to the untouched model. FP8 copies are built on a precision's first use and
    kept, so later switches move no weights.
    """

    def __init__(self, linear: nn.Linear, layer: str, engine, kernel: str):
        super().__init__()
        self.layer = layer
        self.weight = linear.weight
        self.bias = linear.bias
        self.in_features, self.out_features = linear.in_features, linear.out_features
        # The engine's kernel, or emulation where this layer's shape does not fit the FP8 GEMM.
        self.kernel = kernels.layer_kernel(kernel, self.in_features, self.out_features, self.weight.device)
        self.prepared: dict[str, Prepared] = {}  # by weight format ("fp8" per channel, "fp8-tensor")
        self.host_weight: torch.Tensor | None = None  # the base copy kept off the device (fp8-only)
        self._engine = engine

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        method = METHODS[self._engine.snapshot_for_this_thread().methods[self.layer]]
        prepared = self.prepared.get(method.weights) if method.weights else None
        return method.forward(x, self.weight, self.bias, prepared, self.kernel, self._engine.shared_inputs)

    def kernel_name(self, precision: str) -> str:
        name = METHODS[precision].kernel_name(self.kernel)
        if name == "dequantize":  # fp8-weight-only: Triton's kernel reads FP8 weights at a few tokens
            return kernels.weight_only_kernel_name(self.weight.device)
        return name

    # --- residency ------------------------------------------------------------------------------

    def prepare(self, precision: str) -> None:
        """Build the weights this precision computes from, once (from the host copy when the device one
        was dropped)."""
        method = METHODS[precision]
        if method.weights is None or method.weights in self.prepared:
            return
        base = self.weight.detach() if self.host_weight is None else self.host_weight.to(self.weight.device)
        self.prepared[method.weights] = method.prepare(base, self.layer)

    def drop_base(self) -> None:
        """Keep the base weight in host memory only (pinned when the device is a GPU)."""
        if self.host_weight is not None:
            return
        weight = self.weight.detach()
        host = weight.to("cpu", copy=True)
        if weight.is_cuda:
            host = host.pin_memory()
        self.host_weight = host
        self.weight.data = torch.empty(0, dtype=weight.dtype, device=weight.device)

    def restore_base(self) -> None:
        if self.host_weight is None:
            return
        self.weight.data = self.host_weight.to(self.weight.device, copy=True)
        self.host_weight = None

    def device_bytes(self) -> dict[str, int]:
        counts = {"base": self.weight.numel() * self.weight.element_size()}
        for weights, prepared in self.prepared.items():
            counts[weights] = prepared.nbytes()
        return counts

    def host_bytes(self) -> int:
        return 0 if self.host_weight is None else self.host_weight.numel() * self.host_weight.element_size()

    def extra_repr(self) -> str:
        return (f"layer={self.layer}, in_features={self.in_features}, out_features={self.out_features}, "
                f"kernel={self.kernel}")


class KVCacheBinding:
    """What the engine keeps for a `layers.{i}.kv_cache` entry: no weights. The attention module points
    back to it, so that a request's cache reads its precision from the map the request is pinned to
    (worker.models.decoder.Decoder.new_cache)."""

    def __init__(self, layer: str, attention: nn.Module, engine):
        self.layer, self.engine = layer, engine
        attention.kv_cache_binding = self

    def precision(self) -> str:
        return self.engine.snapshot_for_this_thread().methods[self.layer]

    def kernel_name(self, precision: str) -> str:
        return "base" if precision == "bf16" else "fp8-kv"

    def prepare(self, precision: str) -> None:
        """Nothing to build: K and V are quantized as they are written."""

    def restore_base(self) -> None:
        """No weights to restore."""

    def drop_base(self) -> None:
        """No weights to drop."""

    def device_bytes(self) -> dict[str, int]:
        return {}

    def host_bytes(self) -> int:
        return 0
