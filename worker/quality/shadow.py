"""Shadow evaluation: a precision map against the base precision on the same resident model.

Both sides run on one copy of the model: the base reference once (cached), the candidate through
`HybridEngine.using()`, which changes nothing for the passes that serve traffic meanwhile.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch

from mixprec.errors import FieldError, InvalidArgument
from worker.engine import HybridEngine
from worker.models import LoadedModel
from worker.quality.docstrings import Pair
from worker.quality.metrics import agreement_items, retrieval_items
from worker.quality.user_data import query_groups

METRICS = ("mrr", "recall_at_1", "top10_agreement", "cosine_to_base")


@dataclass(frozen=True)
class EvalResult:
    metrics: dict[str, float]
    reference: dict[str, float]
    deltas: dict[str, float]
    samples: int
    # Per item (window, pair or query group), for the bound (worker.quality.bound); never sent anywhere.
    items: dict[str, list[float]] = field(default_factory=dict, repr=False)
    reference_items: dict[str, list[float]] = field(default_factory=dict, repr=False)


class ShadowEvaluator:
    def __init__(self, engine: HybridEngine, model: LoadedModel, pairs: tuple[Pair, ...], progress: bool = False,
                 reference: torch.Tensor | None = None, user_metrics: Sequence = ()):
        """`reference`: base embeddings of `texts` the caller already computed (else one pass computes them).
        `user_metrics` (worker.quality.user_metrics.UserMetric): called once per query group."""
        if model.embed is None:
            raise InvalidArgument(FieldError("model", f"{model.name!r} is not an embedder; the retrieval set "
                                                      "cannot measure its quality"))
        if len(pairs) < 2:
            raise InvalidArgument(FieldError("samples", f"the evaluation set needs at least 2 pairs, got {len(pairs)}"))
        self.engine, self.model, self.pairs, self.progress = engine, model, pairs, progress
        self.texts = [p.query for p in pairs] + [p.document for p in pairs]  # queries, then documents
        self._reference = None if reference is None else self._split(reference)
        self._reference_items: dict[str, list[float]] | None = None
        self.user_metrics = tuple(user_metrics)
        self.metrics = METRICS + tuple(n for m in self.user_metrics for n in m.names)
        self._groups = [torch.tensor(g, device=model.device) for g in query_groups(pairs)] if self.user_metrics else []
        labels = [float("nan") if p.label is None else p.label for p in pairs]
        self._labels = torch.tensor(labels, dtype=torch.float64, device=model.device)

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
        if self._reference_items is None:
            self._reference_items = self._items((ref_q, ref_d), (ref_q, ref_d))
        items = self._items((ref_q, ref_d), self._split(vectors))
        metrics, reference = _means(items), _means(self._reference_items)
        deltas = {name: metrics[name] - reference[name] for name in metrics}
        return EvalResult(metrics, reference, deltas, len(self.pairs), items, self._reference_items)

    def _items(self, base: tuple[torch.Tensor, torch.Tensor], ours: tuple[torch.Tensor, torch.Tensor]) -> dict:
        """Each metric's value per item: per pair for the built-in ones, per query group for a user's."""
        built_in = {**retrieval_items(*ours), **agreement_items(*ours, *base)}
        names = list(built_in)  # one read from the device for all of them
        items = dict(zip(names, torch.stack([built_in[n].double() for n in names]).tolist(), strict=True))
        labels = self._labels
        for metric in self.user_metrics:
            per_group = [metric((base[0][g], base[1][g]), (ours[0][g], ours[1][g]), labels[g])
                         for g in self._groups]
            for name in metric.names:
                items[name] = [values[name] for values in per_group]
        return items

    def evaluate(self, precision_map: Mapping[str, str], cancelled=None) -> EvalResult:
        return self.compare(self.embed(precision_map, cancelled=cancelled))

    def _split(self, vectors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return vectors[: len(self.pairs)], vectors[len(self.pairs):]


def _means(items: dict[str, list[float]]) -> dict[str, float]:
    return {name: sum(values) / len(values) for name, values in items.items()}

