"""A stored sweep's quality account in words, for `mixprec sweep show` and the dashboard alike: the chosen
map's calibration drop beside its bound, the held-out drop beside its own, and a warning where the
held-out drop exceeds the calibration bound. Reads the artifact defensively: it may be old or hostile."""

from __future__ import annotations

import math
from typing import Mapping

from mixprec.metrics import METRICS, limit_word


def word_of(data: Mapping) -> str:
    """'drop' or 'rise' for the artifact's metric: a user metric's direction is stored with it."""
    metric = str(data.get("metric", ""))
    if metric in METRICS:
        return limit_word(metric)
    return "rise" if data.get("direction") == "lower" else "drop"


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def quality_lines(data: Mapping) -> tuple[list[str], bool]:
    """(lines, overfit): calibration, held out and data fingerprint; overfit when the held-out drop exceeds
    the calibration bound (the map may fit its calibration data only)."""
    word, lines = word_of(data), []
    combined = [c for c in data.get("combined", []) if isinstance(c, Mapping)]
    final = next((c for c in combined if c.get("final")), combined[-1] if combined else None)
    confidence = _number(data.get("confidence")) or 0.0
    bound = _number(data.get("calibration_bound"))
    level = f"{100 * confidence:g}%"
    bound_text = "" if not confidence else (f", {level} bound {bound:.6f}" if bound is not None
                                            else f", no {level} bound (too few items to bound)")
    if final is not None:
        measured, predicted = _number(final.get("measured_drop")), _number(final.get("predicted_drop"))
        if measured is not None and predicted is not None:
            lines.append(f"calibration {word} ({data.get('samples', '?')} pairs or windows): measured {measured:.6f} "
                         f"(predicted {predicted:.6f}){bound_text}")
    held = data.get("holdout") if isinstance(data.get("holdout"), Mapping) else {}
    drop = _number(held.get("drop"))
    if drop is not None:
        held_bound = _number(held.get("bound"))
        lines.append(f"held-out {word} ({held.get('pairs', '?')} texts the sweep never saw, {held.get('items', '?')} "
                     f"items): measured {drop:.6f}" + ("" if held_bound is None else f", {level} bound {held_bound:.6f}"))
        if held.get("note"):
            lines.append(f"{'warning' if held.get('overfit') else 'note'}: {str(held['note'])[:300]}")
    fingerprint = data.get("data") if isinstance(data.get("data"), Mapping) else {}
    if "sha256" in fingerprint:
        lines.append(f"data: {str(fingerprint.get('path'))[:200]} ({fingerprint.get('format')}, "
                     f"{fingerprint.get('records')} records, {fingerprint.get('bytes')} bytes, "
                     f"sha256 {str(fingerprint['sha256'])[:16]}...)")
    return lines, bool(held.get("overfit"))
