"""The sweep's budget held out of sample: the chosen map is trimmed until the upper bound of its worsening
fits the budget, and its held-out measurement is reported beside that bound, honestly.

The walk (exact or fast) chooses on point measurements; a map that fits the budget by its point value
exceeds it on other text of the same kind about half the time. So, with `confidence` > 0, the settled map
is checked once more with its bound (worker.quality.bound), and while the bound is over the budget the
most sensitive chosen unit moves one step down its ladder (to base after the last step), as the combined
check does for the point value.
"""

from __future__ import annotations

from mixprec.metrics import worsening
from worker.quality.bound import MIN_ITEMS, result_bound
from worker.sweep import SweepProgress, Unit, assignment_of, most_sensitive, settle


def hold_to_bound(sweep, units: list[Unit], chosen: dict[str, str], history: list[dict], max_drop: float,
                  confidence: float, progress: SweepProgress) -> tuple[dict[str, str], float | None]:
    """(the map whose bound fits the budget, that bound); the map unchanged and its bound (None: too few
    items to bound, or confidence 0) where nothing needs trimming. Each check it runs joins `history`."""
    if confidence <= 0 or not chosen:
        return chosen, None
    ladder = sweep.ladder
    rungs = {i: (ladder.index(u.precision) if u.chosen else None) for i, u in enumerate(units)}
    settled = next((c for c in history if c.get("final")), None)
    while True:
        assignment = assignment_of(units, rungs, ladder)
        if not assignment:
            return settle(units, rungs, ladder), None
        result = sweep.check_result(assignment)
        bound = result_bound(sweep.metric, result, confidence)
        check = settled if settled is not None and assignment == chosen else \
            _record(history, units, rungs, ladder, sweep, result)
        check["bound"] = bound
        if bound is None or bound <= max_drop:
            for other in history:
                other.pop("final", None)
            check["final"] = True
            return settle(units, rungs, ladder), bound
        worst = most_sensitive(units, rungs)
        units[worst].reverted = True
        rungs[worst] = sweep.next_rung(units[worst], rungs[worst], max_drop)
        progress.bound(check, max_drop, units[worst])


def _record(history: list[dict], units, rungs, ladder, sweep, result) -> dict:
    at = [(units[i], r) for i, r in rungs.items() if r is not None]
    check = {"units": [u.name for u, _ in at], "precisions": [ladder[r] for _, r in at],
             "predicted_drop": sum(u.trials[r].value for u, r in at), "measured_drop": sweep.worsening(result.deltas),
             "deltas": result.deltas, "trim": True}
    history.append(check)
    return check


def holdout_report(metric: str, result, confidence: float, calibration_bound: float | None, texts: int) -> dict:
    """The held-out measurement: its drop, its own bound, how many items it rests on, and whether it says
    anything (enough items) or warns (its drop exceeds the calibration bound: the map may be overfit)."""
    drop = worsening(metric, result.deltas[metric])
    items = len(result.items.get(metric, ()))
    report = {"pairs": texts, "items": items, "drop": drop, "deltas": result.deltas,
              "bound": result_bound(metric, result, confidence) if confidence > 0 else None}
    if items < MIN_ITEMS:
        report["note"] = (f"{items} held-out item(s): too few to say how the map does on other text "
                          f"(at least {MIN_ITEMS} are needed)")
    elif calibration_bound is not None and drop > calibration_bound:
        report["note"] = (f"the held-out {drop:.6g} exceeds the calibration bound {calibration_bound:.6g}: "
                          "the map may be overfit to the calibration data")
        report["overfit"] = True
    return report
