"""HybridEngine: binds a model's linear layers, switches precision maps atomically between passes."""

from __future__ import annotations

import threading
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from types import MappingProxyType
from typing import Iterator, Mapping

import torch
from torch import nn

from worker.engine import kernels
from worker.engine.binding import HybridLinear
from worker.engine.methods import METHODS

RESIDENCIES = ("both", "fp8-only")


@dataclass(frozen=True)
class Snapshot:
    """One precision map as the forward passes see it; replaced whole, never edited."""

    tag: int
    methods: Mapping[str, str]
    kernel: str


@dataclass(frozen=True)
class LayerStatus:
    layer: str
    precision: str
    kernel: str  # "base", "scaled_mm", "emulated" or "dequantize"


class HybridEngine:
    """Runs each bound layer at the precision its current snapshot names.

    A forward pass pins the snapshot that is current when it starts (`pinned()`), so a concurrent
    `apply()` never mixes two maps inside one pass. Quantized copies are built once per layer and
    precision and kept, so switching back and forth moves no weights (residency "both"). With
    residency "fp8-only" a layer running FP8 keeps its base weight in host memory only.
    """

    def __init__(self, model: nn.Module, layer_map: Mapping[str, str], residency: str = "both",
                 kernel: str = "auto"):
        if residency not in RESIDENCIES:
            raise ValueError(f"residency {residency!r} is not one of {', '.join(RESIDENCIES)}")
        if not layer_map:
            raise ValueError("the model has no quantizable linear layer")
        self.model = model
        self.residency = residency
        parameter = next(model.parameters())
        self.device, self.base_dtype = parameter.device, parameter.dtype
        self.kernel = kernels.resolve_kernel(kernel, self.device)
        self.catalog: tuple[str, ...] = tuple(layer_map)
        self.bindings: dict[str, HybridLinear] = {}
        for layer, path in layer_map.items():
            self.bindings[layer] = self._bind(path, layer)
        self._snapshot = Snapshot(0, MappingProxyType({layer: "bf16" for layer in self.catalog}), self.kernel)
        self._local = threading.local()
        self._apply_lock = threading.Lock()
        self._pins = Counter()
        self._pins_changed = threading.Condition()

    def _bind(self, path: str, layer: str) -> HybridLinear:
        parent_path, _, child = path.rpartition(".")
        parent = self.model.get_submodule(parent_path) if parent_path else self.model
        linear = getattr(parent, child)
        if not isinstance(linear, nn.Linear):
            raise ValueError(f"layer {layer!r} ({path}) is a {type(linear).__name__}, not an nn.Linear")
        binding = HybridLinear(linear, layer, self)
        setattr(parent, child, binding)
        return binding

    # --- forward passes -------------------------------------------------------------------------

    def snapshot_for_this_thread(self) -> Snapshot:
        return getattr(self._local, "snapshot", None) or self._snapshot

    @contextmanager
    def pinned(self, snapshot: Snapshot | None = None) -> Iterator[Snapshot]:
        """Every layer called by this thread inside the block uses one snapshot (the current one)."""
        previous = getattr(self._local, "snapshot", None)
        snapshot = snapshot or self._snapshot
        with self._pins_changed:
            self._pins[id(snapshot)] += 1
        self._local.snapshot = snapshot
        try:
            yield snapshot
        finally:
            self._local.snapshot = previous
            with self._pins_changed:
                self._pins[id(snapshot)] -= 1
                if not self._pins[id(snapshot)]:
                    del self._pins[id(snapshot)]
                self._pins_changed.notify_all()

    @contextmanager
    def using(self, precision_map: Mapping[str, str]) -> Iterator[Snapshot]:
        """Run this thread's passes at another map without changing what everyone else runs (shadow eval)."""
        methods = self._validated(precision_map)
        with self._apply_lock:
            for layer, precision in methods.items():
                self._ready(layer, precision)
        with self.pinned(Snapshot(-1, MappingProxyType(methods), self.kernel)) as snapshot:
            yield snapshot

    # --- switching ------------------------------------------------------------------------------

    @property
    def tag(self) -> int:
        return self._snapshot.tag

    def current_map(self) -> dict[str, str]:
        return dict(self._snapshot.methods)

    def apply(self, precision_map: Mapping[str, str], tag: int = 0) -> list[str]:
        """Switch to `precision_map` (layers it leaves out run at base); returns the layers that changed.

        Everything that can fail (unknown layer or precision, NaN weights) fails before the switch,
        and then nothing has changed.
        """
        methods = self._validated(precision_map)
        with self._apply_lock:
            old = self._snapshot
            changed = [layer for layer in self.catalog if methods[layer] != old.methods[layer]]
            for layer in changed:
                self._ready(layer, methods[layer])
            self._snapshot = Snapshot(tag, MappingProxyType(methods), self.kernel)
            if self.residency == "fp8-only":
                self._wait_unpinned(old)
                for layer in changed:
                    if not METHODS[methods[layer]].uses_base_weight:
                        self.bindings[layer].drop_base()
        return changed

    def _validated(self, precision_map: Mapping[str, str]) -> dict[str, str]:
        unknown = [layer for layer in precision_map if layer not in self.bindings]
        if unknown:
            raise ValueError(f"layer {unknown[0]!r} is not in this model's catalog ({len(unknown)} unknown)")
        for layer, precision in precision_map.items():
            if precision not in METHODS:
                raise ValueError(f"layer {layer!r}: unknown precision {precision!r}; this engine runs "
                                 f"{', '.join(METHODS)}")
        return {layer: precision_map.get(layer, "bf16") for layer in self.catalog}

    def _ready(self, layer: str, precision: str) -> None:
        binding = self.bindings[layer]
        if METHODS[precision].uses_base_weight:
            binding.restore_base()
        else:
            binding.prepare(precision)

    def _wait_unpinned(self, snapshot: Snapshot) -> None:
        # Passes still running on the old map may read base weights that are about to leave the device.
        with self._pins_changed:
            self._pins_changed.wait_for(lambda: not self._pins.get(id(snapshot)))

    # --- reporting ------------------------------------------------------------------------------

    def status(self) -> list[LayerStatus]:
        snapshot = self._snapshot
        return [LayerStatus(layer, p, METHODS[p].kernel_name(self.kernel)) for layer, p in snapshot.methods.items()]

    def resident_bytes(self) -> dict[str, int]:
        """Bytes of the bound layers' weights on the device, by precision, and of base copies on the host."""
        totals: Counter = Counter()
        for binding in self.bindings.values():
            totals.update(binding.device_bytes())
            if binding.host_weight is not None:
                totals["host"] += binding.host_weight.numel() * binding.host_weight.element_size()
        return dict(totals)

    def describe_hardware(self) -> dict:
        device = str(self.device)
        if self.device.type == "cuda":
            device = f"{device} {torch.cuda.get_device_name(self.device)}"
        return {"device": device, "fp8_kernel": self.kernel == kernels.SCALED_MM, "kernel": self.kernel,
                "dtype": str(self.base_dtype).removeprefix("torch."), "torch_version": torch.__version__}
