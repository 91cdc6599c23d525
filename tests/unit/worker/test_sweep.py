"""The sensitivity sweep on MiniLM: budgets, fast path equal to naive, outputs."""

from __future__ import annotations

import json
import math

import pytest

from mixprec import policy as lang
from worker.quality.docstrings import load_pairs
from worker.sweep import Sweep, run_sweep, units_for
from worker.sweep_report import table_rows, write_artifacts

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def measured(minilm, minilm_engine):
    minilm_engine.apply({})
    sweep = Sweep(minilm, minilm_engine, load_pairs(8))
    return sweep, sweep.measure(units_for(list(minilm_engine.catalog), "layer"))


def test_budget_zero_keeps_everything_at_base_and_no_budget_allows_everything(measured):
    sweep, units = measured
    assert all(u.drop > 0 for u in units)  # every layer alone costs some agreement
    nothing, _ = sweep.choose(units, 0.0)
    assert nothing == {}
    everything, history = sweep.choose(units, math.inf)
    assert len(everything) == 36 and len(history) == 1


def test_a_budget_in_between_gives_a_mixed_map_whose_measured_drop_honours_it(measured):
    sweep, units = measured
    drops = sorted(u.drop for u in units)
    budget = sum(drops[:12])  # about a third of the layers' worth of drop
    chosen, history = sweep.choose(units, budget)
    assert 0 < len(chosen) < 36
    assert history[-1]["measured_drop"] <= budget
    assert len(history[-1]["units"]) == len(chosen)
    reverted = [u for u in units if u.reverted]
    assert len(history) == len(reverted) + 1  # each failed combined check returned one unit to base
    assert all(r.drop >= max(u.drop for u in units if u.chosen) for r in reverted)  # the most sensitive first


def test_the_staged_sweep_measures_the_same_deltas_as_the_naive_one(minilm, minilm_engine, measured):
    _, staged_units = measured
    naive = Sweep(minilm, minilm_engine, load_pairs(8), strategy="naive")
    picked = [u for u in units_for(list(minilm_engine.catalog), "layer") if u.name.startswith(("layers.0.", "layers.4."))]
    naive.measure(picked)
    staged = {u.name: u.delta for u in staged_units}
    for unit in picked:
        assert unit.delta == pytest.approx(staged[unit.name], abs=1e-9)


def test_sweep_is_deterministic_and_writes_policy_table_chart_and_json(minilm, minilm_engine, tmp_path):
    first = run_sweep(minilm, minilm_engine, load_pairs(4), granularity="group", max_drop=0.002)
    second = run_sweep(minilm, minilm_engine, load_pairs(4), granularity="group", max_drop=0.002)
    assert [u.delta for u in first.units] == [u.delta for u in second.units]
    assert [u.name for u in first.units][:2] == ["layers.*.attention.q_proj", "layers.*.attention.k_proj"]
    policy_path = tmp_path / "map.yaml"
    json_path, png_path = write_artifacts(first, policy_path)
    spec = lang.load_policy_file(str(policy_path))
    assert lang.resolve(spec, minilm.catalog).precision_map() == first.precision_map
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads(json_path.read_text())
    assert len(data["units"]) == 6 and data["metric"] == "cosine_to_base"
    assert len(table_rows(first)) == 6
