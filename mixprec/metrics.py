"""Every quality metric's good direction, declared once.

Guardrails, sweeps, the fleet view and the CLI all read a metric's delta (policy minus base) through
`worsening`, so a budget always means "how much worse may it get", whether the metric should not drop
(agreements, retrieval scores) or should not rise (KL divergence, perplexity).
"""

from __future__ import annotations

from enum import Enum
from typing import Mapping

from mixprec.errors import FieldError, InvalidArgument


class Direction(Enum):
    HIGHER_IS_BETTER = "higher"  # a drop is the regression: guard with max_drop
    LOWER_IS_BETTER = "lower"  # a rise is the regression: guard with max_rise


METRICS: dict[str, Direction] = {
    # embedders (MiniLM): agreement with the base embeddings, retrieval against the labels
    "cosine_to_base": Direction.HIGHER_IS_BETTER,
    "top10_agreement": Direction.HIGHER_IS_BETTER,
    "mrr": Direction.HIGHER_IS_BETTER,
    "recall_at_1": Direction.HIGHER_IS_BETTER,
    # decoders: distribution and token agreement with the base model, perplexity on held text
    "kl_divergence": Direction.LOWER_IS_BETTER,
    "top1_agreement": Direction.HIGHER_IS_BETTER,
    "greedy_match": Direction.HIGHER_IS_BETTER,
    "perplexity": Direction.LOWER_IS_BETTER,
}

# The decoder quality set (worker.quality.language): windows of standard-library docstring tokens.
WINDOW_TOKENS = 64
DEFAULT_WINDOWS = 16
# A user's data file (`--data`): a calibration set, not a training set; read where it is measured.
MAX_DATA_BYTES = 16 * 2**20
DATA_WINDOWS = 64  # a decoder's windows of a user's data, at most, unless --samples says otherwise


# A user's metrics (`--metric package.module:function`), declared by the process that loaded them: the
# worker and the CLI know their direction; the control plane never imports them, so a guardrail on one
# names its side (max_drop or max_rise) itself.
DECLARED: dict[str, Direction] = {}


def declares(**directions: str):
    """`@declares(log_loss="lower")` on a user metric function: each value it returns, and its good direction
    ("higher" or "lower"), declared once, as METRICS declares the built-in ones."""
    def mark(function):
        function.directions = dict(directions)
        return function
    return mark


def declare(metric: str, good: Direction) -> None:
    """Makes a user metric's direction known to this process (worsening, limit_word, budgets)."""
    if metric in METRICS:
        raise InvalidArgument(FieldError("--metric", f"{metric!r} is a built-in metric; name yours differently"))
    DECLARED[metric] = good


def direction(metric: str, field_name: str = "metric") -> Direction:
    try:
        return METRICS[metric] if metric in METRICS else DECLARED[metric]
    except KeyError:
        known = ", ".join(sorted({**METRICS, **DECLARED}))
        raise InvalidArgument(FieldError(field_name, f"unknown metric {metric!r}; known: {known}")) from None


def worsening(metric: str, delta: float) -> float:
    """How much worse the policy is than base (positive = worse), given delta = policy - base."""
    return -delta if direction(metric) is Direction.HIGHER_IS_BETTER else delta


def limit_word(metric: str) -> str:
    """The guardrail verb that reads naturally for the metric: 'drop' or 'rise'."""
    return "drop" if direction(metric) is Direction.HIGHER_IS_BETTER else "rise"


def limit_errors(limits: Mapping[str, float], word: str, field_name: str) -> list[FieldError]:
    """A 'drop' limit on a metric that must not rise (KL, perplexity), or a 'rise' limit on one that must
    not drop, guards the wrong side: refused by name. Metrics this table does not know are left alone.
    `field_name` may use {word} and {metric}, e.g. "guardrails.max_{word}[{metric}]"."""
    errors = []
    for metric in limits:
        if metric in METRICS and limit_word(metric) != word:
            errors.append(FieldError(field_name.format(word=word, metric=metric),
                                     f"{metric} must not {limit_word(metric)}; limit it with max_{limit_word(metric)}"))
    return errors


def split_by_direction(limits: Mapping[str, float], field_name: str = "--limit") -> tuple[dict, dict]:
    """`--limit METRIC=X` for any known metric -> (max_drop, max_rise), each metric on its worse side."""
    drops, rises = {}, {}
    for metric, value in limits.items():
        worse_when_lower = direction(metric, field_name) is Direction.HIGHER_IS_BETTER
        (drops if worse_when_lower else rises)[metric] = value
    return drops, rises
