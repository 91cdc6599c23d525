"""The bound a sweep chooses against: right on a synthetic case of known variance, and held by the sweep on
the tiny random decoder (a map whose point value fits the budget but whose bound does not is trimmed)."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from worker.quality.bound import MIN_ITEMS, upper_bound


def test_the_bound_of_a_mean_is_its_normal_quantile_when_the_items_vary_known_amounts():
    items = (0.01 + 0.02 * torch.randn(400, generator=torch.Generator().manual_seed(1), dtype=torch.float64)).tolist()
    expected = statistics.fmean(items) + 1.6449 * statistics.stdev(items) / math.sqrt(len(items))
    bound = upper_bound("kl_divergence", items, [0.0] * 400, 0.95)
    assert bound == pytest.approx(expected, rel=0.05)
    assert statistics.fmean(items) < bound < upper_bound("kl_divergence", items, [0.0] * 400, 0.99)


def test_a_metric_that_must_not_drop_is_bounded_on_its_drop_and_perplexity_on_its_mean_nll():
    base = [0.99] * 50
    ours = [0.99 - 0.001 * (i % 5) for i in range(50)]  # drops of 0 .. 0.004, mean 0.002
    bound = upper_bound("cosine_to_base", ours, base, 0.95)
    assert 0.002 < bound < 0.004
    nll = [2.0 + 0.1 * (i % 3) for i in range(30)]
    point = math.exp(statistics.fmean(nll)) - math.exp(2.0)
    assert upper_bound("perplexity", nll, [2.0] * 30, 0.95) > point > 0


def test_too_few_items_or_no_confidence_give_no_bound():
    assert upper_bound("kl_divergence", [0.1] * (MIN_ITEMS - 1), [0.0] * (MIN_ITEMS - 1), 0.95) is None
    assert upper_bound("kl_divergence", [0.1] * 20, [0.0] * 20, 0.0) is None


@pytest.fixture(scope="module")
def tiny():
    from worker.engine import HybridEngine
    from worker.models.tiny import load_tiny_decoder

    model = load_tiny_decoder()
    return model, HybridEngine(model.module, model.layer_map)


@pytest.mark.slow
def test_a_map_whose_point_value_fits_but_whose_bound_does_not_is_trimmed_until_the_bound_fits(tiny):
    from worker.quality.bound import result_bound
    from worker.quality.docstrings import load_pairs
    from worker.sweep import Sweep, run_sweep

    model, engine = tiny
    pairs = load_pairs(12)
    every = Sweep(model, engine, pairs, metric="kl_divergence").check_result(dict.fromkeys(engine.catalog, "fp8"))
    drop, bound = every.deltas["kl_divergence"], result_bound("kl_divergence", every, 0.95)
    assert 0 < drop < bound
    budget = (drop + bound) / 2  # every layer in FP8 fits it by its point value, not by its bound
    point = run_sweep(model, engine, pairs, metric="kl_divergence", max_drop=budget, algorithm="exact")
    assert set(point.precision_map.values()) == {"fp8"} and point.calibration_drop <= budget
    held = run_sweep(model, engine, pairs, metric="kl_divergence", max_drop=budget, algorithm="exact",
                     confidence=0.95, holdout=load_pairs(24)[1::2][:8])
    chosen = [layer for layer, p in held.precision_map.items() if p == "fp8"]
    assert 0 < len(chosen) < len(engine.catalog)
    assert held.calibration_bound is not None and held.calibration_bound <= budget
    refused = [c for c in held.combined if c.get("bound") is not None and c["bound"] > budget]
    assert refused and all(c["measured_drop"] <= budget for c in refused[:1])  # fitted by its point value
    final = [c for c in held.combined if c.get("final")]
    assert len(final) == 1 and final[0]["bound"] == held.calibration_bound
    assert held.bound_method.startswith("paired bootstrap") and held.confidence == 0.95
    assert held.holdout["items"] == 8 and held.holdout["bound"] is not None


@pytest.mark.slow
def test_a_user_metric_is_averaged_per_window_like_the_built_in_ones(tiny, tmp_path, monkeypatch):
    from mixprec import metrics as directions
    from worker.quality.language import language_evaluator
    from worker.quality.user_metrics import load_metric

    (tmp_path / "nll_metric.py").write_text(
        "import torch\nfrom mixprec.metrics import declares\n\n"
        "@declares(target_nll='lower')\n"
        "def nll(base, candidate, targets):\n"
        "    logp = torch.log_softmax(candidate, -1)\n"
        "    return {'target_nll': float(-logp.gather(-1, targets.unsqueeze(-1)).mean())}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(directions, "DECLARED", {})
    model, engine = tiny
    evaluator = language_evaluator(engine, model, 8, prompts=0, user_metrics=(load_metric("nll_metric:nll"),))
    result = evaluator.evaluate(dict.fromkeys(engine.catalog, "fp8"))
    assert result.metrics["target_nll"] == pytest.approx(math.log(result.metrics["perplexity"]), rel=1e-5)
    assert result.reference["target_nll"] == pytest.approx(math.log(result.reference["perplexity"]), rel=1e-5)
    assert len(result.items["target_nll"]) == 8 and "target_nll" in evaluator.metrics
