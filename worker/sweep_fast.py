"""The fast sweep: every unit's drop estimated, exact runs only where a decision depends on them.

It walks the same path as the exact sweep (`Sweep.choose`): each unit at its first precision within the
budget alone, then the most sensitive unit down its ladder until the combined drop fits. The walk runs
on estimates (worker.sweep_estimate), each taken as an interval: the estimate plus or minus a margin
learned from how far the estimates missed on the trials measured exactly (1.5 times the largest
relative miss so far, never narrower than three standard errors of the estimate's own probe noise;
unbounded until three trials are measured, which are the cheapest runs near the combined check's cut).
A trial is measured exactly only when its interval leaves a decision open: whether it fits the budget
alone, or whether it sits on the other side of the walk's stopping point from a unit it might swap
places with. The combined drop of each
state of the walk is predicted the same way (cross terms included); the state predicted nearest the
budget is checked exactly first. From then on a state's drop is predicted from the nearest state
checked: its measured drop plus the estimated change of the few units between them, with their
margin. Earlier states that might still pass are bisected with exact checks, so the walk stops where
the exact walk's first passing check is.
"""

from __future__ import annotations

import math

from mixprec.errors import FieldError, InvalidArgument
from worker.models.staged import mean_pooled
from worker.sweep import Sweep, SweepProgress, Unit, assignment_of, settle
from worker.sweep_estimate import COSINE, Estimates, Estimator, Probe, fisher_probe, nll_probe, rank_correlation

SAFETY = 1.5       # the margin: this many times the largest relative miss seen
MIN_MEASURED = 3   # trials measured before the margin is trusted at all
NOISE_SIGMAS = 3   # an estimate's interval is never narrower than this many standard errors of its probes
# Backward passes per batch (the estimate's noise falls as 1 / sqrt(probes * items)): an embedder's cost
# a whole pass each; a decoder's start below its vocabulary-wide head, which is most of its pass.
PROBES = {"cosine_to_base": 2, "kl_divergence": 16}


class Margin:
    """How far estimates missed, relative; with `scaled`, the estimates are a proxy of the metric (e.g. the
    cosine estimate for a retrieval metric), and the scale between them is fitted on the measured ones."""

    def __init__(self, scaled: bool, minimum: int = MIN_MEASURED):
        self.scaled, self.minimum = scaled, minimum
        self.seen: list[tuple[float, float]] = []  # (raw estimate, measured)
        self.scale, self.floor = 1.0, 0.0

    def learn(self, raw: float, measured: float) -> None:
        self.seen.append((raw, measured))
        if self.scaled:
            square = sum(e * e for e, _ in self.seen)
            self.scale = sum(e * x for e, x in self.seen) / square if square > 0 else 1.0

    def misses(self) -> list[float]:
        return [abs(x - self.scale * e) / max(abs(self.scale * e), self.floor, 1e-30) for e, x in self.seen]

    @property
    def width(self) -> float:
        if len(self.seen) < self.minimum:
            return math.inf
        return SAFETY * max(self.misses())

    def bounds(self, raw: float, noise: float = 0.0) -> tuple[float, float]:
        """The interval of an estimate `raw` whose probes' standard error is `noise`: the learned margin,
        and never less than NOISE_SIGMAS standard errors (the misses seen so far can all be small by luck)."""
        value, width = self.scale * raw, self.width
        if math.isinf(width) or math.isnan(value) or math.isinf(noise):
            return -math.inf, math.inf
        spread = max(width * max(abs(value), self.floor), NOISE_SIGMAS * abs(self.scale) * noise)
        return value - spread, value + spread


class FastChooser:
    def __init__(self, sweep: Sweep, progress: SweepProgress, estimator: Estimator):
        self.sweep, self.progress, self.estimator = sweep, progress, estimator
        self.direct = sweep.metric == estimator.probe.name  # else a proxy whose scale is fitted
        self.history: list[dict] = []
        self._checks: dict[frozenset, dict] = {}
        self.measured_why: list[dict] = []
        self.skipped_checks = 0

    # --- estimates ----------------------------------------------------------------------------------

    def estimates(self) -> Estimates:
        """The estimator's record of the reference pass, or (where the staged runner cannot carry it) a
        pass of its own."""
        if not self.estimator.items:
            _, outputs = probe_for(self.sweep.model, self.sweep.metric, watch=self.estimator.watch)
            with self.estimator.recording(), self.sweep.engine.using({}):
                for _index, tokens in batches_for(self.sweep):
                    self.estimator.batch(outputs(tokens), tokens)
        return self.estimator.result()

    # --- the walk -----------------------------------------------------------------------------------

    def choose(self, units: list[Unit], max_drop: float) -> tuple[dict[str, str], list[dict]]:
        self.units, self.budget, ladder = units, max_drop, self.sweep.ladder
        self.est = self.estimates()
        # A unit at a precision the estimate does not cover (a KV cache outside a recorded decoder pass, or at a
        # precision it cannot take) has none: it is measured (at no cost where the precision cannot run).
        self.raw = {(i, k): self.est.worsening(dict.fromkeys(unit.layers, p))
                    if self.est.covers(dict.fromkeys(unit.layers, p)) else math.nan
                    for i, unit in enumerate(units) for k, p in enumerate(ladder)}
        self.noise = {(i, k): self.est.noise(dict.fromkeys(unit.layers, p)) if math.isfinite(self.raw[(i, k)])
                      else math.inf for i, unit in enumerate(units) for k, p in enumerate(ladder)}
        for i, unit in enumerate(units):
            for k, trial in enumerate(self.sweep.trials(unit)):
                trial.estimate = self.raw[(i, k)]
        self.margin = Margin(scaled=not self.direct)
        finite = sorted(abs(v) for v in self.raw.values() if math.isfinite(v)) or [0.0]
        typical = finite[len(finite) // 2]
        self.margin.floor = 1e-3 * typical  # a near-zero estimate is not held to a relative miss
        self.combined_margin = Margin(scaled=False, minimum=1)
        self.combined_margin.floor = self.margin.floor
        self.progress.estimated(units, self.est.seconds, None)
        while True:
            states, pops, doubts = self._walk()
            predicted = [self._predict(state) for state in states]
            outcome = self._verify(states, pops, doubts, predicted)
            if isinstance(outcome, tuple):
                self._measure(*outcome)
                continue
            final = outcome
            break
        for unit in units:
            unit.reverted = False
        for i, _ in pops[:final]:
            units[i].reverted = True
        for check in self.history:
            check["final"] = check["assignment"] == assignment_of(units, states[final], ladder)
        for check in self.history:
            del check["assignment"]
        return settle(units, states[final], ladder), self.history

    def _value(self, i: int, k: int) -> float:
        trial = self.units[i].trials[k]
        return trial.measured if trial.measured is not None else self.margin.scale * self.raw[(i, k)]

    def _bounds(self, i: int, k: int) -> tuple[float, float]:
        trial = self.units[i].trials[k]
        if trial.measured is not None:
            return trial.measured, trial.measured
        return self.margin.bounds(self.raw[(i, k)], self.noise[(i, k)])

    def _walk(self):
        """The exact sweep's walk on what is known: the states (unit -> rung), the units moved between
        them, and the trials whose fit to the budget alone is in doubt (with the first state it affects)."""
        for i, unit in enumerate(self.units):
            for k, trial in enumerate(unit.trials):
                if trial.measured is None:
                    trial.estimate = self.margin.scale * self.raw[(i, k)]
        doubts: list[tuple[int, int, int]] = []

        def next_rung(i: int, rung: int, state_index: int) -> int | None:
            for k in range(rung + 1, len(self.sweep.ladder)):
                low, high = self._bounds(i, k)
                if low <= self.budget < high:
                    doubts.append((state_index, i, k))
                if self._value(i, k) <= self.budget:
                    return k
            return None

        rungs = {i: next_rung(i, -1, 0) for i in range(len(self.units))}
        states, pops = [dict(rungs)], []
        while any(r is not None for r in rungs.values()):
            worst = max((i for i, r in rungs.items() if r is not None), key=lambda i: (self._value(i, rungs[i]), i))
            pops.append((worst, rungs[worst]))
            rungs[worst] = next_rung(worst, rungs[worst], len(states))
            states.append(dict(rungs))
        return states, pops, doubts

    def _predict(self, state: dict[int, int | None]) -> float:
        assignment = assignment_of(self.units, state, self.sweep.ladder)
        return self.margin.scale * self.est.worsening(assignment)

    def _verify(self, states, pops, doubts, predicted):
        """The final state's index, or (unit, rung, why) of a trial to measure first. The exact walk stops at
        the first state whose check passes: starting from a state checked to pass, every earlier state
        that might pass is a candidate; the latest, if predicted to fail, else the middle one is checked
        next (a bisection that each check, passed or failed, also narrows through `_anchored`)."""
        passing = [j for j in range(len(states)) if (known := self._known(states[j])) is not None
                   and known <= self.budget]
        # The first check: the state predicted nearest the budget, on either side (each check then moves
        # the walk's stop from what it measured).
        nearest = min(range(len(states)), key=lambda e: (abs(predicted[e] - self.budget), e))
        j = passing[0] if passing else nearest
        while True:
            need = self._open_question(j, states, pops, doubts)
            if need:
                return need
            if self._check(states[j], predicted[j]) > self.budget:
                # The last state (every unit at base) passes, so a later one exists: the first predicted
                # within the budget from this check on.
                later = [e for e in range(j + 1, len(states)) if self._anchored(e, states, predicted)[0] <= self.budget]
                j = later[0] if later else len(states) - 1
                continue
            earlier = [e for e in range(j) if self._might_pass(e, states, predicted)]
            if not earlier:
                self.skipped_checks = sum(self._known(states[e]) is None for e in range(j))
                return j
            # The latest candidate when it is predicted to fail (the usual case: the state just before the
            # stop, left to rule out), else the middle one (the stop is further back: bisect).
            latest = earlier[-1]
            e = latest if self._anchored(latest, states, predicted)[0] > self.budget else earlier[len(earlier) // 2]
            need = self._open_question(e, states, pops, doubts)
            if need:
                return need
            if self._check(states[e], predicted[e]) <= self.budget:
                j = e

    def _anchored(self, e: int, states, predicted) -> tuple[float, float]:
        """State `e`'s combined drop and its margin, predicted from the nearest state already checked: that
        check's measured drop plus the estimated change between the two states (the few units in which
        they differ, cross terms included), which is far better known than a whole map's prediction."""
        checked = [(abs(s - e), s) for s in range(len(states)) if self._known(states[s]) is not None]
        if not checked:
            width = self.combined_margin.width
            return predicted[e], (math.inf if math.isinf(width) else width * abs(predicted[e]))
        _, s = min(checked)
        ladder = self.sweep.ladder
        here, there = assignment_of(self.units, states[e], ladder), assignment_of(self.units, states[s], ladder)
        if here == there:
            return self._known(states[s]), 0.0
        # The change's margin: the learned one on the differing layers' own estimates on both sides (a
        # difference of estimates is no better known than they are), and its probes' noise, cross terms included.
        own = (self.est.worsening({k: v for k, v in here.items() if there.get(k) != v})
               + self.est.worsening({k: v for k, v in there.items() if here.get(k) != v}))
        width = self.margin.width
        if math.isinf(width):
            return self._known(states[s]) + predicted[e] - predicted[s], math.inf
        scale = abs(self.margin.scale)
        spread = scale * (width * own + NOISE_SIGMAS * self.est.noise(here, minus=there))
        return self._known(states[s]) + predicted[e] - predicted[s], spread

    def _open_question(self, j, states, pops, doubts):
        """A trial to measure before state `j` can be trusted to be the exact walk's `j`-th state."""
        # Until the margin is learned every trial is in doubt; the first ones measured are those nearest
        # the combined check's cut (which its decision needs measured anyway), the cheapest runs first.
        if math.isinf(self.margin.width) and j > 0:
            cut = self._cut(j, states, pops)
            open_doubts = [(abs(self._value(i, k) - cut) * self.sweep.work(self.units[i]), i, k)
                           for s, i, k in doubts if s <= j]
        else:
            open_doubts = [(abs(self._value(i, k) - self.budget), i, k) for s, i, k in doubts if s <= j]
        if open_doubts:
            _, i, k = min(open_doubts)
            why = ("its estimate is within the margin of the budget" if not math.isinf(self.margin.width) else
                   "the margin is not learned yet, and it is among the cheapest units near the combined check's cut")
            return i, k, why
        popped = {(i, k) for i, k in pops[:j]}
        current = [(i, r) for i, r in states[j].items() if r is not None]
        ambiguous = set()
        for i, k in popped:
            low = self._bounds(i, k)[0]
            for c, r in current:
                if c != i and low < self._bounds(c, r)[1] and (
                        self.units[i].trials[k].measured is None or self.units[c].trials[r].measured is None):
                    ambiguous.update(t for t in ((i, k), (c, r)) if self.units[t[0]].trials[t[1]].measured is None)
        if ambiguous:
            i, k = max(ambiguous, key=lambda t: self._bounds(*t)[1] - self._bounds(*t)[0])
            return i, k, "its estimate is within the margin of a unit on the other side of the combined check's cut"
        return None

    def _cut(self, j: int, states, pops) -> float:
        """Where state `j` divides the units: between the last one moved down and the most sensitive kept."""
        kept = [self._value(i, r) for i, r in states[j].items() if r is not None]
        last = self._value(*pops[j - 1])
        return (last + max(kept)) / 2 if kept else last

    def _measure(self, i: int, k: int, why: str) -> None:
        trial = self.sweep.measure_trial(self.units[i], k)
        if math.isfinite(self.raw[(i, k)]) and math.isfinite(trial.measured):
            self.margin.learn(self.raw[(i, k)], trial.measured)
        self.measured_why.append({"unit": self.units[i].name, "precision": trial.precision, "why": why})
        self.progress.exact(self.units[i], trial, why)

    def _might_pass(self, e: int, states, predicted) -> bool:
        """Whether the exact walk could stop at state `e`: checked within the budget, or not checked and
        predicted (from the nearest check) within the margin of the budget."""
        known = self._known(states[e])
        if known is not None:
            return known <= self.budget
        value, spread = self._anchored(e, states, predicted)
        return not value - spread > self.budget

    def _known(self, state) -> float | None:
        check = self._checks.get(frozenset(assignment_of(self.units, state, self.sweep.ladder).items()))
        return None if check is None else check["measured_drop"]

    def _check(self, state: dict[int, int | None], predicted: float) -> float:
        assignment = assignment_of(self.units, state, self.sweep.ladder)
        key = frozenset(assignment.items())
        if key in self._checks:
            return self._checks[key]["measured_drop"]
        if not assignment:
            check = {"units": [], "precisions": [], "predicted_drop": 0.0, "measured_drop": 0.0, "deltas": {}}
        else:
            deltas = self.sweep.check(assignment)
            at = [(self.units[i], r) for i, r in state.items() if r is not None]
            check = {"units": [u.name for u, _ in at], "precisions": [self.sweep.ladder[r] for _, r in at],
                     "predicted_drop": predicted, "measured_drop": self.sweep.worsening(deltas), "deltas": deltas}
            self.combined_margin.learn(predicted, check["measured_drop"])
            self.history.append({**check, "assignment": assignment})
            self.progress.combined(check, self.budget, None)
        self._checks[key] = check
        return check["measured_drop"]

    def account(self) -> dict:
        """What the fast sweep did, for the artifact: its estimates' cost and accuracy, what it measured, why."""
        first = [(self.raw[(i, 0)], u.trials[0].measured) for i, u in enumerate(self.units)
                 if u.trials[0].measured is not None]
        return {
            "estimate_seconds": self.est.seconds, "probes": self.estimator.probe.probes,
            "estimate_of": self.estimator.probe.name,
            "scale": self.margin.scale, "margin": self.margin.width, "combined_margin": self.combined_margin.width,
            "measured": self.measured_why, "combined_checks": len(self.history),
            "checks_skipped": self.skipped_checks,
            "rank_correlation_measured": (rank_correlation([e for e, _ in first], [x for _, x in first])
                                          if len(first) > 2 else None),
        }



def estimator_for(model, engine, metric: str, ladder: list[str], probes: int | None = None,
                  seed: int = 0) -> Estimator:
    probe, _ = probe_for(model, metric)
    if probe.quadratic:
        probe = Probe(**{**probe.__dict__, "probes": probes or PROBES.get(probe.name, probe.probes)})
    return Estimator(engine, probe, ladder, seed)


def probe_for(model, metric: str, watch=None):
    """(probe, differentiable outputs of one batch) for the model and metric: the embeddings for an
    embedder (cosine to base), the final hidden states for a decoder (KL divergence; perplexity from the
    NLL), whose probes pass through its head themselves (`watch(cache)`, if given, sees the KV cache each
    forward builds). The probe's own metric is estimated in its units, any other through it as a proxy."""
    decoder = getattr(model, "decoder", None)
    if decoder is not None:
        def hidden(ids):
            cache = decoder.new_cache() if watch is None else watch(decoder.new_cache())
            return decoder.module.model(input_ids=ids, cache=cache, use_cache=True).last_hidden_state

        weight = decoder.module.lm_head.weight.detach()
        probe = (nll_probe(weight, decoder.softcap) if metric == "perplexity"
                 else fisher_probe(weight, decoder.softcap, PROBES["kl_divergence"]))
        return probe, hidden
    if model.embed is None or model.batches is None:  # the same refusal as the evaluator's, before any pass
        raise InvalidArgument(FieldError("model", f"{model.name!r} is not an embedder; the retrieval set "
                                                  "cannot measure its quality"))

    def embeddings(tokens):
        return mean_pooled(model.module(**tokens).last_hidden_state, tokens["attention_mask"])

    return COSINE, embeddings


def batches_for(sweep: Sweep) -> list:
    if getattr(sweep.model, "decoder", None) is not None:
        return sweep.evaluator.batches()
    return sweep.model.batches(sweep.texts)
