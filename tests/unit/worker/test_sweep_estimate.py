"""The fast sweep's arithmetic on small modules whose exact change is known, and its margins."""

from __future__ import annotations

import math
import statistics

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from worker.engine import HybridEngine
from worker.engine.fp8 import dequantize, quantize
from worker.models.staged import mean_pooled
from worker.sweep_estimate import (
    COSINE,
    Estimates,
    Probe,
    estimate,
    fisher_probe,
    nll_probe,
    rank_correlation,
)
from worker.sweep_fast import Margin


def toy(width: int = 24):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(width, 48), nn.Tanh(), nn.Linear(48, 16))
    engine = HybridEngine(model, {"up": "0", "down": "2"}, kernel="emulated")
    x = torch.randn(64, width)
    return model, engine, [(list(range(32)), {"x": x[:32]}), (list(range(32, 64)), {"x": x[32:]})], x


@torch.no_grad()
def fp8_error(x, weight, bias):
    """y(FP8 weights per channel, activations per token) - y(base), written out by hand."""
    wq, ws = quantize(weight, rowwise=True)
    xq, xs = quantize(x, rowwise=True)
    return F.linear(dequantize(xq, xs), dequantize(wq, ws), bias) - F.linear(x, weight, bias)


def test_a_first_order_probe_gives_gradient_times_quantization_error_exactly():
    model, engine, batches, x = toy()
    # The output's sum is linear in the last layer's output: the estimate is the sum of its FP8 error.
    total = Probe("sum", lambda out, tokens, gen, n: [torch.ones_like(out)] * n, lambda out, tokens: out.shape[0],
                  quadratic=False, probes=1)
    est = estimate(engine, batches, lambda tokens: model(tokens["x"]), total, ["fp8"])
    hidden = torch.tanh(model[0](x)).detach()
    expected = fp8_error(hidden, model[2].weight, model[2].bias).sum(1).mean()
    assert est.worsening({"down": "fp8"}) == pytest.approx(float(expected), rel=1e-4)
    assert abs(float(expected)) > 1e-4  # a real change, not float noise


class SharedInput(nn.Module):
    """Two layers reading one input (as q, k and v do), then a third reading another of the same shape."""

    def __init__(self, width: int = 24):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(width, width), nn.Linear(width, width), nn.Linear(width, width)

    def forward(self, x):
        return self.b(x) + self.c(torch.tanh(self.a(x)))


def test_layers_sharing_an_input_and_a_layer_after_them_each_get_their_own_error():
    torch.manual_seed(1)
    model = SharedInput()
    engine = HybridEngine(model, {"a": "a", "b": "b", "c": "c"}, kernel="emulated")
    x = torch.randn(32, 24)
    total = Probe("sum", lambda out, tokens, gen, n: [torch.ones_like(out)] * n, lambda out, tokens: out.shape[0],
                  quadratic=False, probes=1)
    est = estimate(engine, [(list(range(32)), {"x": x})], lambda tokens: model(tokens["x"]), total, ["fp8"])
    with torch.no_grad():
        hidden = torch.tanh(model.a(x))
        # The sum reads b's and c's outputs directly: each estimate is that layer's own FP8 error, summed.
        for layer, seen in (("b", x), ("c", hidden)):
            module = getattr(model, layer)
            expected = fp8_error(seen, module.weight, module.bias).sum(1).mean()
            assert est.worsening({layer: "fp8"}) == pytest.approx(float(expected), rel=1e-4), layer
            assert abs(float(expected)) > 1e-4


def test_random_probes_recover_half_the_squared_norm_of_the_output_change():
    model, engine, batches, x = toy()
    plain = Probe("norm", COSINE.draw, lambda out, tokens: out.shape[0], probes=300)
    est = estimate(engine, batches, lambda tokens: model(tokens["x"]), plain, ["fp8"], seed=3)
    hidden = torch.tanh(model[0](x))
    expected = 0.5 * fp8_error(hidden, model[2].weight, model[2].bias).pow(2).sum(1).mean()
    assert est.worsening({"down": "fp8"}) == pytest.approx(float(expected), rel=0.05)


def test_the_cosine_estimate_matches_the_measured_cosine_drop_alone_and_together():
    model, engine, batches, x = toy()

    def embed(tokens):
        return F.normalize(model(tokens["x"]), dim=-1)

    est = estimate(engine, batches, embed, COSINE.__class__(**{**COSINE.__dict__, "probes": 200}), ["fp8"], seed=1)
    with torch.no_grad():
        base = embed({"x": x})
        for assignment in ({"up": "fp8"}, {"down": "fp8"}, {"up": "fp8", "down": "fp8"}):
            with engine.using(assignment):
                measured = float((1 - (embed({"x": x}) * base).sum(1)).mean())
            assert est.worsening(assignment) == pytest.approx(measured, rel=0.1), assignment
    assert est.worsening({}) == 0.0


def test_margin_is_unbounded_until_enough_trials_then_follows_the_largest_miss():
    margin = Margin(scaled=False)
    assert margin.bounds(1.0) == (-math.inf, math.inf)
    for raw, measured in ((1.0, 1.1), (2.0, 1.8), (1.0, 1.0)):
        margin.learn(raw, measured)
    assert margin.width == pytest.approx(1.5 * 0.1)
    assert margin.bounds(2.0) == pytest.approx((2.0 * (1 - 0.15), 2.0 * (1 + 0.15)))
    proxy = Margin(scaled=True)
    for raw in (1.0, 2.0, 3.0):
        proxy.learn(raw, 10 * raw)  # a proxy ten times smaller than the metric
    assert proxy.scale == pytest.approx(10.0) and proxy.width == pytest.approx(0.0)


def test_rank_correlation_is_spearmans():
    assert rank_correlation([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert rank_correlation([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert rank_correlation([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)


@pytest.mark.parametrize(("argv", "field"), [(["--precision", "fp8,int4"], "--precision"),
                                             (["--precision", "fp8,fp8"], "--precision"),
                                             (["--holdout", "1"], "--holdout")])
def test_bad_sweep_options_are_refused_by_name_before_anything_loads(argv, field, tmp_path, capsys):
    from mixprec.cli.main import main

    assert main(["sweep", "--model", "minilm", *argv, "-o", str(tmp_path / "map.yaml")]) == 2
    assert field in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("softcap", [None, 3.0])
def test_head_probes_are_the_gradient_of_the_token_log_probability_at_the_final_hidden_state(softcap):
    torch.manual_seed(0)
    hidden = torch.randn(2, 6, 16, requires_grad=True)
    weight, targets = torch.randn(40, 16), torch.randint(0, 40, (2, 5))
    logits = hidden @ weight.t()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    nll = -torch.log_softmax(logits[:, :-1], -1).gather(-1, targets.unsqueeze(-1)).sum()
    expected, = torch.autograd.grad(nll, hidden)
    (direction,) = nll_probe(weight, softcap).draw(hidden, torch.cat([targets[:, :1], targets], 1), None, 1)
    assert torch.allclose(direction, expected, atol=1e-5) and direction[:, -1].abs().max() == 0
    # A Fisher probe is the same score at a token drawn from the model's own distribution: zero mean.
    draws = fisher_probe(weight, softcap).draw(hidden, None, torch.Generator().manual_seed(0), 4000)
    assert torch.stack(draws).mean(0).abs().max() < 0.15 * expected.abs().max()


def test_padding_rows_change_no_estimate(minilm, engine_at_base):
    """Texts padded in one batch get the scalars they get alone: only real rows are computed, and each is
    counted for its own text (up to FP8 codes that float noise in the inputs rounds the other way)."""
    texts = ["Return the sum.", "Read a whole file into memory and return its lines without trailing newlines."]
    first_order = Probe("sum", lambda out, tokens, gen, n: [torch.ones_like(out)] * n, lambda out, tokens: out.shape[0],
                        quadratic=False, probes=1)

    def outputs(tokens):
        return mean_pooled(minilm.module(**tokens).last_hidden_state, tokens["attention_mask"])

    together = estimate(engine_at_base, minilm.batches(texts, batch_size=2), outputs, first_order, ["fp8"])
    alone = estimate(engine_at_base, minilm.batches(texts, batch_size=1), outputs, first_order, ["fp8"])
    assert not minilm.batches(texts, batch_size=2)[0][1]["attention_mask"].all()  # the short text is padded
    for key, scalars in together.scalars.items():
        order = [i for batch, _ in minilm.batches(texts, batch_size=2) for i in batch]
        by_text = dict(zip(order, scalars[0].tolist(), strict=True))
        assert [by_text[0], by_text[1]] == pytest.approx(alone.scalars[key][0].tolist(), rel=0.03), key


def test_an_estimates_noise_is_the_spread_its_probes_really_have():
    model, engine, batches, x = toy()
    many = Probe("norm", COSINE.draw, lambda out, tokens: out.shape[0], probes=400)
    est = estimate(engine, batches, lambda tokens: model(tokens["x"]), many, ["fp8"], seed=5)
    groups = [Estimates({k: v[g * 4:(g + 1) * 4] for k, v in est.scalars.items()}, est.items, True) for g in range(100)]
    spread = statistics.stdev(g.worsening({"down": "fp8"}) for g in groups)
    claimed = statistics.mean(g.noise({"down": "fp8"}) for g in groups)
    assert 0.7 < claimed / spread < 1.4
    both = {"up": "fp8", "down": "fp8"}
    change = statistics.stdev(g.worsening(both) - g.worsening({"down": "fp8"}) for g in groups)
    assert 0.7 < statistics.mean(g.noise(both, minus={"down": "fp8"}) for g in groups) / change < 1.4
    first_order = Estimates(est.scalars, est.items, quadratic=False)
    assert first_order.noise({"down": "fp8"}) == 0.0


def test_weights_beyond_the_cache_budget_are_dequantized_per_batch_to_the_same_estimates():
    model, engine, batches, x = toy()
    probe = Probe("norm", COSINE.draw, lambda out, tokens: out.shape[0], probes=4)
    outputs = lambda tokens: model(tokens["x"])  # noqa: E731
    cached = estimate(engine, batches, outputs, probe, ["fp8", "fp8-weight-only"], seed=3)
    one_layer = model[0].weight.numel() * model[0].weight.element_size()
    for budget in (0, one_layer):  # nothing kept; some layers kept and the others dequantized each batch
        bounded = estimate(engine, batches, outputs, probe, ["fp8", "fp8-weight-only"], seed=3,
                           weight_cache_bytes=budget)
        assert bounded.scalars.keys() == cached.scalars.keys()
        for key, scalars in cached.scalars.items():
            assert torch.equal(bounded.scalars[key], scalars), (budget, key)
