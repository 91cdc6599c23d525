"""What the agent needs from a loaded model: apply a map, serve, evaluate, describe itself."""

from __future__ import annotations

from typing import Mapping, Sequence

from mixprec.policy import PRECISIONS
from worker.engine import HybridEngine
from worker.models import LoadedModel, load_model
from worker.quality.docstrings import load_pairs
from worker.quality.shadow import ShadowEvaluator


class EmbedderRuntime:
    def __init__(self, model: LoadedModel, engine: HybridEngine, evaluator: ShadowEvaluator | None,
                 precisions: Sequence[str] = PRECISIONS):
        self.model = model
        self.engine = engine
        self.evaluator = evaluator
        self.precisions = tuple(precisions)
        # A version's map never changes, so neither does its quality: a rollback reports at once.
        self._evaluations: dict[frozenset, tuple[dict[str, float], dict[str, float], int]] = {}

    @property
    def catalog(self) -> tuple[str, ...]:
        return self.engine.catalog

    @property
    def version(self) -> int:
        return self.engine.tag

    def hardware(self) -> dict:
        return self.engine.describe_hardware()

    def apply(self, version: int, precision_map: Mapping[str, str]) -> None:
        refused = sorted({p for p in precision_map.values() if p not in self.precisions})
        if refused:
            raise ValueError(f"this worker does not run {', '.join(refused)} (it allows {', '.join(self.precisions)})")
        self.engine.apply(precision_map, tag=version)

    def embed(self, texts: list[str]) -> tuple[list[list[float]], int]:
        """Embeddings and the policy version whose map computed them (one map for the whole request)."""
        with self.engine.pinned() as snapshot:
            vectors = self.model.embed(texts)
        return vectors.tolist(), snapshot.tag

    def evaluate(self, precision_map: Mapping[str, str],
                 cancelled=None) -> tuple[dict[str, float], dict[str, float], int]:
        """Shadow evaluation of a map; raises PassCancelled at the next batch once `cancelled()` is true."""
        if self.evaluator is None:
            return {}, {}, 0
        key = frozenset(precision_map.items())
        if key not in self._evaluations:
            result = self.evaluator.evaluate(precision_map, cancelled)
            self._evaluations[key] = (result.metrics, result.deltas, result.samples)
        return self._evaluations[key]

    def layer_states(self) -> list[tuple[str, str, str]]:
        return [(s.layer, s.precision, s.kernel) for s in self.engine.status()]

    def resident_bytes(self) -> dict[str, int]:
        return self.engine.resident_bytes()


def build_runtime(model_spec: str, kernel: str = "auto", residency: str = "both", eval_samples: int = 64,
                  precisions: Sequence[str] = PRECISIONS) -> EmbedderRuntime:
    model = load_model(model_spec)
    engine = HybridEngine(model.module, model.layer_map, residency=residency, kernel=kernel)
    evaluator = None
    if model.embed is not None and eval_samples:
        evaluator = ShadowEvaluator(engine, model, load_pairs(eval_samples))
        evaluator.reference()  # before serving and before fp8-only residency drops base weights
    return EmbedderRuntime(model, engine, evaluator, precisions)
