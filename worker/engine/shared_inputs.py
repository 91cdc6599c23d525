"""One FP8 quantize per input: layers that read the same activation share its codes and scales.

q, k and v of an attention read one tensor, and so do gate and up of an MLP: quantizing it once
instead of three (or two) times is most of what the activation quantize costs. Which layers share is
found from the data flow as it runs (the same tensor object reaching several FP8 layers of one
format on one thread), never from layer names, so it holds for any model a factory builds.

A tensor changed in place between two reads would make a stale entry: outside inference mode torch's
version counter catches that; inference tensors have none, and no transformer block writes into an
input its next linear still reads. Entries live until the thread's outermost pinned pass ends.
"""

from __future__ import annotations

import threading
from typing import Callable

import torch

Quantized = tuple[torch.Tensor, torch.Tensor]


def _version(x: torch.Tensor) -> int | None:
    return None if x.is_inference() else x._version  # inference tensors keep no version counter


class SharedInputs:
    """Per thread: the last input quantized in each format (per token, per tensor), with its result."""

    def __init__(self):
        self._local = threading.local()
        self.quantizes = 0  # inputs quantized (counters for benchmarks and tests; racy across threads)
        self.reuses = 0  # layers served another layer's quantize

    def quantized(self, x: torch.Tensor, per_token: bool,
                  quantize: Callable[[torch.Tensor, bool], Quantized]) -> Quantized:
        entries = self._entries()
        entry = entries.get(per_token)
        version = _version(x)
        if entry is not None and entry[0] is x and entry[1] == version:
            self.reuses += 1
            return entry[2]
        result = quantize(x.reshape(-1, x.shape[-1]), per_token)
        entries[per_token] = (x, version, result)
        self.quantizes += 1
        return result

    def clear(self) -> None:
        """Forget this thread's entries (and release the tensors they hold)."""
        self._local.entries = {}

    def _entries(self) -> dict:
        entries = getattr(self._local, "entries", None)
        if entries is None:
            entries = self._local.entries = {}
        return entries
