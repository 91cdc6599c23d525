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
    def __init__(self, engine: HybridEngine, model: LoadedModel, pairs: tuple[Pair, ...], progress: bool = False,
                 reference: torch.Tensor | None = None):
        """`reference`: base embeddings of `texts` the caller already computed (else one pass computes them)."""
        if model.embed is None:
            raise InvalidArgument(FieldError("model", f"{model.name!r} is not an embedder; the retrieval set "
                                                      "cannot measure its quality"))
        if len(pairs) < 2:
            raise InvalidArgument(FieldError("samples", f"the evaluation set needs at least 2 pairs, got {len(pairs)}"))
        self.engine, self.model, self.pairs, self.progress = engine, model, pairs, progress
        self.texts = [p.query for p in pairs] + [p.document for p in pairs]  # queries, then documents
        self._reference = None if reference is None else self._split(reference)
        self._reference_metrics: dict[str, float] | None = None

    metrics = METRICS
    default_metric = "cosine_to_base"  # agreement with base separates layers far better than label metrics

    @property
    def samples(self) -> int:
        return len(self.pairs)

    def use_reference(self, vectors: torch.Tensor) -> None:
        """Base embeddings of `texts` that a caller already computed (the sweep's capture pass)."""
        self._reference = self._split(vectors)

    def embed(self, precision_map: Mapping[str, str], label: str = "candidate", cancelled=None) -> torch.Tensor:
        """Embeddings of `texts` with `precision_map` applied to this pass only (PassCancelled once
        `cancelled()` turns true)."""
        with self.engine.using(precision_map, cancelled):
            return self.model.embed(self.texts, progress=label if self.progress else None)

    def reference(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._reference is None:
            self._reference = self._split(self.embed({}, "base reference"))
        return self._reference

    def compare(self, vectors: torch.Tensor) -> EvalResult:
        """Metrics of embeddings of `texts` however they were computed, and their deltas against base."""
        ref_q, ref_d = self.reference()
        if self._reference_metrics is None:
            self._reference_metrics = {**retrieval_metrics(ref_q, ref_d), **agreement_metrics(ref_q, ref_d, ref_q, ref_d)}
        q, d = self._split(vectors)
        metrics = {**retrieval_metrics(q, d), **agreement_metrics(q, d, ref_q, ref_d)}
        deltas = {name: metrics[name] - self._reference_metrics[name] for name in METRICS}
        return EvalResult(metrics, self._reference_metrics, deltas, len(self.pairs))

    def evaluate(self, precision_map: Mapping[str, str], cancelled=None) -> EvalResult:
        return self.compare(self.embed(precision_map, cancelled=cancelled))

    def _split(self, vectors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return vectors[: len(self.pairs)], vectors[len(self.pairs):]
