"""HybridEngine: binds a model's linear layers, switches precision maps atomically between passes."""

from __future__ import annotations

import functools
import threading
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from types import MappingProxyType
from typing import Iterable, Iterator, Mapping

import torch
from torch import nn

from mixprec.errors import FailedPrecondition, FieldError, InvalidArgument
from mixprec.policy import KV_CACHE_PRECISIONS, is_kv_cache
from worker.engine import kernels
from worker.engine.binding import HybridLinear, KVCacheBinding
from worker.engine.methods import BASE, METHODS
from worker.engine.shared_inputs import SharedInputs

RESIDENCIES = ("both", "fp8-only")


class PassCancelled(Exception):
    """A shadow pass stopped before its next forward because its caller no longer wants the result."""


@dataclass(frozen=True)
class Snapshot:
    """One precision map as the forward passes see it; replaced whole, never edited."""

    tag: int
    methods: Mapping[str, str]


@dataclass(frozen=True)
class LayerStatus:
    layer: str
    precision: str
    kernel: str  # "base", "scaled_mm", "emulated", "dequantize" or "w8-triton"


class HybridEngine:
    """Runs each bound layer at the precision its current snapshot names.

    Every call of the model's forward pins the snapshot that is current when it starts (the engine
    wraps the root module's forward; `pinned()` does the same for a longer stretch, e.g. all batches
    of one request), so a concurrent `apply()` never mixes two maps inside one pass. Quantized copies
    are built on first use of a precision (or up front with `prepare()`) and kept, so switching back
    and forth moves no weights (residency "both"). With residency "fp8-only" a layer that no live map
    runs at base keeps its base weight in host memory only.
    """

    def __init__(self, model: nn.Module, layer_map: Mapping[str, str], residency: str = "both",
                 kernel: str = "auto"):
        if residency not in RESIDENCIES:
            raise InvalidArgument(FieldError("residency", f"{residency!r} is not one of {', '.join(RESIDENCIES)}"))
        if not layer_map:
            raise InvalidArgument(FieldError("layer_map", "is empty: the model has no quantizable linear layer"))
        self.model = model
        self.residency = residency
        parameter = next(model.parameters())
        self.device, self.base_dtype = parameter.device, parameter.dtype
        self.kernel = kernels.resolve_kernel(kernel, self.device, self.base_dtype)
        self.catalog: tuple[str, ...] = tuple(layer_map)
        self.bindings: dict[str, HybridLinear | KVCacheBinding] = {layer: self._bind(path, layer) for layer, path in layer_map.items()}
        self._snapshot = Snapshot(0, MappingProxyType({layer: BASE for layer in self.catalog}))
        self._local = threading.local()
        self.shared_inputs = SharedInputs()  # one activation quantize per input tensor (q/k/v, gate/up)
        self._apply_lock = threading.Lock()  # one writer: apply, using's preparation, residency changes
        self._pins: dict[int, list] = {}  # id(snapshot) -> [snapshot, passes running on it]
        self._pins_changed = threading.Condition()
        self._pin_every_forward()

    def _bind(self, path: str, layer: str) -> HybridLinear:
        parent_path, _, child = path.rpartition(".")
        try:
            parent = self.model.get_submodule(parent_path) if parent_path else self.model
            linear = getattr(parent, child)
        except AttributeError:
            raise InvalidArgument(FieldError(layer, f"module path {path!r} is not in the model")) from None
        if is_kv_cache(layer):  # the attention module whose K/V a request's cache keeps
            return KVCacheBinding(layer, linear, self)
        if isinstance(linear, HybridLinear):
            raise InvalidArgument(FieldError(layer, f"{path} is already bound by another engine"))
        if not isinstance(linear, nn.Linear):
            raise InvalidArgument(FieldError(layer, f"{path} is a {type(linear).__name__}, not an nn.Linear"))
        binding = HybridLinear(linear, layer, self, self.kernel)
        setattr(parent, child, binding)
        return binding

    def _pin_every_forward(self) -> None:
        forward = self.model.forward

        @functools.wraps(forward)
        def pinned_forward(*args, **kwargs):
            cancelled = getattr(self._local, "cancelled", None)
            if cancelled is not None and cancelled():
                raise PassCancelled("the pass was cancelled before its next forward")
            with self.pinned():
                return forward(*args, **kwargs)

        self.model.forward = pinned_forward

    # --- forward passes -------------------------------------------------------------------------

    def snapshot_for_this_thread(self) -> Snapshot:
        return getattr(self._local, "snapshot", None) or self._snapshot

    @contextmanager
    def pinned(self) -> Iterator[Snapshot]:
        """Every layer this thread calls inside the block uses one snapshot: the one current at entry
        (or, nested, the enclosing block's)."""
        outer = getattr(self._local, "snapshot", None)
        if outer is not None:
            yield outer
            return
        with self._pins_changed:  # read and count under the lock apply() swaps under: no pass slips by
            snapshot = self._snapshot
            self._pin(snapshot)
        with self._running(snapshot):
            yield snapshot

    @contextmanager
    def using(self, precision_map: Mapping[str, str], cancelled=None) -> Iterator[Snapshot]:
        """Run this thread's passes at another map without changing what everyone else runs (shadow eval).

        With residency "fp8-only" the base copies this map needs come back for the block and leave again
        after it. `cancelled()` is asked before each forward of the block; once true the next forward
        raises PassCancelled (a long evaluation stops at the next batch).
        """
        methods = self._validated(precision_map)
        snapshot = Snapshot(-1, MappingProxyType(methods))
        try:
            with self._apply_lock:
                for layer, precision in methods.items():
                    self._ready(layer, precision)
                with self._pins_changed:
                    self._pin(snapshot)
            outer_cancelled, self._local.cancelled = getattr(self._local, "cancelled", None), cancelled
            try:
                with self._running(snapshot):
                    yield snapshot
            finally:
                self._local.cancelled = outer_cancelled
        finally:  # also when preparing failed half-way (NaN weights): no base copy stays behind
            if self.residency == "fp8-only":
                with self._apply_lock:
                    self._drop_unneeded_bases()

    def _pin(self, snapshot: Snapshot) -> None:
        self._pins.setdefault(id(snapshot), [snapshot, 0])[1] += 1

    @contextmanager
    def _running(self, snapshot: Snapshot) -> Iterator[Snapshot]:
        outer, self._local.snapshot = getattr(self._local, "snapshot", None), snapshot
        try:
            yield snapshot
        finally:
            self._local.snapshot = outer
            if outer is None:  # the thread's outermost pass ended: its quantized inputs are done with
                self.shared_inputs.clear()
            with self._pins_changed:
                entry = self._pins[id(snapshot)]
                entry[1] -= 1
                if not entry[1]:
                    del self._pins[id(snapshot)]
                self._pins_changed.notify_all()

    # --- switching ------------------------------------------------------------------------------

    @property
    def tag(self) -> int:
        return self._snapshot.tag

    def current_map(self) -> dict[str, str]:
        return dict(self._snapshot.methods)

    def prepare(self, precisions: Iterable[str], layers: Iterable[str] | None = None) -> None:
        """Build FP8 copies now rather than at the first switch that needs them (e.g. at startup)."""
        precisions = list(precisions)
        layers = [layer for layer in (self.catalog if layers is None else layers) if not is_kv_cache(layer)]
        for precision in precisions:
            self._validated(dict.fromkeys(layers, precision))
        with self._apply_lock:
            for layer in layers:
                for precision in precisions:
                    self.bindings[layer].prepare(precision)

    def apply(self, precision_map: Mapping[str, str], tag: int = 0) -> list[str]:
        """Switch to `precision_map` (layers it leaves out run at base); returns the layers that changed.

        Everything that can fail (unknown layer or precision, NaN weights) fails before the switch,
        and then nothing has changed. The switch itself is one assignment of a new snapshot.
        """
        methods = self._validated(precision_map)
        if self.residency == "fp8-only" and getattr(self._local, "snapshot", None) is not None:
            raise FailedPrecondition("apply() was called inside a pinned forward pass; with residency "
                                     "'fp8-only' it would wait for that pass to end")
        with self._apply_lock:
            old = self._snapshot
            changed = [layer for layer in self.catalog if methods[layer] != old.methods[layer]]
            for layer in changed:
                self._ready(layer, methods[layer])
            with self._pins_changed:
                self._snapshot = Snapshot(tag, MappingProxyType(methods))
            if self.residency == "fp8-only" and changed:
                # Passes still running on the old map may read base weights that are about to leave.
                with self._pins_changed:
                    self._pins_changed.wait_for(lambda: id(old) not in self._pins)
                self._drop_unneeded_bases()
        return changed

    def _validated(self, precision_map: Mapping[str, str]) -> dict[str, str]:
        errors = []
        for layer, precision in precision_map.items():
            if layer not in self.bindings:
                errors.append(FieldError(layer, f"is not in this model's catalog ({len(self.catalog)} layers, "
                                                f"e.g. {self.catalog[0]!r})"))
            elif is_kv_cache(layer) and precision not in KV_CACHE_PRECISIONS:
                errors.append(FieldError(layer, f"a KV cache runs {' or '.join(KV_CACHE_PRECISIONS)}, not {precision!r}"))
            elif precision not in METHODS:
                errors.append(FieldError(layer, f"unknown precision {precision!r}; this engine runs "
                                                f"{', '.join(METHODS)}"))
        if errors:
            raise InvalidArgument(errors)
        return {layer: precision_map.get(layer, BASE) for layer in self.catalog}

    def _ready(self, layer: str, precision: str) -> None:
        binding = self.bindings[layer]
        if METHODS[precision].uses_base_weight:  # a KV cache's bf16 and fp8 need no preparation either way
            binding.restore_base()
        else:
            binding.prepare(precision)

    def _drop_unneeded_bases(self) -> None:
        """fp8-only: the base copy leaves the device for every layer no live map runs at base."""
        with self._pins_changed:
            live = [self._snapshot, *(entry[0] for entry in self._pins.values())]
        needed = {layer for s in live for layer, p in s.methods.items() if METHODS[p].uses_base_weight}
        for layer, binding in self.bindings.items():
            if layer not in needed:
                binding.drop_base()

    # --- reporting ------------------------------------------------------------------------------

    def status(self) -> list[LayerStatus]:
        """Per layer, in catalog order: the precision it runs and the kernel that computes it."""
        snapshot = self._snapshot
        return [LayerStatus(layer, p, self.bindings[layer].kernel_name(p)) for layer, p in snapshot.methods.items()]

    def resident_bytes(self) -> dict[str, int]:
        """Weight bytes (scales included) of the bound layers on the device, by weight format: "base" (the
        loaded dtype, see `base_dtype`), "fp8" (per channel, shared by fp8 and fp8-weight-only) and
        "fp8-tensor"; and "host" for base copies kept off the device (fp8-only)."""
        totals: Counter = Counter()
        for binding in self.bindings.values():
            totals.update(binding.device_bytes())
            totals["host"] += binding.host_bytes()
        return {name: count for name, count in totals.items() if count or name == "base"}

    def describe_hardware(self) -> dict:
        """What the worker's hello says it runs on: `fp8_kernel` only where a real FP8 GEMM runs. torch's CPU
        `_scaled_mm` computes the right numbers slowly: a reference path, reported as one."""
        device = str(self.device)
        if self.device.type == "cuda":
            device = f"{device} {torch.cuda.get_device_name(self.device)}"
        real = self.kernel == kernels.SCALED_MM and self.device.type == "cuda"
        kernel = self.kernel
        if self.kernel == kernels.SCALED_MM and not real:
            kernel = f"{self.kernel} ({self.device.type} reference)"
        return {"device": device, "fp8_kernel": real, "kernel": kernel,
                "dtype": str(self.base_dtype).removeprefix("torch."), "torch_version": torch.__version__}
