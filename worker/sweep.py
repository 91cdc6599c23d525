"""Sensitivity sweep: one unit (a layer, or a group of layers) at a time at a lower precision, the rest at
base; measure, choose.

Each unit gets the first precision of the ladder (e.g. fp8, then fp8-weight-only) whose drop, the unit
alone, fits the budget. Per-unit drops do not add up, so the chosen map is then evaluated together
and, while the combined drop exceeds the budget, the most sensitive unit moves one step down its
ladder (to base after the last step): the fallback of accuracy-aware tuning.

Two ways to get there with the same decisions. `exact` measures every unit; `fast` (the default,
worker.sweep_fast) estimates every unit's drop from one forward and a few backward passes
(worker.sweep_estimate) and measures exactly only what a decision depends on. Where the model can run
from the middle of a block (`LoadedModel.staged`), every run starts at the first layer it changes, on
activations kept from an earlier pass.
"""

from __future__ import annotations

import inspect
import math
import re
import time
from dataclasses import asdict, dataclass, field

import torch

from mixprec import metrics as directions
from mixprec import policy as lang
from mixprec.families import fused_unit_name
from worker.device import dtype_name
from worker.engine import HybridEngine
from worker.engine.methods import METHODS
from worker.models import LoadedModel
from worker.quality.bound import METHOD as BOUND_METHOD
from worker.quality.docstrings import Pair
from worker.quality.evaluators import evaluator_for
from worker.quality.shadow import EvalResult

# Agreement with the base reference separates layers far better than label metrics on a robust model.
DEFAULT_METRIC = "cosine_to_base"
ALGORITHMS = ("fast", "exact")


@dataclass
class Trial:
    """One unit at one precision of the ladder: how much worse the metric gets (positive = worse)."""

    precision: str
    estimate: float | None = None   # estimated (fast sweep), in the metric's units
    measured: float | None = None   # measured exactly
    deltas: dict[str, float] = field(default_factory=dict)  # every metric's delta, where measured

    @property
    def value(self) -> float:
        """What decisions use: the measurement where there is one."""
        return self.measured if self.measured is not None else self.estimate


@dataclass
class Unit:
    """What is switched at once: one layer, or one layer kind across every block."""

    name: str
    layers: list[str]
    delta: float | None = None  # the metric at the first precision minus at base (None: only estimated)
    drop: float = 0.0           # how much worse the metric got at the first precision (measured, else estimated)
    deltas: dict[str, float] = field(default_factory=dict)  # every metric's delta, for a later re-read
    chosen: bool = False        # runs below base
    reverted: bool = False      # moved down its ladder by the combined check
    precision: str = lang.BASE_PRECISION  # what the sweep gave it
    trials: list[Trial] = field(default_factory=list)  # one per precision of the ladder


@dataclass
class SweepResult:
    model: str
    metric: str
    precision: str              # the ladder, comma-separated
    granularity: str
    max_drop: float
    samples: int
    units: list[Unit]
    combined: list[dict] = field(default_factory=list)  # each combined evaluation: units, predicted, measured
    precision_map: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    strategy: str = "staged"
    algorithm: str = "fast"
    calibration_drop: float = 0.0   # the chosen map's measured worsening on the calibration pairs
    holdout: dict = field(default_factory=dict)  # pairs, drop, deltas: the same map on pairs the sweep never saw
    fast: dict = field(default_factory=dict)     # the fast sweep's account: estimates, margins, what it measured
    device: str = ""            # where it was measured, and the base precision's real dtype
    dtype: str = ""
    confidence: float = 0.0     # the choice held its bound (not its point estimate) to the budget; 0: point choice
    calibration_bound: float | None = None  # the chosen map's worsening bound on the calibration items
    bound_method: str = ""
    data: dict = field(default_factory=dict)  # the data's fingerprint (sha256, bytes, records), never its text
    direction: str = ""         # the metric's good direction ("higher", "lower"): a user metric's, for readers

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

    def estimated(self, units: list[Unit], seconds: float, correlation: float | None) -> None:
        """Every unit's drop has been estimated (fast sweep)."""

    def exact(self, unit: Unit, trial: Trial, why: str) -> None:
        """The fast sweep measured `trial` of `unit` exactly, because `why`."""

    def combined(self, check: dict, max_drop: float, reverted: Unit | None) -> None:
        """A combined check ran; `reverted` moved down its ladder because the check was over the budget."""

    def holdout(self, result: SweepResult) -> None:
        """The chosen map was measured on the held-out pairs."""

    def bound(self, check: dict, max_drop: float, reverted: Unit | None) -> None:
        """The chosen map's bound was checked; `reverted` moved down its ladder because it was over the budget."""


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


def ladder_of(precision: str | list[str]) -> list[str]:
    """`fp8,fp8-weight-only` -> ['fp8', 'fp8-weight-only']: what each unit is tried at, in order."""
    ladder = [p.strip() for p in precision.split(",")] if isinstance(precision, str) else list(precision)
    for p in ladder:
        if p not in lang.PRECISIONS or p == lang.BASE_PRECISION:
            raise ValueError(f"precision {p!r}: sweep toward one of fp8, fp8-tensor, fp8-weight-only")
    if not ladder or len(set(ladder)) != len(ladder):
        raise ValueError(f"precision {precision!r}: name each precision once")
    return ladder


class Sweep:
    """The measurements a sweep makes: one unit alone at one precision, or a whole map (a combined check)."""

    def __init__(self, model: LoadedModel, engine: HybridEngine, pairs: tuple[Pair, ...],
                 metric: str | None = DEFAULT_METRIC, precision: str | list[str] = "fp8", strategy: str = "staged",
                 pack: bool = True, estimator=None, user_metrics=(), windows: int | None = None):
        """`estimator` (worker.sweep_estimate.Estimator): records the fast sweep's estimates during the
        reference pass, where the staged runner can (`estimator.items` stays 0 where it cannot).
        `user_metrics`: a user's metric functions, measured beside the built-in ones; `windows`: a decoder's
        token windows (default one per pair)."""
        # Embedders: agreement on the pairs; decoders: LLM metrics on token windows of their text.
        self.evaluator = evaluator_for(engine, model, pairs, user_metrics=user_metrics, windows=windows)
        metric = metric or self.evaluator.default_metric
        if metric not in self.evaluator.metrics:
            raise ValueError(f"metric {metric!r} is not one of {', '.join(self.evaluator.metrics)}")
        self.ladder = ladder_of(precision)
        if strategy == "staged" and (model.staged is None or model.batches is None):
            strategy = "naive"  # the model has no way to start mid-network
        self.model, self.engine, self.pairs = model, engine, pairs
        self.metric, self.precision, self.strategy = metric, self.ladder[0], strategy
        self.texts = self.evaluator.texts
        self._captured = None
        if strategy == "staged":
            # Padding rows are skipped unless a precision's scales look across rows (per tensor). The
            # pass that keeps the activations also gives the base reference.
            packed = pack and all(METHODS[p].token_wise for p in self.ladder)
            batches = model.batches(self.texts)
            with engine.using({}):
                if estimator is not None and "during" in inspect.signature(model.staged.capture).parameters:
                    with estimator.recording():
                        reference, self._captured = model.staged.capture(batches, packed=packed, during=estimator.batch)
                else:
                    reference, self._captured = model.staged.capture(batches, packed=packed)
            self.evaluator.use_reference(reference)
        self.evaluator.reference()  # computed here if the capture did not
        self._check_cache, self._check_map = self._captured, {}
        self._last: tuple[dict, EvalResult] | None = None

    def worsening(self, deltas: dict[str, float]) -> float:
        return directions.worsening(self.metric, deltas[self.metric])

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

    def deltas(self, vectors: torch.Tensor) -> dict[str, float]:
        """Every metric at `vectors` minus the same metric at base."""
        return self.evaluator.compare(vectors).deltas

    def check_result(self, assignment: dict[str, str]) -> EvalResult:
        """`check`'s whole result, with every metric's values per item (the bound reads them)."""
        if self._last is None or self._last[0] != assignment:
            self.check(assignment)
        return self._last[1]

    def trials(self, unit: Unit) -> list[Trial]:
        if [t.precision for t in unit.trials] != self.ladder:
            unit.trials = [Trial(p) for p in self.ladder]
        return unit.trials

    def measure_trial(self, unit: Unit, rung: int) -> Trial:
        """`unit` alone at the ladder's `rung`-th precision, everything before its earliest layer from the cache."""
        trial = self.trials(unit)[rung]
        if any(lang.is_kv_cache(layer) and trial.precision not in lang.KV_CACHE_PRECISIONS for layer in unit.layers):
            trial.measured = math.inf  # a KV cache has no such precision: the unit skips this step
            return trial
        precision_map = dict.fromkeys(unit.layers, trial.precision)
        start = self._start_of(unit.layers)
        if start is None:
            vectors = self.evaluator.embed(precision_map)
        else:
            with self.engine.using(precision_map):
                vectors = self.model.staged.embed_from(self._captured, *start)
        trial.deltas = self.deltas(vectors)
        trial.measured = self.worsening(trial.deltas)
        if rung == 0:
            unit.deltas, unit.delta, unit.drop = trial.deltas, trial.deltas[self.metric], trial.measured
        return trial

    def measure(self, units: list[Unit], progress: SweepProgress = SILENT) -> list[Unit]:
        """Every unit alone at the ladder's first precision (the exact sweep's first step)."""
        work = [self.work(unit) for unit in units]
        progress.start(units, work)
        for unit, cost in zip(units, work, strict=True):
            self.measure_trial(unit, 0)
            progress.measured(unit, cost)
        return units

    def check(self, assignment: dict[str, str]) -> dict[str, float]:
        """Every metric's delta with `assignment`'s layers at their precisions together. Consecutive
        checks differ in few units: each starts at the first layer that differs from the previous check,
        on that check's activations (the first on the reference's)."""
        start = self._start_of({layer for layer in set(assignment) | set(self._check_map)
                                if assignment.get(layer) != self._check_map.get(layer)})
        if start is None and self._captured is not None and assignment == self._check_map:
            start = (len(self.model.staged.blocks) - 1, 0)  # the same map again: any start gives it
        if start is None:
            vectors = self.evaluator.embed(assignment)
        else:
            with self.engine.using(assignment):
                vectors, self._check_cache = self.model.staged.capture_from(self._check_cache, *start)
            self._check_map = dict(assignment)
        result = self.evaluator.compare(vectors)
        self._last = (dict(assignment), result)
        return result.deltas

    def next_rung(self, unit: Unit, rung: int | None, max_drop: float) -> int | None:
        """The first precision after `rung` (-1: from the start) that `unit` alone takes within the
        budget, measured where it was not yet; None: base."""
        for k in range(-1 if rung is None else rung + 1, len(self.ladder)):
            if k < 0:
                continue
            trial = self.trials(unit)[k]
            if trial.measured is None:
                self.measure_trial(unit, k)
            if trial.measured <= max_drop:
                return k
        return None

    def choose(self, units: list[Unit], max_drop: float,
               progress: SweepProgress = SILENT) -> tuple[dict[str, str], list[dict]]:
        """The exact walk: each unit at its first precision within the budget alone, then combined checks;
        while one is over the budget, the most sensitive unit moves one step down its ladder."""
        for unit in units:
            unit.reverted = False
        rungs = {i: self.next_rung(unit, -1, max_drop) for i, unit in enumerate(units)}
        history = []
        while any(r is not None for r in rungs.values()):
            check = self.record_check(units, rungs)
            history.append(check)
            if check["measured_drop"] <= max_drop:
                check["final"] = True
                progress.combined(check, max_drop, None)
                break
            worst = most_sensitive(units, rungs)
            units[worst].reverted = True
            rungs[worst] = self.next_rung(units[worst], rungs[worst], max_drop)
            progress.combined(check, max_drop, units[worst])
        return settle(units, rungs, self.ladder), history

    def record_check(self, units: list[Unit], rungs: dict[int, int | None]) -> dict:
        assignment = assignment_of(units, rungs, self.ladder)
        deltas = self.check(assignment)
        at = [(units[i], r) for i, r in rungs.items() if r is not None]
        return {"units": [u.name for u, _ in at], "precisions": [self.ladder[r] for _, r in at],
                "predicted_drop": sum(u.trials[r].value for u, r in at), "measured_drop": self.worsening(deltas),
                "deltas": deltas}


def most_sensitive(units: list[Unit], rungs: dict[int, int | None]) -> int:
    """The unit whose current precision costs the most alone (ties: the later unit)."""
    return max((i for i, r in rungs.items() if r is not None), key=lambda i: (units[i].trials[rungs[i]].value, i))


def assignment_of(units: list[Unit], rungs: dict[int, int | None], ladder: list[str]) -> dict[str, str]:
    return {layer: ladder[r] for i, r in rungs.items() if r is not None for layer in units[i].layers}


def settle(units: list[Unit], rungs: dict[int, int | None], ladder: list[str]) -> dict[str, str]:
    """Writes what each unit got; the layers below base and their precisions."""
    for i, unit in enumerate(units):
        unit.precision = lang.BASE_PRECISION if rungs[i] is None else ladder[rungs[i]]
        unit.chosen = rungs[i] is not None
        unit.drop = unit.trials[0].value  # the estimate where the fast sweep did not measure it
    return assignment_of(units, rungs, ladder)


def run_sweep(model: LoadedModel, engine: HybridEngine, pairs: tuple[Pair, ...], *, metric: str | None = DEFAULT_METRIC,
              precision: str | list[str] = "fp8", granularity: str = "layer", max_drop: float = 0.001,
              strategy: str = "staged", algorithm: str = "fast", holdout: tuple[Pair, ...] = (),
              progress: SweepProgress = SILENT, confidence: float = 0.0, user_metrics=(),
              windows: int | None = None, data: dict | None = None) -> SweepResult:
    """Sweeps `pairs`; with `confidence` > 0, trims the chosen map until the upper bound of its worsening
    (worker.quality.bound) fits the budget; then, when `holdout` pairs are given, measures the chosen map on
    them too. `data`: the fingerprint of a user's data, for the artifact."""
    from worker.sweep_bound import hold_to_bound, holdout_report

    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm {algorithm!r} is not one of {', '.join(ALGORITHMS)}")
    started = time.perf_counter()
    units = units_for(list(engine.catalog), granularity)
    progress.reference(2 * len(pairs))
    account, estimator = {}, None
    if algorithm == "fast":
        from worker.sweep_fast import FastChooser, estimator_for

        estimator = estimator_for(model, engine, metric, ladder_of(precision))
    sweep = Sweep(model, engine, pairs, metric=metric, precision=precision, strategy=strategy, estimator=estimator,
                  user_metrics=user_metrics, windows=windows)
    if algorithm == "exact":
        sweep.measure(units, progress)
        chosen, history = sweep.choose(units, max_drop, progress)
    else:
        chooser = FastChooser(sweep, progress, estimator)
        chosen, history = chooser.choose(units, max_drop)
        account = chooser.account()
    chosen, bound = hold_to_bound(sweep, units, chosen, history, max_drop, confidence, progress)
    precision_map = {layer: chosen.get(layer, lang.BASE_PRECISION) for layer in engine.catalog}
    result = SweepResult(model.name, sweep.metric, ",".join(sweep.ladder), granularity, max_drop, sweep.evaluator.samples, units,
                         history, precision_map, 0.0, sweep.strategy, algorithm,
                         calibration_drop=final_drop(history), fast=account, device=str(engine.device),
                         dtype=dtype_name(engine.base_dtype), confidence=confidence, calibration_bound=bound,
                         bound_method=BOUND_METHOD if confidence > 0 else "", data=data or {"builtin": "docstrings"},
                         direction=directions.direction(sweep.metric).value)
    if holdout:
        held = evaluator_for(engine, model, holdout, user_metrics=user_metrics, windows=windows).evaluate(chosen)
        result.holdout = holdout_report(sweep.metric, held, confidence, bound, len(holdout))
        progress.holdout(result)
    result.seconds = time.perf_counter() - started
    return result


def final_drop(history: list[dict]) -> float:
    """The measured worsening of the map the sweep settled on (0 when it kept everything at base)."""
    return next((c["measured_drop"] for c in history if c.get("final")), 0.0)


def split_holdout(pairs: tuple[Pair, ...], holdout: int) -> tuple[tuple[Pair, ...], tuple[Pair, ...]]:
    """(calibration, held out): `holdout` pairs spread evenly over `pairs` (so over every module the set
    covers) are kept out of the sweep; the rest calibrate it."""
    if holdout <= 0:
        return pairs, ()
    holdout = min(holdout, len(pairs) // 2)
    held = {int((j + 0.5) * len(pairs) / holdout) for j in range(holdout)}
    return (tuple(p for i, p in enumerate(pairs) if i not in held), tuple(pairs[i] for i in sorted(held)))
