"""What a sweep hands to people and to the control plane: a compact policy, a chart, JSON."""

from __future__ import annotations

import json
import math
import pathlib

from mixprec import policy as lang
from mixprec.metrics import limit_word
from worker.sweep import SweepResult


def policy_text(result: SweepResult) -> str:
    spec = lang.compact_rules(result.precision_map)
    header = (f"# sensitivity sweep of {result.model}: {result.metric} {limit_word(result.metric)} <= {result.max_drop:g} "
              f"({sum(p != lang.BASE_PRECISION for p in result.precision_map.values())} of "
              f"{len(result.precision_map)} layers at {result.precision})\n")
    return header + lang.dump_policy(spec)


def write_artifacts(result: SweepResult, policy_path: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """MAP.yaml's measurements beside it: MAP.json (everything) and MAP.png (per-layer drops)."""
    policy_path.write_text(policy_text(result))
    json_path, png_path = policy_path.with_suffix(".json"), policy_path.with_suffix(".png")
    json_path.write_text(json.dumps(result.to_json(), indent=2, default=_finite))
    draw_chart(result, png_path)
    return json_path, png_path


def draw_chart(result: SweepResult, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    units = result.units
    height = max(3.0, 0.22 * len(units) + 1.2)
    fig, ax = plt.subplots(figsize=(8, height))
    colours = ["#2b8a3e" if u.chosen else ("#e8590c" if u.reverted else "#868e96") for u in units]
    bars = ax.barh(range(len(units)), [u.drop for u in units], color=colours)
    for bar, unit in zip(bars, units, strict=True):
        if unit.trials and unit.trials[0].measured is None:
            bar.set_hatch("//")  # the fast sweep's estimate: this unit was not measured exactly
    ax.set_yticks(range(len(units)), [u.name for u in units], fontsize=7)
    ax.invert_yaxis()
    if math.isfinite(result.max_drop):
        ax.axvline(result.max_drop, color="#c92a2a", linestyle="--", label=f"budget {result.max_drop:g}")
        ax.legend(loc="lower right", fontsize=8)
    first = result.precision.split(",")[0]
    ax.set_xlabel(f"{limit_word(result.metric)} of {result.metric} with the unit alone at {first} "
                  "(higher = more sensitive)")
    # Two lines: the key on one line was wider than the figure and got cut off.
    ax.set_title(f"{result.model}: per-{result.granularity} sensitivity at {first}\n"
                 "green: below bf16, grey: bf16, orange: moved by the combined check; hatched: estimated",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _finite(value):
    return str(value)
