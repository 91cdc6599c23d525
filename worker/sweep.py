"""Sensitivity sweep: one layer (or layer group) at a time in FP8, the rest at base; measure, choose.

Per-layer deltas do not add up, so the chosen layers are then evaluated together and, while the
combined drop exceeds the budget, the most sensitive chosen layer goes back to base (the fallback of
accuracy-aware tuning). Where the model can run from the middle of a block (`LoadedModel.staged`),
every run starts at the first layer it changes, on activations kept from an earlier pass.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field

import torch

from mixprec import metrics as directions
from mixprec import policy as lang
from mixprec.families import fused_unit_name
from worker.engine import HybridEngine
from worker.engine.methods import METHODS
from worker.models import LoadedModel
from worker.quality.docstrings import Pair
from worker.quality.evaluators import evaluator_for

# Agreement with the base reference separates layers far better than label metrics on a robust model.
DEFAULT_METRIC = "cosine_to_base"


@dataclass
class Unit:
    """What is switched at once: one layer, or one layer kind across every block."""

    name: str
    layers: list[str]
    delta: float = 0.0          # metric at FP8 minus metric at base
    drop: float = 0.0           # -delta: how much the metric got worse
    deltas: dict[str, float] = field(default_factory=dict)  # every metric's delta, for a later re-read
    chosen: bool = False
    reverted: bool = False      # chosen alone, returned to base by the combined check


@dataclass
class SweepResult:
    model: str
    metric: str
    precision: str
    granularity: str
    max_drop: float
    samples: int
    units: list[Unit]
    combined: list[dict] = field(default_factory=list)  # each combined evaluation: layers, predicted, measured
    precision_map: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    strategy: str = "staged"

    def to_json(self) -> dict:
        return asdict(self)


class SweepProgress:
    """What a sweep tells its caller while it runs (worker.sweep_progress draws it); this one says nothing."""

    def reference(self, texts: int) -> None:
        """The reference pass over `texts` calibration texts starts."""

    def start(self, units: list[Unit], work: list[float]) -> None:
        """Single-unit runs start; `work` is each one's estimated cost, in full forward passes."""

    def measured(self, unit: Unit, work: float) -> None:
        """`unit` alone has been measured."""

    def combined(self, check: dict, max_drop: float, reverted: Unit | None) -> None:
        """A combined check ran; `reverted` went back to base because it was over the budget."""


SILENT = SweepProgress()


def units_for(catalog: list[str], granularity: str) -> list[Unit]:
    if granularity == "layer":
        return [Unit(layer, [layer]) for layer in catalog]
    if granularity == "fused":  # q/k/v of a block share one decision, gate/up another (serving engines fuse them)
        fused: dict[str, list[str]] = {}
        for layer in catalog:
            fused.setdefault(fused_unit_name(layer), []).append(layer)
        return [Unit(name, layers) for name, layers in fused.items()]
    if granularity != "group":
        raise ValueError(f"granularity {granularity!r} is none of 'layer', 'fused', 'group'")
    groups: dict[str, list[str]] = {}
    for layer in catalog:
        m = re.match(r"^layers\.\d+\.(.+)$", layer)
        groups.setdefault(f"layers.*.{m.group(1)}" if m else layer, []).append(layer)
    return [Unit(name, layers) for name, layers in groups.items()]


class Sweep:
    def __init__(self, model: LoadedModel, engine: HybridEngine, pairs: tuple[Pair, ...],
                 metric: str | None = DEFAULT_METRIC, precision: str = "fp8", strategy: str = "staged",
                 pack: bool = True):
        # Embedders: agreement on the docstring pairs; decoders: LLM metrics on token windows of their text.
        self.evaluator = evaluator_for(engine, model, pairs)
        metric = metric or self.evaluator.default_metric
        if metric not in self.evaluator.metrics:
            raise ValueError(f"metric {metric!r} is not one of {', '.join(self.evaluator.metrics)}")
        if precision not in lang.PRECISIONS or precision == lang.BASE_PRECISION:
            raise ValueError(f"precision {precision!r}: sweep toward one of fp8, fp8-tensor, fp8-weight-only")
        if strategy == "staged" and (model.staged is None or model.batches is None):
            strategy = "naive"  # the model has no way to start mid-network
        self.model, self.engine, self.pairs = model, engine, pairs
        self.metric, self.precision, self.strategy = metric, precision, strategy
        texts = self.evaluator.texts
        self._captured = None
        if strategy == "staged":
            # Padding rows are skipped unless the precision's scales look across rows (per tensor). The
            # pass that keeps the activations also gives the base reference.
            packed = pack and METHODS[precision].token_wise
            with engine.using({}):
                reference, self._captured = model.staged.capture(model.batches(texts), packed=packed)
            self.evaluator.use_reference(reference)
        self.evaluator.reference()  # computed here if the capture did not

    def work(self, unit: Unit) -> float:
        """Estimated cost of measuring `unit`, in full forward passes (the progress bar's ETA)."""
        start = self._start_of(unit.layers)
        return 1.0 if start is None else self.model.staged.work(*start)

    def _start_of(self, layers) -> tuple[int, int] | None:
        """(block, stage) of the earliest of `layers`: a run changing them starts there, since nothing
        upstream changes; None: a full pass."""
        if self._captured is None:
            return None
        stages = [self.model.staged.stage_of(layer) for layer in layers]
        return None if None in stages else min(stages)

    def _embed_unit(self, unit: Unit) -> torch.Tensor:
        precision_map = {layer: self.precision for layer in unit.layers}
        start = self._start_of(unit.layers)
        if start is None:
            return self.evaluator.embed(precision_map)
        # Everything before the earliest switched layer is the cached base.
        with self.engine.using(precision_map):
            return self.model.staged.embed_from(self._captured, *start)

    def deltas(self, vectors: torch.Tensor) -> dict[str, float]:
        """Every metric at `vectors` minus the same metric at base."""
        return self.evaluator.compare(vectors).deltas

    def measure(self, units: list[Unit], progress: SweepProgress = SILENT) -> list[Unit]:
        work = [self.work(unit) for unit in units]
        progress.start(units, work)
        for unit, cost in zip(units, work, strict=True):
            unit.deltas = self.deltas(self._embed_unit(unit))
            unit.delta = unit.deltas[self.metric]
            unit.drop = directions.worsening(self.metric, unit.delta)
            progress.measured(unit, cost)
        return units

    def choose(self, units: list[Unit], max_drop: float,
               progress: SweepProgress = SILENT) -> tuple[dict[str, str], list[dict]]:
        """Layers under the budget alone, then the combined check with fallback."""
        for unit in units:
            unit.chosen = unit.reverted = False
        chosen = sorted((u for u in units if u.drop <= max_drop), key=lambda u: u.drop)
        history = []
        # Each check differs from the one before only from the unit it returned to base on; it starts
        # there, on the previous check's activations (the first on the reference's).
        cache, cache_map = self._captured, {}
        while chosen:
            precision_map = {layer: self.precision for u in chosen for layer in u.layers}
            start = self._start_of(set(precision_map) ^ set(cache_map))
            if start is None:
                deltas = self.deltas(self.evaluator.embed(precision_map))
            else:
                with self.engine.using(precision_map):
                    vectors, cache = self.model.staged.capture_from(cache, *start)
                cache_map = precision_map
                deltas = self.deltas(vectors)
            measured, predicted = directions.worsening(self.metric, deltas[self.metric]), sum(u.drop for u in chosen)
            history.append({"units": [u.name for u in chosen], "predicted_drop": predicted, "measured_drop": measured,
                            "deltas": deltas})
            if measured <= max_drop:
                progress.combined(history[-1], max_drop, None)
                break
            worst = chosen.pop()  # the most sensitive chosen unit goes back to base
            worst.reverted = True
            progress.combined(history[-1], max_drop, worst)
        for unit in chosen:
            unit.chosen = True
        return {layer: self.precision for u in chosen for layer in u.layers}, history


def run_sweep(model: LoadedModel, engine: HybridEngine, pairs: tuple[Pair, ...], *, metric: str | None = DEFAULT_METRIC,
              precision: str = "fp8", granularity: str = "layer", max_drop: float = 0.001, strategy: str = "staged",
              progress: SweepProgress = SILENT) -> SweepResult:
    started = time.perf_counter()
    units = units_for(list(engine.catalog), granularity)
    progress.reference(2 * len(pairs))
    sweep = Sweep(model, engine, pairs, metric=metric, precision=precision, strategy=strategy)
    sweep.measure(units, progress)
    fp8_map, history = sweep.choose(units, max_drop, progress)
    precision_map = {layer: fp8_map.get(layer, lang.BASE_PRECISION) for layer in engine.catalog}
    return SweepResult(model.name, sweep.metric, precision, granularity, max_drop, sweep.evaluator.samples, units,
                       history,
                       precision_map, time.perf_counter() - started, sweep.strategy)
