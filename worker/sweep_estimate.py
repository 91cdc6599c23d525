"""Every unit's metric change, estimated from one forward and a few backward passes through the base model.

Switching layer L to a precision changes its output by eps_L (the quantization error, computed on the
base input the layer really sees). Through the rest of the network, to first order, the model's output
moves by J_L eps_L. A metric that compares the output with the base output (cosine to base, KL
divergence) is flat at base, so its change is second order: 1/2 |J_L eps_L|^2 in the metric's own
geometry. That square is estimated without ever forming J_L: for a random probe v whose covariance is
the metric's curvature, the backward pass of v . output gives g_L = J_L^T v at every layer at once, and
s_L = g_L . eps_L has E[s_L^2] = |J_L eps_L|^2 (Hutchinson's trick; for KL, v is the score of a token
drawn from the base distribution: the Fisher, whose probes start below the vocabulary-wide head, see
fisher_probe). A metric that moves at first order (perplexity) takes s_L = g_L . eps_L from the
metric's own gradient instead. A KV cache's eps is the FP8 rounding of the K and V attention reads.

Cost, beyond the forward pass: each layer's eps (one matmul on the real rows: padding rows feed nothing
the metric reads), and one backward pass per probe.

The per-item scalars s (one per text, layer, precision and probe) are kept, so the estimate of any
set of layers switched together is the same formula on their sum, cross terms included: the combined
checks are predicted before they are run.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Mapping

import torch
import torch.nn.functional as F

from mixprec.policy import KV_CACHE_PRECISIONS
from worker.engine import HybridEngine
from worker.engine.binding import HybridLinear, KVCacheBinding
from worker.engine.fp8 import dequantize, quantize
from worker.engine.kv_cache import quantize as kv_quantize
from worker.engine.methods import FP8 as FP8Linear
from worker.engine.methods import METHODS


@dataclass
class Probe:
    """How one metric reads the model's output: `quadratic` probes (random, curvature-shaped) or the
    metric's own gradient (`quadratic=False`, a first-order change)."""

    name: str
    # (outputs of a batch, its tokens, torch.Generator, how many) -> that many probe vectors, each shaped
    # like the outputs: what the backward passes start from
    draw: Callable[[torch.Tensor, object, torch.Generator, int], list[torch.Tensor]]
    # (outputs, tokens) -> how many items the metric averages over in this batch
    count: Callable[[torch.Tensor, object], int]
    quadratic: bool = True
    probes: int = 2


def _signs_on_embeddings(outputs: torch.Tensor, tokens, generator: torch.Generator, count: int) -> list[torch.Tensor]:
    # Normalised embeddings e: 1 - cos(e + de, e) = 1/2 |de|^2 to second order, and de is what the
    # backward pass sees through the normalisation. Random signs have the identity as covariance (and
    # a smaller variance of (v . de)^2 than Gaussian probes).
    return [torch.randint(0, 2, outputs.shape, generator=generator, device=generator.device).mul(2).sub(1)
            .to(outputs.device, outputs.dtype) for _ in range(count)]


def _positions(hidden: torch.Tensor, ids) -> int:
    return hidden.shape[0] * (hidden.shape[1] - 1)


def fisher_probe(head_weight: torch.Tensor, softcap: float | None, probes: int = 16) -> Probe:
    """KL(base || policy) = 1/2 dz^T F dz to second order in the logits z, F the Fisher of the base
    distribution p at each position; the score of a token y drawn from p, e_y - p, has F as its
    covariance. The probes start at the final hidden states h (z = W h, softcapped): there the score is
    c_y W_y - W^T (p c), with c the softcap's slope, so one product with the head per batch serves
    every probe and no probe pays the vocabulary-wide backward."""

    def draw(hidden, ids, generator, count):
        return _head_directions(hidden, head_weight, softcap, generator, count, targets=None)

    return Probe("kl_divergence", draw, _positions, probes=probes)


def nll_probe(head_weight: torch.Tensor, softcap: float | None) -> Probe:
    """Perplexity moves at first order: the gradient of the windows' next-token NLL (exp of their mean is
    perplexity, so the estimate is a proxy whose scale, about the base perplexity, is fitted on measured
    units), taken at the final hidden states as the Fisher probe is."""

    def draw(hidden, ids, generator, count):
        return _head_directions(hidden, head_weight, softcap, generator, count, targets=ids[:, 1:])

    return Probe("next-token NLL", draw, _positions, quadratic=False, probes=1)


# Dequantized weights kept for the whole estimate (Gemma 3 270M's linear layers: 383 MiB); beyond this a
# layer's weights are dequantized again each batch: slower, but a large model's estimate fits in memory.
WEIGHT_CACHE_BYTES = 2 << 30
HEAD_ROWS = 256  # positions whose vocabulary-wide distribution is held at once (262k floats each on Gemma)


@torch.no_grad()
def _head_directions(hidden, weight, softcap, generator, count, targets):
    """d/dh of log p(y) at every position but the last, for y drawn from p (`count` draws) or y = `targets`
    (negated: the NLL's gradient)."""
    windows, length, size = hidden.shape
    h = hidden.detach()[:, :-1].reshape(-1, size)
    goals = None if targets is None else targets.reshape(-1).to(h.device)
    out = torch.zeros(count if goals is None else 1, windows, length, size, dtype=hidden.dtype, device=hidden.device)
    directions = []
    for start in range(0, h.shape[0], HEAD_ROWS):
        raw = (h[start:start + HEAD_ROWS] @ weight.t()).float()
        slope = None
        if softcap:
            capped = torch.tanh(raw / softcap)
            slope, raw = 1 - capped.square(), capped * softcap
        p = torch.softmax(raw, dim=-1)
        mean = (p if slope is None else p * slope) @ weight.float()  # W^T (p c), per position
        if goals is None:
            drawn = torch.multinomial(p.to(generator.device), count, replacement=True, generator=generator).to(p.device)
        else:
            drawn = goals[start:start + HEAD_ROWS, None]
        chunk = []
        for k in range(drawn.shape[1]):
            y = drawn[:, k]
            score = weight[y].float() * (1.0 if slope is None else slope.gather(1, y[:, None]))
            chunk.append(score - mean if goals is None else mean - score)
        directions.append(torch.stack(chunk))
    every = torch.cat(directions, dim=1).reshape(-1, windows, length - 1, size)
    out[:, :, :-1] = every.to(hidden.dtype)
    return list(out)


COSINE = Probe("cosine_to_base", _signs_on_embeddings, lambda outputs, tokens: outputs.shape[0])


@dataclass
class Estimates:
    """The scalars s, by layer and precision: (probes, items) each, and what the metric averages over."""

    scalars: dict[tuple[str, str], torch.Tensor]
    items: int
    quadratic: bool
    seconds: float = 0.0

    def covers(self, assignment: Mapping[str, str]) -> bool:
        """Whether every layer of `assignment` has an estimate at its precision (a KV cache has one only
        where a decoder's cache was watched, and only at a precision a cache can take)."""
        return all(key in self.scalars for key in assignment.items())

    def worsening(self, assignment: Mapping[str, str]) -> float:
        """Estimated change of the metric (in its worse direction) with `assignment`'s layers at their
        precisions and every other layer at base (layers without an estimate count as base)."""
        parts = [self.scalars[key] for key in assignment.items() if key in self.scalars]
        if not parts:
            return 0.0
        total = sum(parts)
        if self.quadratic:
            return float(0.5 * total.double().pow(2).mean(0).sum() / self.items)
        return float(total.double().mean(0).sum() / self.items)

    def _squares(self, assignment: Mapping[str, str]) -> torch.Tensor | float:
        parts = [self.scalars[key] for key in assignment.items() if key in self.scalars]
        return 0.5 * sum(parts).double().pow(2) if parts else 0.0

    def noise(self, assignment: Mapping[str, str], minus: Mapping[str, str] | None = None) -> float:
        """The standard error of `worsening(assignment)` (less `worsening(minus)`, if given) from the
        probes' randomness alone (the spread of each item's probes around their mean; with one probe, the
        spread across items, which is larger): 0 for a first-order estimate, which draws nothing."""
        if not self.quadratic:
            return 0.0
        squares = self._squares(assignment) - (self._squares(minus) if minus else 0.0)  # (probes, columns)
        if not isinstance(squares, torch.Tensor):
            return 0.0
        probes, columns = squares.shape
        if probes > 1:
            return float(squares.var(0).sum().div(probes).sqrt() / self.items)
        return float(squares[0].std() * columns ** 0.5 / self.items) if columns > 1 else math.inf


class Estimator:
    """Records, batch by batch, what the estimates need: inside `recording()`, every bound linear layer's
    input and output; `batch(outputs, tokens)` then runs the probes' backward passes from that batch's
    outputs and takes each layer's quantization error at each precision on the rows that count (real
    tokens, for token-wise precisions). Run it on its own (`estimate`) or inside a pass that does
    something else with the same forward (the staged runner's capture)."""

    def __init__(self, engine: HybridEngine, probe: Probe, precisions: list[str], seed: int = 0,
                 weight_cache_bytes: int = WEIGHT_CACHE_BYTES):
        self.engine, self.probe, self.precisions = engine, probe, precisions
        # On the model's device: the probes are drawn where the outputs are (a CUDA model's estimates
        # differ from a CPU one's by the draws alone).
        self.generator = torch.Generator(device=engine.device).manual_seed(seed)
        self.layers = [layer for layer in engine.catalog if isinstance(engine.bindings[layer], HybridLinear)]
        # A KV cache's error enters where attention reads K and V: `watch` a decoder's cache to see them.
        self.kv_layers = [layer for layer in engine.catalog if isinstance(engine.bindings[layer], KVCacheBinding)]
        self.kv_precisions = [p for p in precisions if p in KV_CACHE_PRECISIONS]
        # Each layer's weights as its FP8 copy dequantizes them, once (the emulated kernel would redo it
        # for every batch), as far as `weight_cache_bytes` allows: the error is then one ordinary matmul
        # on the FP8-rounded input.
        self._weights: dict[tuple[str, str], torch.Tensor] = {}
        room = weight_cache_bytes
        for layer in self.layers:
            binding = engine.bindings[layer]
            for precision in precisions:
                binding.prepare(precision)
                kind = METHODS[precision].weights
                size = binding.weight.numel() * binding.weight.element_size()
                if kind is not None and (layer, kind) not in self._weights and size <= room:
                    self._weights[(layer, kind)] = self._dequantized(layer, kind)
                    room -= size
        self.parts: dict[tuple[str, str], list[torch.Tensor]] = {(layer, p): [] for layer in self.layers
                                                                 for p in precisions}
        self.items, self.seconds = 0, 0.0
        self._seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # layer -> (input, output with its graph)
        self._seen_kv: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # kv layer -> (K, V) as attention read them

    def watch(self, cache):
        """Makes `cache` (a decoder's, built for one recorded forward) keep the K and V its layers give
        attention, for the KV-cache units' estimates; returns it."""
        for i, layer in enumerate(getattr(cache, "layers", ())):
            name = f"layers.{i}.kv_cache"
            if name in self.kv_layers and self.kv_precisions:
                layer.update = _kv_recorder(name, layer.update, self._seen_kv)
        return cache

    @contextmanager
    def recording(self):
        started = time.perf_counter()
        handles = [self.engine.bindings[layer].register_forward_hook(_recorder(layer, self._seen))
                   for layer in self.layers]
        try:
            with torch.enable_grad():
                yield self
        finally:
            for handle in handles:
                handle.remove()
            self._seen.clear()
            self._seen_kv.clear()
            self.seconds += time.perf_counter() - started

    def batch(self, outputs: torch.Tensor, tokens) -> None:
        """The probes' backward passes from one batch's `outputs` (with their graph), then the scalars."""
        self.items += self.probe.count(outputs, tokens)
        kv = [layer for layer in self.kv_layers if layer in self._seen_kv]
        wanted = [self._seen[layer][1] for layer in self.layers] + [t for layer in kv for t in self._seen_kv[layer]]
        grads = [torch.autograd.grad(outputs, wanted, grad_outputs=direction, retain_graph=True, allow_unused=True)
                 for direction in self.probe.draw(outputs, tokens, self.generator, self.probe.probes)]
        mask = tokens.get("attention_mask") if isinstance(tokens, dict) else None
        real = None if mask is None else mask.reshape(-1).bool().nonzero().squeeze(1)
        rounded: dict = {}  # inputs rounded to FP8 in this batch (see _error)
        with torch.no_grad():
            for i, layer in enumerate(self.layers):
                x, out = self._seen[layer]
                texts = out.shape[0]
                x, out = x.reshape(-1, x.shape[-1]), out.detach().reshape(-1, out.shape[-1])
                text_of_row = torch.arange(texts, device=out.device).repeat_interleave(out.shape[0] // texts)
                seen = [g[i] for g in grads]
                probes = None if any(g is None for g in seen) else [g.reshape(-1, out.shape[-1]) for g in seen]
                for precision in self.precisions:
                    scalar = torch.zeros(texts, len(grads), dtype=torch.float64, device=out.device)
                    if probes is not None:
                        # Padding rows feed nothing the metric reads (their gradient is zero), except
                        # through a per-tensor scale, which looks at every row of the batch.
                        rows = real if METHODS[precision].token_wise else None
                        eps = self._error(layer, precision, x, out, rows, rounded)
                        owner = text_of_row if rows is None else text_of_row[rows]
                        scalar.index_add_(0, owner, _row_dots(probes, eps, rows).double())
                    self.parts[(layer, precision)].append(scalar.t())  # to the host once, in result()
            for j, layer in enumerate(kv):
                states = self._seen_kv[layer]
                at = len(self.layers) + 2 * j
                for precision in self.kv_precisions:
                    # K and V stored as e4m3 with a scale per token and head, as the FP8 cache layer does.
                    errors = [dequantize(*kv_quantize(t), t.dtype) - t.detach() for t in states]
                    per_probe = []
                    for g in grads:
                        scalar = torch.zeros(states[0].shape[0], dtype=torch.float64, device=states[0].device)
                        for gradient, eps in zip(g[at:at + 2], errors, strict=True):
                            if gradient is not None:
                                scalar += (gradient.detach().float() * eps.float()).reshape(eps.shape[0], -1).sum(1).double()
                        per_probe.append(scalar)
                    self.parts.setdefault((layer, precision), []).append(torch.stack(per_probe))
        self._seen.clear()
        self._seen_kv.clear()

    def _error(self, layer: str, precision: str, x: torch.Tensor, out: torch.Tensor,
               rows: torch.Tensor | None, rounded: dict) -> torch.Tensor:
        """The layer's output at `precision` minus its base output, on `rows` (None: all): the same rounding
        as the FP8 kernel's (quantize, dequantize, matmul). `rounded` (one per batch) keeps, for each way
        of rounding, the latest input rounded and what it was made from: q, k and v read one input, and
        come one after another, so it is rounded once for the three (at every rung of a ladder)."""
        method = METHODS[precision]
        if rows is not None:
            out = out[rows]
        if method.weights is None:
            return torch.zeros_like(out)
        how = (method.token_wise, isinstance(method, FP8Linear))  # token-wise also decides `rows`
        source = (x.data_ptr(), x.shape, x.stride())
        if how not in rounded or rounded[how][0] != source:
            seen = x if rows is None else x[rows]
            if isinstance(method, FP8Linear):  # W8A8: the input is rounded too (weight-only keeps it)
                seen = dequantize(*quantize(seen, rowwise=method.token_wise), x.dtype)
            rounded[how] = (source, seen)
        x = rounded[how][1]
        weight = self._weights.get((layer, method.weights))
        if weight is None:
            weight = self._dequantized(layer, method.weights)
        return F.linear(x, weight, self.engine.bindings[layer].bias) - out

    def _dequantized(self, layer: str, kind: str) -> torch.Tensor:
        binding = self.engine.bindings[layer]
        prepared = binding.prepared[kind]
        return dequantize(prepared.weight, prepared.scale, binding.weight.dtype)

    def result(self) -> Estimates:
        scalars = {key: torch.cat(parts, dim=1).cpu() for key, parts in self.parts.items()}
        return Estimates(scalars, self.items, self.probe.quadratic, self.seconds)


def estimate(engine: HybridEngine, batches: list, outputs: Callable[[object], torch.Tensor], probe: Probe,
             precisions: list[str], seed: int = 0, weight_cache_bytes: int = WEIGHT_CACHE_BYTES) -> Estimates:
    """Runs each batch of `batches` ((index, tokens) pairs) once forward at base, recording, and
    `probe.probes` times backward."""
    estimator = Estimator(engine, probe, precisions, seed, weight_cache_bytes)
    with estimator.recording(), engine.using({}):
        for _index, tokens in batches:
            estimator.batch(outputs(tokens), tokens)
    return estimator.result()


def _row_dots(probes: list[torch.Tensor], eps: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    """(rows, probes): each row of `eps` dotted with the same row of every probe (on `rows` of them, if
    given). A probe at a time: stacking them first copied every probe's gradient, and was 2 to 4 times
    slower on a CPU at the sizes of MiniLM's and Gemma's layers."""
    eps = eps.float()  # a BF16 model's dots summed in float32: the estimate is a small difference
    return torch.stack([torch.linalg.vecdot((g if rows is None else g[rows]).float(), eps) for g in probes], 1)


def _kv_recorder(layer: str, update, seen: dict):
    """Wraps a cache layer's `update`: keeps the K and V it returns (what attention reads, with their graph)."""

    def recorded(key_states, value_states, *args, **kwargs):
        keys, values = update(key_states, value_states, *args, **kwargs)
        seen[layer] = (keys, values)
        return keys, values

    return recorded


def _recorder(layer: str, seen: dict):
    """A forward hook: keeps the layer's input and its output, made part of the graph (the first layer's
    output starts it) so its gradient can be asked for."""

    def hook(module, inputs, output):
        if not output.requires_grad:
            output.requires_grad_()
        seen[layer] = (inputs[0].detach(), output)

    return hook


def rank_correlation(a: list[float], b: list[float]) -> float:
    """Spearman's rho: Pearson's correlation of the ranks (ties share their mean rank)."""
    ra, rb = _ranks(a), _ranks(b)
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1]) if len(a) > 1 else float("nan")  # host numbers


def _ranks(values: list[float]) -> torch.Tensor:
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = torch.empty(len(values), dtype=torch.float64, device="cpu")
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2
        i = j + 1
    return ranks
