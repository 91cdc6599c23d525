"""What the agent needs from a loaded model: apply a map, serve (Embed or Generate), evaluate, describe itself."""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

from mixprec.errors import FailedPrecondition
from mixprec.metrics import MAX_DATA_BYTES
from mixprec.policy import PRECISIONS
from worker.engine import HybridEngine
from worker.models import LoadedModel, load_model
from worker.quality.docstrings import load_pairs
from worker.quality.shadow import ShadowEvaluator
from worker.quality.user_data import load_data
from worker.quality.user_metrics import load_metric
from worker.sampling import Sampler, Sampling

DECODER_EVAL_WINDOWS = 8  # a shadow evaluation of Gemma 3 270M on 8 x 64 tokens takes seconds on 2 cores


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
        vectors, version = self.embed_many([texts])
        return vectors[0], version

    def embed_many(self, requests: list[list[str]]) -> tuple[list[list[list[float]]], int]:
        """Several requests' embeddings in shared forward passes at one pinned map: each request's own
        vectors, and the policy version that computed all of them."""
        if self.model.embed is None:
            raise FailedPrecondition(f"{self.model.name} is not an embedder; call Generate")
        with self.engine.pinned() as snapshot:
            vectors = self.model.embed([text for texts in requests for text in texts]).tolist()
        answers, start = [], 0
        for texts in requests:
            answers.append(vectors[start:start + len(texts)])
            start += len(texts)
        return answers, snapshot.tag

    @property
    def vocab_size(self) -> int | None:
        """The decoder's vocabulary size (the most top_k may be), or None for an embedder."""
        return None if self.model.decoder is None else int(self.model.decoder.config.vocab_size)

    def encode(self, prompt: str, max_tokens: int) -> list[int]:
        """The prompt's token ids, checked against the context length before anything runs."""
        if self.model.decoder is None:
            raise FailedPrecondition(f"{self.model.name} is not a causal language model; call Embed")
        ids = self.model.decoder.encode(prompt)
        self.model.decoder.check_prompt(len(ids), max_tokens)
        return ids

    def generate(self, prompt_ids: list[int], max_tokens: int, on_token: Callable[[int, int], bool | None],
                 sampling: Sampling | None = None):
        """Tokens after the prompt (greedy unless `sampling` says otherwise), all at the map pinned when the
        request starts (KV cache included), each passed to on_token(token, policy version) as it comes
        (True back: stop there): returns (worker.models.decoder.Generation, that policy version)."""
        choose = None if sampling is None or sampling.greedy else Sampler(sampling)
        with self.engine.pinned() as snapshot:
            generation = self.model.decoder.generate(prompt_ids, max_tokens, lambda t: on_token(t, snapshot.tag),
                                                     choose)
        return generation, snapshot.tag

    def decode(self, tokens: list[int]) -> str:
        return self.model.decoder.tokenizer.decode(tokens, skip_special_tokens=True)

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


def build_runtime(model_spec: str, kernel: str = "auto", residency: str = "both", eval_samples: int | None = None,
                  precisions: Sequence[str] = PRECISIONS, device="auto", dtype="auto", eval_data: str | None = None,
                  metric: str | None = None, max_data_bytes: int = MAX_DATA_BYTES) -> EmbedderRuntime:
    """`eval_samples`: docstring pairs (embedders, default 64) or token windows (decoders, default 8); 0: off.
    `eval_data`: a user's data file instead of the docstrings (read here; only the metrics leave the worker);
    `metric`: a user metric (package.module:function) measured beside the built-in ones.
    `device`, `dtype`: as `--device` and `--dtype` take them (worker.device)."""
    user_metrics = (load_metric(metric),) if metric else ()  # before the model: a bad module fails at once
    model = load_model(model_spec, dtype=dtype, device=device)
    engine = HybridEngine(model.module, model.layer_map, residency=residency, kernel=kernel)
    evaluator = None
    data = None if eval_data is None or eval_samples == 0 else \
        load_data(eval_data, model.decoder is not None, max_data_bytes, "--eval-data")
    if model.decoder is not None and eval_samples != 0:
        from worker.quality.evaluators import evaluator_for
        from worker.quality.language import language_evaluator

        windows = eval_samples or DECODER_EVAL_WINDOWS
        evaluator = language_evaluator(engine, model, windows, prompts=2, greedy_tokens=8, user_metrics=user_metrics) \
            if data is None else evaluator_for(engine, model, data.pairs, user_metrics=user_metrics, windows=windows,
                                               prompts=2, greedy_tokens=8)
    elif model.embed is not None and eval_samples != 0:
        pairs = load_pairs(eval_samples or 64) if data is None else data.pairs[:eval_samples or None]
        evaluator = ShadowEvaluator(engine, model, pairs, user_metrics=user_metrics)
    if evaluator is not None:
        evaluator.reference()  # before serving and before fp8-only residency drops base weights
    return EmbedderRuntime(model, engine, evaluator, precisions)
