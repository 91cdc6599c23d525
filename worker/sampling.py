"""How a Generate picks its tokens (greedy or seeded sampling) and turns them into streamed text.

`Sampling` is checked at the API edge (every field named with its value when refused); `Sampler`
picks the next token on the model's device without reading anything back to the host (the decoder
reads the chosen token once per step); `TextStream` decodes tokens incrementally over a short window
and holds back only what a stop string might still complete.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from typing import Callable

import torch

from mixprec.errors import FieldError, InvalidArgument

MAX_TEMPERATURE = 2.0
MAX_STOPS = 4
MAX_STOP_CHARS = 64
REPLACEMENT = "\ufffd"  # what a byte sequence that is not (yet) whole UTF-8 decodes to


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    top_k: int = 0            # 0: the whole vocabulary
    seed: int | None = None   # None: a random one
    stop: tuple[str, ...] = ()

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def sampling_from(request, vocab_size: int) -> Sampling:
    """The sampling a GenerateRequest asks for; InvalidArgument naming every bad field and its value."""
    errors = []
    temperature = float(request.temperature)
    if not (math.isfinite(temperature) and 0.0 <= temperature <= MAX_TEMPERATURE):
        errors.append(FieldError("temperature", f"{temperature!r}; it must be 0 (greedy) to {MAX_TEMPERATURE:g}"))
    top_p = float(request.top_p) if request.HasField("top_p") else 1.0
    if not (math.isfinite(top_p) and 0.0 < top_p <= 1.0):
        errors.append(FieldError("top_p", f"{top_p!r}; it must be in (0, 1]"))
    if request.top_k > vocab_size:
        errors.append(FieldError("top_k", f"{request.top_k}; it must be 0 (all) to the vocabulary size {vocab_size}"))
    stops = list(request.stop)
    if len(stops) > MAX_STOPS:
        errors.append(FieldError("stop", f"{len(stops)} stop strings; the limit is {MAX_STOPS}"))
    for i, stop in enumerate(stops[:MAX_STOPS]):
        if not 1 <= len(stop) <= MAX_STOP_CHARS:
            errors.append(FieldError(f"stop[{i}]", f"{len(stop)} characters; it must be 1 to {MAX_STOP_CHARS}"))
        elif "\x00" in stop:
            errors.append(FieldError(f"stop[{i}]", f"{stop!r} contains a NUL character"))
    if errors:
        raise InvalidArgument(errors)
    seed = request.seed if request.HasField("seed") else None
    return Sampling(temperature, top_p, int(request.top_k), seed, tuple(stops))


class Sampler:
    """Picks each next token from (1, vocab) logits; with a seed, the same logits give the same tokens."""

    def __init__(self, sampling: Sampling):
        self.sampling = sampling
        self._generator: torch.Generator | None = None
        self.seed = sampling.seed if sampling.seed is not None else secrets.randbits(63)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        s = self.sampling
        if s.greedy:
            return logits.argmax(-1)
        if self._generator is None:  # on the logits' device: multinomial draws there, with no host copy
            self._generator = torch.Generator(device=logits.device).manual_seed(self.seed)
        logits = logits.float() / s.temperature
        if s.top_k:
            kth = torch.topk(logits, s.top_k, dim=-1).values[..., -1:]
            logits = logits.masked_fill(logits < kth, -math.inf)
        if s.top_p < 1.0:
            ordered, order = torch.sort(logits, dim=-1, descending=True)
            probabilities = ordered.softmax(-1)
            # Keep the likeliest tokens until their mass reaches top_p (the first is always kept).
            outside = probabilities.cumsum(-1) - probabilities >= s.top_p
            logits = logits.scatter(-1, order, ordered.masked_fill(outside, -math.inf))
        return torch.multinomial(logits.softmax(-1), 1, generator=self._generator).squeeze(-1)


class IncrementalText:
    """Tokens -> text one token at a time, decoding only a window of recent tokens (linear in length).

    The window starts at a character boundary (`prefix`); its text up to `read` is already given out.
    Text that ends in U+FFFD may be a character still being spelled out byte by byte (or a merge still
    to come), so it is held until a later token completes it, or until `finish`.
    """

    def __init__(self, decode: Callable[[list[int]], str]):
        self._decode = decode
        self._tokens: list[int] = []
        self._prefix = self._read = 0

    def push(self, token: int) -> str:
        self._tokens.append(token)
        given = self._decode(self._tokens[self._prefix:self._read])
        text = self._decode(self._tokens[self._prefix:])
        if len(text) > len(given) and not text.endswith(REPLACEMENT):
            self._prefix, self._read = self._read, len(self._tokens)
            return text[len(given):]
        return ""

    def finish(self) -> str:
        """What is still held (an unfinished character decodes as the whole text would decode it)."""
        given = self._decode(self._tokens[self._prefix:self._read])
        text = self._decode(self._tokens[self._prefix:])
        self._prefix = self._read = len(self._tokens)
        return text[len(given):]


class TextStream:
    """Incremental text with stop strings: gives out text as soon as no stop string can start in it."""

    def __init__(self, decode: Callable[[list[int]], str], stop: tuple[str, ...] = ()):
        self._text = IncrementalText(decode)
        self._stop = stop
        self._hold = max((len(s) for s in stop), default=1) - 1  # a stop string may start this far back
        self._pending = ""
        self.stopped = False

    def push(self, token: int) -> str:
        """The text to give out after `token` ("" while held); sets `stopped` at a stop string."""
        return self._give(self._text.push(token), final=False)

    def finish(self) -> str:
        return "" if self.stopped else self._give(self._text.finish(), final=True)

    def _give(self, piece: str, final: bool) -> str:
        if self.stopped:
            return ""
        pending = self._pending + piece
        found = [i for i in (pending.find(s) for s in self._stop) if i >= 0]
        if found:
            self.stopped, self._pending = True, ""
            return pending[:min(found)]
        keep = 0 if final else min(self._hold, len(pending))
        self._pending = pending[len(pending) - keep:]
        return pending[:len(pending) - keep]
