"""Every unit's metric change, estimated from one forward and a few backward passes through the base model.

Switching layer L to a precision changes its output by eps_L (the quantization error, computed on the
base input the layer really sees). Through the rest of the network, to first order, the model's output
moves by J_L eps_L. A metric that compares the output with the base output (cosine to base, KL
divergence) is flat at base, so its change is second order: 1/2 |J_L eps_L|^2 in the metric's own
geometry. That square is estimated without ever forming J_L: for a random probe v whose covariance is
the metric's curvature, the backward pass of v . output gives g_L = J_L^T v at every layer at once, and
s_L = g_L . eps_L has E[s_L^2] = |J_L eps_L|^2 (Hutchinson's trick; for KL, v is the score of a token
drawn from the base distribution: the empirical Fisher). A metric that moves at first order (perplexity)
takes s_L = g_L . eps_L from the metric's own gradient instead.

The per-item scalars s (one per text, layer, precision and probe) are kept, so the estimate of any
set of layers switched together is the same formula on their sum, cross terms included: the combined
checks are predicted before they are run.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Mapping

import torch

from worker.engine import HybridEngine
from worker.engine.binding import HybridLinear
from worker.engine.kernels import EMULATED
from worker.engine.methods import METHODS


@dataclass
class Probe:
    """How one metric reads the model's output: `quadratic` probes (random, curvature-shaped) or the
    metric's own gradient (`quadratic=False`, a first-order change)."""

    name: str
    # (differentiable outputs of a batch, its tokens, torch.Generator) -> scalar whose gradient is the probe
    draw: Callable[[torch.Tensor, dict, torch.Generator], torch.Tensor]
    # (outputs, tokens) -> how many items the metric averages over in this batch
    count: Callable[[torch.Tensor, dict], int]
    quadratic: bool = True
    probes: int = 2


def _signs_on_embeddings(outputs: torch.Tensor, tokens: dict, generator: torch.Generator) -> torch.Tensor:
    # Normalised embeddings e: 1 - cos(e + de, e) = 1/2 |de|^2 to second order, and de is what the
    # backward pass sees through the normalisation. Random signs have the identity as covariance (and
    # a smaller variance of (v . de)^2 than Gaussian probes).
    v = torch.randint(0, 2, outputs.shape, generator=generator).mul(2).sub(1)
    v = v.to(outputs.device, outputs.dtype)
    return (outputs * v).sum()


def _sampled_tokens(logits: torch.Tensor, tokens, generator: torch.Generator) -> torch.Tensor:
    # KL(base || policy) = 1/2 dz^T F dz to second order, F the Fisher of the base distribution at each
    # position; the score of a token drawn from that distribution has F as its covariance.
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    drawn = torch.multinomial(logp.detach().exp().reshape(-1, logp.shape[-1]).cpu(), 1, generator=generator)
    return logp.reshape(-1, logp.shape[-1]).gather(1, drawn.to(logp.device)).sum()


def _next_token_nll(logits: torch.Tensor, ids: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    return -logp.gather(-1, ids[:, 1:].unsqueeze(-1).to(logp.device)).sum()


def _positions(logits: torch.Tensor, ids) -> int:
    return logits.shape[0] * (logits.shape[1] - 1)


COSINE = Probe("cosine_to_base", _signs_on_embeddings, lambda outputs, tokens: outputs.shape[0])
KL = Probe("kl_divergence", _sampled_tokens, _positions)
# Perplexity moves at first order: the gradient of the windows' mean NLL (exp of which is perplexity, so
# the estimate is a proxy whose scale, about the base perplexity, is fitted on measured units).
NLL = Probe("next-token NLL", _next_token_nll, _positions, quadratic=False, probes=1)


@dataclass
class Estimates:
    """The scalars s, by layer and precision: (probes, items) each, and what the metric averages over."""

    scalars: dict[tuple[str, str], torch.Tensor]
    items: int
    quadratic: bool
    seconds: float = 0.0

    def covers(self, layers) -> bool:
        """Whether every one of `layers` has an estimate (a KV cache has none: it is measured)."""
        return all(any(key[0] == layer for key in self.scalars) for layer in layers)

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


class Estimator:
    """Records, batch by batch, what the estimates need: inside `recording()`, every bound linear layer's
    quantization error at each precision on the input it sees; `batch(outputs, tokens)` then runs the
    probes' backward passes from that batch's outputs. Run it on its own (`estimate`) or inside a pass
    that does something else with the same forward (the staged runner's capture)."""

    def __init__(self, engine: HybridEngine, probe: Probe, precisions: list[str], seed: int = 0):
        self.engine, self.probe, self.precisions = engine, probe, precisions
        self.generator = torch.Generator().manual_seed(seed)
        # Linear layers only: a KV cache's error enters inside attention, where no output of its own carries it.
        self.layers = [layer for layer in engine.catalog if isinstance(engine.bindings[layer], HybridLinear)]
        for layer in self.layers:
            for precision in precisions:
                engine.bindings[layer].prepare(precision)
        self.parts: dict[tuple[str, str], list[torch.Tensor]] = {(layer, p): [] for layer in self.layers
                                                                 for p in precisions}
        self.items, self.seconds = 0, 0.0
        self._errors: dict[str, list[torch.Tensor]] = {}
        self._outputs: dict[str, torch.Tensor] = {}

    @contextmanager
    def recording(self):
        started = time.perf_counter()
        handles = [self.engine.bindings[layer].register_forward_hook(
            _recorder(layer, self.precisions, self._errors, self._outputs)) for layer in self.layers]
        try:
            with torch.enable_grad():
                yield self
        finally:
            for handle in handles:
                handle.remove()
            self._errors.clear()
            self._outputs.clear()
            self.seconds += time.perf_counter() - started

    def batch(self, outputs: torch.Tensor, tokens) -> None:
        """The probes' backward passes from one batch's `outputs` (with their graph), then the scalars."""
        self.items += self.probe.count(outputs, tokens)
        wanted = [self._outputs[layer] for layer in self.layers]
        grads = [torch.autograd.grad(self.probe.draw(outputs, tokens, self.generator), wanted,
                                     retain_graph=True, allow_unused=True) for _ in range(self.probe.probes)]
        for i, layer in enumerate(self.layers):
            for p, precision in enumerate(self.precisions):
                eps = self._errors[layer][p]
                rows = [torch.zeros(eps.shape[0]) if g[i] is None else
                        (g[i].detach() * eps).reshape(eps.shape[0], -1).sum(1).float().cpu() for g in grads]
                self.parts[(layer, precision)].append(torch.stack(rows))
        self._errors.clear()
        self._outputs.clear()

    def result(self) -> Estimates:
        scalars = {key: torch.cat(parts, dim=1) for key, parts in self.parts.items()}
        return Estimates(scalars, self.items, self.probe.quadratic, self.seconds)


def estimate(engine: HybridEngine, batches: list, outputs: Callable[[object], torch.Tensor], probe: Probe,
             precisions: list[str], seed: int = 0) -> Estimates:
    """Runs each batch of `batches` ((index, tokens) pairs) once forward at base, recording, and
    `probe.probes` times backward."""
    estimator = Estimator(engine, probe, precisions, seed)
    with estimator.recording(), engine.using({}):
        for _index, tokens in batches:
            estimator.batch(outputs(tokens), tokens)
    return estimator.result()


def _recorder(layer: str, precisions: list[str], errors: dict, outputs: dict):
    """A forward hook: keeps the layer's quantization error at each precision on the input it saw, and its
    output, made part of the graph (the first layer's output starts it) so its gradient can be asked for."""

    def hook(module, inputs, output):
        x = inputs[0].detach()
        with torch.no_grad():
            base = output.detach()
            errors[layer] = []
            for precision in precisions:
                method = METHODS[precision]
                # Emulated FP8 (quantize, dequantize, matmul): the same rounding as the kernel, at the
                # cost of one ordinary matmul.
                quantized = method.forward(x, module.weight, module.bias, module.prepared.get(method.weights), EMULATED)
                errors[layer].append(quantized - base)
        if not output.requires_grad:
            output.requires_grad_()
        outputs[layer] = output

    return hook


def rank_correlation(a: list[float], b: list[float]) -> float:
    """Spearman's rho: Pearson's correlation of the ranks (ties share their mean rank)."""
    ra, rb = _ranks(a), _ranks(b)
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1]) if len(a) > 1 else float("nan")


def _ranks(values: list[float]) -> torch.Tensor:
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = torch.empty(len(values), dtype=torch.float64)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2
        i = j + 1
    return ranks
