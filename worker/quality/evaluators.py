"""The quality evaluator that fits a model: retrieval agreement for embedders, LLM metrics for decoders."""

from __future__ import annotations

from typing import Sequence

from worker.engine import HybridEngine
from worker.quality.docstrings import Pair
from worker.quality.shadow import ShadowEvaluator

PROMPT_TOKENS = 32  # a greedy prompt taken from a user's text: its first tokens


def evaluator_for(engine: HybridEngine, model, pairs: tuple[Pair, ...], progress: bool = False,
                  user_metrics: Sequence = (), windows: int | None = None, prompts: int = 0,
                  greedy_tokens: int = 16):
    """A ShadowEvaluator on `pairs`, or for a decoder a LanguageEvaluator on token windows of the same
    pairs' text (`windows` of them, default one per pair, as far as their text reaches) and `prompts`
    greedy prompts opening the same texts. Both measure against the resident base."""
    if model.decoder is not None:
        from worker.quality.language import LanguageEvaluator, text_windows

        tokenizer = model.decoder.tokenizer
        ids = text_windows(tokenizer, windows or len(pairs), pairs=pairs, device=model.device)
        step = max(1, len(pairs) // max(prompts, 1))
        prompt_ids = [tokenizer(pairs[i * step].text)["input_ids"][:PROMPT_TOKENS] for i in range(min(prompts, len(pairs)))]
        return LanguageEvaluator(engine, model, ids, prompt_ids, greedy_tokens, progress=progress,
                                 user_metrics=user_metrics)
    return ShadowEvaluator(engine, model, pairs, progress=progress, user_metrics=user_metrics)
