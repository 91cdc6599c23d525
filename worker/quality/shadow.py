"""Shadow evaluation: a precision map against the base precision on the same resident model.

Both sides run on one copy of the model: the base reference once (cached), the candidate through
`HybridEngine.using()`, which changes nothing for the passes that serve traffic meanwhile.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch

from mixprec.errors import FieldError, InvalidArgument
from worker.engine import HybridEngine
from worker.models import LoadedModel
from worker.quality.docstrings import Pair
from worker.quality.metrics import agreement_metrics, retrieval_metrics

METRICS = ("mrr", "recall_at_1", "top10_agreement", "cosine_to_base")


@dataclass(frozen=True)
class EvalResult:
    metrics: dict[str, float]
    reference: dict[str, float]
    deltas: dict[str, float]
    samples: int


class ShadowEvaluator:
    def __init__(self, engine: HybridEngine, model: LoadedModel, pairs: tuple[Pair, ...], progress: bool = False):
        if model.embed is None:
            raise InvalidArgument(FieldError("model", f"{model.name!r} is not an embedder; the retrieval set "
                                                      "cannot measure its quality"))
        if len(pairs) < 2:
            raise InvalidArgument(FieldError("samples", f"the evaluation set needs at least 2 pairs, got {len(pairs)}"))
        self.engine, self.model, self.pairs, self.progress = engine, model, pairs, progress
        self._reference: tuple[torch.Tensor, torch.Tensor] | None = None

    def _embed(self, precision_map: Mapping[str, str], label: str) -> tuple[torch.Tensor, torch.Tensor]:
        texts = [p.query for p in self.pairs] + [p.document for p in self.pairs]
        with self.engine.using(precision_map):
            vectors = self.model.embed(texts, progress=label if self.progress else None)
        return vectors[: len(self.pairs)], vectors[len(self.pairs):]

    def reference(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._reference is None:
            self._reference = self._embed({}, "base reference")
        return self._reference

    def evaluate(self, precision_map: Mapping[str, str]) -> EvalResult:
        ref_q, ref_d = self.reference()
        q, d = self._embed(precision_map, "candidate")
        reference = {**retrieval_metrics(ref_q, ref_d), **agreement_metrics(ref_q, ref_d, ref_q, ref_d)}
        metrics = {**retrieval_metrics(q, d), **agreement_metrics(q, d, ref_q, ref_d)}
        deltas = {name: metrics[name] - reference[name] for name in METRICS}
        return EvalResult(metrics, reference, deltas, len(self.pairs))
