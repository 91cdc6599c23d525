"""The module that stands in for each quantizable nn.Linear: base weights plus prepared FP8 copies."""

from __future__ import annotations

import torch
from torch import nn

from worker.engine.methods import METHODS, Prepared


class HybridLinear(nn.Module):
    """Owns the layer's parameters; delegates forward to the method its engine's snapshot names.

    The base weight is the original Parameter, never written to: running the base method again gives
    outputs bit-identical to the untouched model.
    """

    def __init__(self, linear: nn.Linear, layer: str, engine):
        super().__init__()
        self.layer = layer
        self.weight = linear.weight
        self.bias = linear.bias
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.prepared: dict[str, Prepared] = {}
        self.host_weight: torch.Tensor | None = None  # the base copy kept off the device (fp8-only)
        self._engine = engine

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        snapshot = self._engine.snapshot_for_this_thread()
        name = snapshot.methods[self.layer]
        return METHODS[name].forward(x, self.weight, self.bias, self.prepared.get(name), snapshot.kernel)

    # --- residency ------------------------------------------------------------------------------

    def prepare(self, precision: str) -> None:
        if precision not in self.prepared:
            self.restore_base()  # quantizing needs the base weight on the device
            self.prepared[precision] = METHODS[precision].prepare(self.weight.detach(), self.layer)

    @property
    def base_on_device(self) -> bool:
        return self.host_weight is None

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
        for name, prepared in self.prepared.items():
            counts[name] = prepared.nbytes()
        return counts

    def extra_repr(self) -> str:
        return f"layer={self.layer}, in_features={self.in_features}, out_features={self.out_features}"
