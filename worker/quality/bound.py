"""How much worse a map can be, at a stated confidence, given how its cost varies over the data's texts.

A measured drop is a mean over items (a decoder's token windows, an embedder's pairs or query groups).
The bound is the `confidence` quantile of the worsening over bootstrap resamples of the items, base and
candidate resampled together (paired): a map that fits the budget by its bound fits it on other text of
the same kind with about that probability, where a point estimate fits it about half the time.
"""

from __future__ import annotations

import math

import torch

from mixprec.metrics import worsening

RESAMPLES = 2000
SEED = 0
MIN_ITEMS = 8  # fewer items than this say nothing about other text: the bound is not given
LOG_MEAN = {"perplexity": torch.exp}  # metrics that are a function of the items' mean, not the mean itself
METHOD = f"paired bootstrap over items, {RESAMPLES} resamples, seed {SEED}, one-sided"


def upper_bound(metric: str, items, reference_items, confidence: float, resamples: int = RESAMPLES,
                seed: int = SEED) -> float | None:
    """The `confidence` upper quantile of the metric's worsening (positive = worse) under resampling of the
    items; None with fewer than MIN_ITEMS items or confidence 0."""
    # On the CPU whatever the default device: the items are a few numbers per window or pair.
    candidate = torch.as_tensor(items, dtype=torch.float64, device="cpu").flatten()
    base = torch.as_tensor(reference_items, dtype=torch.float64, device="cpu").flatten()
    if confidence <= 0 or candidate.numel() < MIN_ITEMS or candidate.shape != base.shape:
        return None
    generator = torch.Generator(device="cpu").manual_seed(seed)
    picks = torch.randint(candidate.numel(), (resamples, candidate.numel()), generator=generator, device="cpu")
    if metric in LOG_MEAN:
        deltas = LOG_MEAN[metric](candidate[picks].mean(1)) - LOG_MEAN[metric](base[picks].mean(1))
    else:
        deltas = (candidate[picks] - base[picks]).mean(1)
    worse = deltas * math.copysign(1.0, worsening(metric, 1.0))
    return float(torch.quantile(worse, confidence))


def result_bound(metric: str, result, confidence: float) -> float | None:
    """The bound of `metric` in an EvalResult that carries its items (None where it does not)."""
    if metric not in result.items or metric not in result.reference_items:
        return None
    return upper_bound(metric, result.items[metric], result.reference_items[metric], confidence)
