"""The sensitivity sweep on MiniLM: budgets, fast path equal to naive, outputs."""

from __future__ import annotations

import copy
import json
import math
import statistics

import pytest
import torch

from mixprec import policy as lang
from mixprec.cli.sweep_cmds import sweep_table
from worker.quality.docstrings import load_pairs
from worker.sweep import Sweep, SweepProgress, Unit, run_sweep, units_for
from worker.sweep_report import write_artifacts

pytestmark = pytest.mark.slow
# The fast path sums in another order (packed rows, its own attention call): float32 noise (seen up
# to 5e-8), far below a typical per-layer delta (about 1e-4 here).
FLOAT_NOISE = 2e-7


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
    # Later checks start at the reverted unit on the previous check's activations: same drop as a full pass.
    by_name = {u.name: u for u in units}
    for check in history:
        full_map = {layer: "fp8" for name in check["units"] for layer in by_name[name].layers}
        full = -sweep.deltas(sweep.evaluator.embed(full_map))["cosine_to_base"]
        assert check["measured_drop"] == pytest.approx(full, abs=FLOAT_NOISE)




def test_the_staged_sweep_measures_the_same_deltas_as_the_naive_one(minilm, minilm_engine, measured):
    _, staged_units = measured
    naive = Sweep(minilm, minilm_engine, load_pairs(8), strategy="naive")
    picked = [u for u in units_for(list(minilm_engine.catalog), "layer") if u.name.startswith(("layers.0.", "layers.4."))]
    naive.measure(picked)
    staged = {u.name: u.delta for u in staged_units}
    assert statistics.median(abs(d) for d in staged.values()) > 100 * FLOAT_NOISE
    for unit in picked:
        assert unit.delta == pytest.approx(staged[unit.name], abs=FLOAT_NOISE)


@pytest.mark.parametrize("precision", ["fp8-tensor", "fp8-weight-only"])
def test_the_staged_sweep_matches_naive_for_every_precision_and_for_groups(minilm, minilm_engine, precision):
    # Per-tensor scales see padding rows, so that sweep must keep them; weight-only runs packed.
    units = units_for(list(minilm_engine.catalog), "group")[2:4] + [Unit("layers.3.mlp.down_proj", ["layers.3.mlp.down_proj"])]
    deltas = {}
    for strategy in ("staged", "naive"):
        sweep = Sweep(minilm, minilm_engine, load_pairs(6), precision=precision, strategy=strategy)
        deltas[strategy] = [u.delta for u in sweep.measure(copy.deepcopy(units))]
    assert all(d < -100 * FLOAT_NOISE for d in deltas["naive"])
    assert deltas["staged"] == pytest.approx(deltas["naive"], abs=FLOAT_NOISE)


def test_staged_runs_at_base_reproduce_the_models_embeddings_packed_or_padded(minilm, engine_at_base):
    texts = [p.query for p in load_pairs(6)] + ["a long one " * 200]  # lengths far apart: much padding
    expected = minilm.embed(texts, batch_size=4)  # the same batches as the capture below
    for packed in (True, False):
        reference, captured = minilm.staged.capture(minilm.batches(texts, 4), packed=packed)
        assert torch.equal(reference, expected)  # the capture pass is the model's own forward
        rows = sum(len(b.text_of_row) for b in captured)
        padded = sum(b.shape[0] * b.shape[1] for b in captured)
        assert (rows < padded) if packed else (rows == padded)
        for block, stage in ((0, 0), (2, 1), (4, 2), (5, 3)):
            assert torch.allclose(minilm.staged.embed_from(captured, block, stage), expected, atol=1e-5)


def test_batches_group_texts_by_token_count_and_cover_each_text_once(minilm):
    texts = ["short", "a somewhat longer sentence than that", "x " * 300, "mid length text here", "tiny"]
    batches = minilm.batches(texts, 2)
    assert sorted(i for index, _ in batches for i in index) == list(range(len(texts)))
    widths = [tokens["input_ids"].shape[1] for _, tokens in batches]
    assert widths == sorted(widths) and widths[-1] == 256  # the longest last, truncated to the model's limit


def test_sweep_is_deterministic_and_writes_policy_table_chart_and_json(minilm, minilm_engine, tmp_path):
    first = run_sweep(minilm, minilm_engine, load_pairs(4), granularity="group", max_drop=0.002, algorithm="exact")
    second = run_sweep(minilm, minilm_engine, load_pairs(4), granularity="group", max_drop=0.002, algorithm="exact")
    assert [u.delta for u in first.units] == [u.delta for u in second.units]
    assert [u.name for u in first.units][:2] == ["layers.*.attention.q_proj", "layers.*.attention.k_proj"]
    policy_path = tmp_path / "map.yaml"
    json_path, png_path = write_artifacts(first, policy_path)
    spec = lang.load_policy_file(str(policy_path))
    assert lang.resolve(spec, minilm.catalog).precision_map() == first.precision_map
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads(json_path.read_text())
    assert len(data["units"]) == 6 and data["metric"] == "cosine_to_base"
    assert set(data["units"][0]["deltas"]) == {"cosine_to_base", "top10_agreement", "mrr", "recall_at_1"}
    assert data["units"][0]["deltas"]["cosine_to_base"] == data["units"][0]["delta"]
    rows = sweep_table(data)
    assert [r["group"] for r in rows] == [u.name for u in sorted(first.units, key=lambda u: u.drop)]
    assert {r["chosen"] for r in rows if r["group"] in {u.name for u in first.units if u.reverted}} == {"bf16 (combined check)"}
    assert all(r["drop at fp8"] == f"{u.drop:.6f}" for r, u in zip(rows, sorted(first.units, key=lambda u: u.drop),
                                                                    strict=True))


class Recorder(SweepProgress):
    def __init__(self):
        self.events = []

    def reference(self, texts):
        self.events.append(("reference", texts))

    def start(self, units, work):
        self.events.append(("start", [u.name for u in units], work))

    def measured(self, unit, work):
        self.events.append(("measured", unit.name, work))

    def combined(self, check, max_drop, reverted):
        self.events.append(("combined", check["measured_drop"] <= max_drop, reverted and reverted.name))


def test_progress_reports_each_step_with_work_that_shrinks_for_later_layers(minilm, minilm_engine):
    recorder = Recorder()
    result = run_sweep(minilm, minilm_engine, load_pairs(4), max_drop=0.0015, progress=recorder, algorithm="exact")
    kinds = [e[0] for e in recorder.events]
    assert kinds[:2] == ["reference", "start"] and recorder.events[0][1] == 8
    _, names, work = recorder.events[1]
    assert [e[1:] for e in recorder.events if e[0] == "measured"] == list(zip(names, work, strict=True))
    assert work[0] == 1.0 and work == sorted(work, reverse=True) and work[-1] < 0.2  # staged: late layers are cheap
    checks = [e for e in recorder.events if e[0] == "combined"]
    assert len(checks) == len(result.combined) >= 2
    assert [c[2] for c in checks[:-1]] == [u.name for u in sorted(result.units, key=lambda u: -u.drop) if u.reverted]
    assert checks[-1][1:] == (True, None)


def test_a_model_that_is_not_an_embedder_is_refused_by_name_and_nothing_is_written(tmp_path, capsys):
    from mixprec.cli.main import main

    assert main(["sweep", "--model", "toy_models:make_mlp", "--samples", "2", "-o", str(tmp_path / "map.yaml")]) == 2
    assert "'toy_models:make_mlp' is not an embedder" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_the_fast_sweep_reaches_the_exact_sweeps_map_measuring_fewer_units(minilm, minilm_engine, measured):
    sweep, units = measured
    budget = sum(sorted(u.drop for u in units)[:12])  # several combined checks, several reverts
    exact, _ = sweep.choose(units, budget)
    fast = run_sweep(minilm, minilm_engine, load_pairs(8), max_drop=budget)
    assert {k: v for k, v in fast.precision_map.items() if v != "bf16"} == exact
    assert [u.name for u in fast.units if u.reverted] == [u.name for u in units if u.reverted]
    account = fast.fast
    assert 3 <= len(account["measured"]) < len(units) and account["checks_skipped"] > 0
    assert len(fast.combined) < len([u for u in units if u.reverted]) + 1
    assert fast.calibration_drop <= budget and fast.calibration_drop == pytest.approx(
        -sweep.deltas(sweep.evaluator.embed(exact))["cosine_to_base"], abs=FLOAT_NOISE)
    measured_units = [u for u in fast.units if u.trials[0].measured is not None]
    assert all(u.delta == pytest.approx(-u.drop) for u in measured_units)
    assert all(u.delta is None and u.drop == u.trials[0].estimate for u in fast.units if u not in measured_units)
    assert account["rank_correlation_measured"] > 0.5


def test_a_precision_ladder_gives_each_unit_the_first_precision_it_takes_fast_and_exact_alike(minilm, minilm_engine):
    pairs = load_pairs(4)
    alone = {p: run_sweep(minilm, minilm_engine, pairs, granularity="group", precision=p, algorithm="exact",
                          max_drop=math.inf).units for p in ("fp8", "fp8-weight-only")}
    budget = 0.99 * max(u.drop for u in alone["fp8"])  # the most sensitive group cannot take fp8 alone ...
    assert max(u.drop for u in alone["fp8-weight-only"]) < budget  # ... but any group can take weight-only
    results = {algorithm: run_sweep(minilm, minilm_engine, pairs, granularity="group", precision="fp8,fp8-weight-only",
                                    max_drop=budget, algorithm=algorithm) for algorithm in ("exact", "fast")}
    exact = results["exact"]
    assert results["fast"].precision_map == exact.precision_map
    for unit in exact.units:
        fits = [t.precision for t in unit.trials if t.measured is not None and t.measured <= budget]
        assert unit.precision == fits[0] or unit.reverted  # the first it takes alone, unless the check moved it
        assert unit.trials[0].measured == pytest.approx(next(u.drop for u in alone["fp8"] if u.name == unit.name))
    assert "fp8-weight-only" in {u.precision for u in exact.units}
    assert exact.calibration_drop <= budget and exact.combined[-1]["final"]


def test_held_out_figures_come_from_pairs_the_sweep_never_saw(minilm, minilm_engine, monkeypatch):
    from worker.quality.shadow import ShadowEvaluator
    from worker.sweep import split_holdout

    calibration, held = split_holdout(load_pairs(10), 3)
    assert len(calibration) == 7 and len(held) == 3 and not set(calibration) & set(held)
    seen: list[list[str]] = []
    for name in ("batches", "embed"):
        original = getattr(minilm, name)

        def spy(texts, *args, _original=original, **kwargs):
            seen.append(list(texts))
            return _original(texts, *args, **kwargs)

        monkeypatch.setattr(minilm, name, spy)
    result = run_sweep(minilm, minilm_engine, calibration, max_drop=0.002, holdout=held)
    held_texts = {p.query for p in held} | {p.document for p in held}
    sweep_calls = [texts for texts in seen if not held_texts & set(texts)]
    assert len(seen) - len(sweep_calls) == 2  # the held-out pairs: base and the chosen map, nothing else
    assert result.holdout["pairs"] == 3
    chosen = {k: v for k, v in result.precision_map.items() if v != "bf16"}
    direct = ShadowEvaluator(minilm_engine, minilm, held).evaluate(chosen).deltas
    assert result.holdout["drop"] == pytest.approx(-direct["cosine_to_base"], abs=FLOAT_NOISE)
    assert result.holdout["drop"] != result.calibration_drop
