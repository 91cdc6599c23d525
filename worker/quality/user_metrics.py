"""A user's own quality metric: `--metric package.module:function`, loaded like `--model package.module:factory`.

The function gets the base outputs and the candidate outputs of one batch and returns named values:

* decoders: `function(base_logits, candidate_logits, targets)`, once per token window: logits of shape
  (positions, vocabulary) in float32, and the next-token ids those positions predict (positions,);
* embedders: `function(base, candidate, labels)`, once per query (the pairs that share a query, in file
  order): `base` and `candidate` are (queries, documents) tensors of shape (pairs, dim), `labels` a float
  tensor (pairs,) with NaN where a pair has none.

It declares each value's good direction once, with `@mixprec.metrics.declares(log_loss="lower")` (or a
`directions` dict attribute). A value is averaged over the batches; the base side is the same function of
(base, base). Whatever goes wrong in it is the user's error, named with the spec, never a stack trace.
"""

from __future__ import annotations

import importlib
import math
import re
from dataclasses import dataclass
from typing import Callable

from mixprec.errors import FieldError, InvalidArgument
from mixprec.metrics import METRICS, Direction, declare

NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


@dataclass(frozen=True)
class UserMetric:
    spec: str
    function: Callable
    directions: dict[str, Direction]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.directions)

    def __call__(self, base, candidate, targets) -> dict[str, float]:
        """The function's values for one batch, checked: a dict of exactly the declared names to finite numbers."""
        try:
            values = self.function(base, candidate, targets)
        except Exception as e:  # the user's code: its failure is reported as theirs, by name
            raise InvalidArgument(FieldError("--metric", f"{self.spec} raised {type(e).__name__}: {e}")) from None
        if not isinstance(values, dict):
            raise InvalidArgument(FieldError("--metric", f"{self.spec} returned {type(values).__name__}; it must "
                                             f"return a dict of {', '.join(self.names)} to numbers"))
        if set(values) != set(self.directions):
            raise InvalidArgument(FieldError("--metric", f"{self.spec} returned {sorted(map(str, values))}; it "
                                             f"declares {sorted(self.directions)}"))
        out = {}
        for name, value in values.items():
            try:
                number = float(value)
            except (TypeError, ValueError):
                number = math.nan
            if not math.isfinite(number):
                raise InvalidArgument(FieldError("--metric", f"{self.spec} returned {name}={value!r}; it must be "
                                                 "a finite number"))
            out[name] = number
        return out


def load_metric(spec: str) -> UserMetric:
    """The function `spec` names, with its declared directions (made known to mixprec.metrics)."""
    if not SPEC.match(spec):
        raise InvalidArgument(FieldError("--metric", f"{spec!r} is not package.module:function"))
    module_name, function_name = spec.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise InvalidArgument(FieldError("--metric", f"cannot import {module_name!r} ({e}); is it on PYTHONPATH?")) from None
    except Exception as e:  # the module's own code failed while importing
        raise InvalidArgument(FieldError("--metric", f"importing {module_name!r} raised {type(e).__name__}: {e}")) from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise InvalidArgument(FieldError("--metric", f"{module_name!r} has no function {function_name!r}"))
    declared = getattr(function, "directions", None)
    if not isinstance(declared, dict) or not declared:
        raise InvalidArgument(FieldError("--metric", f"{spec} declares no direction: decorate it with "
                                         "@mixprec.metrics.declares(NAME=\"higher\"|\"lower\")"))
    directions = {}
    for name, word in declared.items():
        if not isinstance(name, str) or not NAME.match(name):
            raise InvalidArgument(FieldError("--metric", f"{spec}: metric name {name!r} must match {NAME.pattern}"))
        if name in METRICS:
            raise InvalidArgument(FieldError("--metric", f"{spec}: {name!r} is a built-in metric; name yours "
                                             "differently"))
        try:
            directions[name] = Direction(word)
        except ValueError:
            raise InvalidArgument(FieldError("--metric", f"{spec}: {name}={word!r}; the direction is 'higher' or "
                                             "'lower' (which way is better)")) from None
    for name, good in directions.items():
        declare(name, good)
    return UserMetric(spec, function, directions)
