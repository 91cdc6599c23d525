"""The quality evaluator that fits a model: retrieval agreement for embedders, LLM metrics for decoders."""

from __future__ import annotations

from worker.engine import HybridEngine
from worker.quality.docstrings import Pair
from worker.quality.shadow import ShadowEvaluator


def evaluator_for(engine: HybridEngine, model, pairs: tuple[Pair, ...], progress: bool = False):
    """A ShadowEvaluator on `pairs`, or for a decoder a LanguageEvaluator on token windows of the same
    pairs' text (one window per pair, as far as their text reaches). Both measure against the resident base."""
    if model.decoder is not None:
        from worker.quality.language import LanguageEvaluator, text_windows

        windows = text_windows(model.decoder.tokenizer, len(pairs), pairs=pairs, device=model.device)
        return LanguageEvaluator(engine, model, windows, progress=progress)
    return ShadowEvaluator(engine, model, pairs, progress=progress)
