"""What every model adapter returns: the torch module, its canonical layer names, and its entry points."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn


@dataclass
class LoadedModel:
    name: str
    module: nn.Module
    layer_map: dict[str, str]  # canonical layer name -> module path, in model order
    # For embedders: texts -> (n, d) L2-normalised; progress=DESCRIPTION shows a bar on stderr.
    embed: Callable[..., torch.Tensor] | None = None
    blocks: list[nn.Module] = field(default_factory=list)  # the repeated blocks, in order
    # Optional, with `batches`: runs the model from the middle of a block on cached base activations
    # (the sweep's fast path, worker.models.staged.StagedEncoder).
    staged: object | None = None
    # texts -> [(positions in texts, tokenizer output)]: the batches `embed` runs, for `staged.capture`.
    batches: Callable[[list[str]], list] | None = None
    # Modules outside the catalog that always run at base, with why (embeddings, the output head).
    at_base: dict[str, str] = field(default_factory=dict)
    # For causal LMs: next-token logits, greedy generation and per-request KV caches (worker.models.decoder).
    decoder: object | None = None

    @property
    def catalog(self) -> list[str]:
        return list(self.layer_map)

    @property
    def device(self) -> torch.device:
        """Where the model's weights are: every tensor a pass over it makes belongs there too."""
        return next(self.module.parameters()).device
