"""Quality of a precision map on a decoder, against the base weights resident in the same model.

Both sides see the same tokens: windows of standard-library docstrings (built offline, deterministic),
and a few prompts for greedy generation. No logits are stored ahead of time: the base side is computed
from the resident base weights (its final hidden states once; the output head, always at base, turns
them into logits when a candidate is compared).

* kl_divergence: mean over positions of KL(base || policy) over the full vocabulary (0 at base)
* top1_agreement: share of positions whose argmax matches base (1 at base)
* perplexity: exp(mean next-token NLL) on the windows
* greedy_match: share of the N greedy tokens, position by position, identical to base for M prompts
"""

from __future__ import annotations

import math
import sys
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F

from mixprec.errors import FieldError, InvalidArgument
from mixprec.metrics import WINDOW_TOKENS
from worker.engine import HybridEngine
from worker.engine.engine import PassCancelled
from worker.quality.docstrings import build_pairs
from worker.quality.shadow import EvalResult

METRICS = ("kl_divergence", "top1_agreement", "perplexity", "greedy_match")
TEACHER_FORCED = METRICS[:3]  # computed from one pass over the windows (the sweep's fast signal)
GREEDY_TOKENS = 16
POSITIONS_PER_CHUNK = 64  # rows of full-vocabulary logits held at once
KEEP_REFERENCE_ELEMENTS = 64 * 2**20  # keep base log-probs (<= 256 MB) rather than recompute the head


def text_windows(tokenizer, samples: int, tokens: int = WINDOW_TOKENS, pairs=None,
                 device: torch.device | str = "cpu") -> torch.Tensor:
    """`samples` windows of `tokens` token ids on `device`, spread over the docstring corpus (or over `pairs`),
    each opening with the model's BOS token where it has one, as every document the model saw did; no padding."""
    if samples < 1:
        raise InvalidArgument(FieldError("samples", f"must be >= 1, got {samples}"))
    text = "\n\n".join(p.text for p in (build_pairs() if pairs is None else pairs))
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    bos = [] if tokenizer.bos_token_id is None else [tokenizer.bos_token_id]
    body = tokens - len(bos)
    available = len(ids) // body
    if pairs is not None:  # as many windows as the given pairs' text holds, up to one per pair
        samples = min(samples, available)
    if samples > available or samples < 1:
        raise InvalidArgument(FieldError("samples", f"{samples} windows of {tokens} tokens; the text set has "
                                                    f"{available}"))
    step = available // samples
    return torch.tensor([bos + ids[i * step * body:(i * step + 1) * body] for i in range(samples)], device=device)


def greedy_prompts(tokenizer, count: int) -> list[list[int]]:
    """The first paragraphs of `count` docstrings spread over the corpus."""
    pairs = build_pairs()
    step = max(1, len(pairs) // max(count, 1))
    return [tokenizer(pairs[i * step].query)["input_ids"] for i in range(count)]


class LanguageEvaluator:
    """`evaluate(map)` -> EvalResult with the four metrics and their deltas against base.

    The sweep drives it like the embedder's ShadowEvaluator: `embed(map)` and the staged runner give
    final hidden states of `texts` (here: the token windows), `compare(hidden)` scores them.
    """

    default_metric = "kl_divergence"  # the sharpest: it sees the whole distribution, not only the argmax

    def __init__(self, engine: HybridEngine, model, windows: torch.Tensor, prompts: list[list[int]] = (),
                 greedy_tokens: int = GREEDY_TOKENS, progress: bool = False, reference: torch.Tensor | None = None,
                 user_metrics: Sequence = ()):
        """`user_metrics` (worker.quality.user_metrics.UserMetric): called once per window."""
        if model.decoder is None:
            raise InvalidArgument(FieldError("model", f"{model.name!r} is not a causal language model"))
        if windows.dim() != 2 or windows.shape[1] < 2:
            raise InvalidArgument(FieldError("samples", "needs windows of at least 2 tokens"))
        self.engine, self.model, self.decoder = engine, model, model.decoder
        windows = windows.to(model.device)  # the targets are gathered against log-probabilities there
        self.texts, self.prompts, self.greedy_tokens, self.progress = windows, list(prompts), greedy_tokens, progress
        self._reference = reference
        self._reference_logp: list[torch.Tensor] | None = None
        self._base_greedy: list[list[int]] | None = None
        self._reference_metrics: dict[str, float] | None = None
        self._reference_items: dict[str, list[float]] = {}
        self.user_metrics = tuple(user_metrics)
        # What `compare` gives, so what a sweep can budget.
        self.metrics = TEACHER_FORCED + tuple(n for m in self.user_metrics for n in m.names)

    @property
    def samples(self) -> int:
        return self.texts.shape[0]

    def batches(self) -> list[tuple[list[int], torch.Tensor]]:
        return self.model.batches(self.texts)

    def embed(self, precision_map: Mapping[str, str], label: str = "candidate", cancelled=None) -> torch.Tensor:
        """Final hidden states of the windows with `precision_map` applied to this thread's passes only
        (PassCancelled once `cancelled()` turns true)."""
        if self.progress:
            print(f"{label}: {self.samples} windows of {self.texts.shape[1]} tokens ...", file=sys.stderr)
        hidden = []
        with self.engine.using(precision_map, cancelled):
            for _, ids in self.batches():  # the decoder runs its inner model, past the engine's forward check
                if cancelled is not None and cancelled():
                    raise PassCancelled("the evaluation was cancelled before its next batch")
                hidden.append(self.decoder.hidden(ids))
        return torch.cat(hidden)

    def use_reference(self, hidden: torch.Tensor) -> None:
        """Base hidden states of the windows that a caller already computed (the sweep's capture pass)."""
        self._reference = hidden

    def reference(self) -> torch.Tensor:
        if self._reference is None:
            self._reference = self.embed({}, "base reference")
        return self._reference

    def compare(self, hidden: torch.Tensor) -> EvalResult:
        """Teacher-forced metrics of final hidden states of the windows, and their deltas against base."""
        metrics, items = self._score(hidden)
        reference = self._base_metrics()
        return EvalResult(metrics, reference, {m: metrics[m] - reference[m] for m in metrics}, self.samples,
                          items, self._reference_items)

    def evaluate(self, precision_map: Mapping[str, str], cancelled=None) -> EvalResult:
        result = self.compare(self.embed(precision_map, cancelled=cancelled))
        if not self.prompts:
            return result
        if self._base_greedy is None:
            with self.engine.using({}):
                self._base_greedy = self._greedy("greedy at base")
        with self.engine.using(precision_map, cancelled):
            match = self._greedy_match(self._greedy(f"greedy ({len(self.prompts)} prompts)"))
        metrics = {**result.metrics, "greedy_match": match}
        return EvalResult(metrics, result.reference, {**result.deltas, "greedy_match": match - 1.0}, result.samples,
                          result.items, result.reference_items)

    # --- scoring ---------------------------------------------------------------------------------

    def _base_metrics(self) -> dict[str, float]:
        if self._reference_metrics is None:
            metrics, items = self._score(self.reference())
            self._reference_metrics = {**metrics, "kl_divergence": 0.0, "top1_agreement": 1.0}
            self._reference_items = {**items, "kl_divergence": [0.0] * self.samples,
                                     "top1_agreement": [1.0] * self.samples}
            if self.prompts:
                self._reference_metrics["greedy_match"] = 1.0
        return self._reference_metrics

    @torch.inference_mode()
    def _score(self, hidden: torch.Tensor) -> tuple[dict[str, float], dict[str, list[float]]]:
        """(metrics, their values per window): KL, top-1 agreement and next-token NLL averaged per window
        (perplexity is exp of the windows' mean NLL), and each user metric's values."""
        reference = self.reference()
        size = hidden.shape[-1]
        positions = hidden[:, :-1].reshape(-1, size)
        base_positions = reference[:, :-1].reshape(-1, size)
        targets = self.texts[:, 1:].reshape(-1)
        per_window = self.texts.shape[1] - 1
        keep = self._reference_logp is None and positions.shape[0] * self.decoder.config.vocab_size <= \
            KEEP_REFERENCE_ELEMENTS
        kept = [] if keep else None
        # Summed per window on the device in float64, read once at the end (a read per chunk would wait on
        # the device).
        sums = torch.zeros(3, self.samples, dtype=torch.float64, device=positions.device)  # kl, agree, nll
        for chunk, start in enumerate(range(0, positions.shape[0], POSITIONS_PER_CHUNK)):
            rows = slice(start, start + POSITIONS_PER_CHUNK)
            logp = F.log_softmax(self.decoder.head(positions[rows]).float(), dim=-1)
            if self._reference_logp is not None:
                base_logp = self._reference_logp[chunk]
            else:
                base_logp = F.log_softmax(self.decoder.head(base_positions[rows]).float(), dim=-1)
                if kept is not None:
                    kept.append(base_logp)
            window = torch.arange(start, start + logp.shape[0], device=positions.device) // per_window
            values = torch.stack([(base_logp.exp() * (base_logp - logp)).sum(-1),
                                  (logp.argmax(-1) == base_logp.argmax(-1)).float(),
                                  -logp.gather(-1, targets[rows].unsqueeze(-1)).squeeze(-1)]).double()
            sums.index_add_(1, window, values)
        if kept is not None:
            self._reference_logp = kept
        kl, agree, nll = (sums / per_window).tolist()
        items = {"kl_divergence": kl, "top1_agreement": agree, "perplexity": nll}
        items.update(self._user_items(hidden, reference))
        metrics = {name: sum(values) / len(values) for name, values in items.items()}
        metrics["perplexity"] = math.exp(metrics["perplexity"])
        return metrics, items

    def _user_items(self, hidden: torch.Tensor, reference: torch.Tensor) -> dict[str, list[float]]:
        """Each user metric once per window, on its full-vocabulary logits at base and with the map."""
        items: dict[str, list[float]] = {n: [] for m in self.user_metrics for n in m.names}
        for w in range(self.samples if self.user_metrics else 0):
            base = self.decoder.head(reference[w, :-1]).float()
            ours = self.decoder.head(hidden[w, :-1]).float()
            for metric in self.user_metrics:
                for name, value in metric(base, ours, self.texts[w, 1:]).items():
                    items[name].append(value)
        return items

    def _greedy(self, label: str) -> list[list[int]]:
        if self.progress:
            print(f"{label}: {self.greedy_tokens} greedy tokens each ...", file=sys.stderr)
        return [self.decoder.generate(prompt, self.greedy_tokens).tokens for prompt in self.prompts]

    def _greedy_match(self, tokens: list[list[int]]) -> float:
        same = total = 0
        for ours, base in zip(tokens, self._base_greedy, strict=True):
            total += len(base)
            same += sum(a == b for a, b in zip(ours, base, strict=False))
        return same / max(total, 1)


def language_evaluator(engine: HybridEngine, model, samples: int, prompts: int = 4,
                       greedy_tokens: int = GREEDY_TOKENS, progress: bool = False,
                       user_metrics: Sequence = ()) -> LanguageEvaluator:
    """The evaluator on `samples` docstring windows and `prompts` greedy prompts."""
    tokenizer = model.decoder.tokenizer
    return LanguageEvaluator(engine, model, text_windows(tokenizer, samples, device=model.device),
                             greedy_prompts(tokenizer, prompts), greedy_tokens, progress, user_metrics=user_metrics)
