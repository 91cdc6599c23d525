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

from dataclasses import dataclass
from typing import Callable, Mapping

import torch

from worker.engine import HybridEngine
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


def _gaussian_on_embeddings(outputs: torch.Tensor, tokens: dict, generator: torch.Generator) -> torch.Tensor:
    # Normalised embeddings e: 1 - cos(e + de, e) = 1/2 |de|^2 to second order, and de is what the
    # backward pass sees through the normalisation; v ~ N(0, I) has the identity as covariance.
    v = torch.randn(outputs.shape, generator=generator).to(outputs.device, outputs.dtype)
    return (outputs * v).sum()


COSINE = Probe("cosine_to_base", _gaussian_on_embeddings, lambda outputs, tokens: outputs.shape[0])


@dataclass
class Estimates:
    """The scalars s, by layer and precision: (probes, items) each, and what the metric averages over."""

    scalars: dict[tuple[str, str], torch.Tensor]
    items: int
    quadratic: bool
    seconds: float = 0.0

    def worsening(self, assignment: Mapping[str, str]) -> float:
        """Estimated change of the metric (in its worse direction) with `assignment`'s layers at their
        precisions and every other layer at base."""
        if not assignment:
            return 0.0
        total = sum(self.scalars[(layer, precision)] for layer, precision in assignment.items())
        if self.quadratic:
            return float(0.5 * total.double().pow(2).mean(0).sum() / self.items)
        return float(total.double().mean(0).sum() / self.items)


def estimate(engine: HybridEngine, batches: list, outputs: Callable[[dict], torch.Tensor], probe: Probe,
             precisions: list[str], seed: int = 0) -> Estimates:
    """Runs each batch of `batches` ((index, tokens) pairs) once forward at base with every bound layer's
    quantization error at each of `precisions` recorded, and `probe.probes` times backward."""
    import time

    started = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    layers = list(engine.catalog)
    for layer in layers:
        for precision in precisions:
            engine.bindings[layer].prepare(precision)
    per_batch: dict[tuple[str, str], list[torch.Tensor]] = {(layer, p): [] for layer in layers for p in precisions}
    items = 0
    for _index, tokens in batches:
        errors: dict[str, list[torch.Tensor]] = {}
        leaves: dict[str, torch.Tensor] = {}
        handles = [engine.bindings[layer].register_forward_hook(_recorder(layer, precisions, errors, leaves))
                   for layer in layers]
        try:
            with engine.using({}), torch.enable_grad():
                out = outputs(tokens)
                items += probe.count(out, tokens)
                grads = [torch.autograd.grad(probe.draw(out, tokens, generator), [leaves[layer] for layer in layers],
                                             retain_graph=True, allow_unused=True)
                         for _ in range(probe.probes)]
        finally:
            for handle in handles:
                handle.remove()
        for i, layer in enumerate(layers):
            for p, precision in enumerate(precisions):
                eps = errors[layer][p]
                rows = [torch.zeros(eps.shape[0]) if g[i] is None else
                        (g[i].detach() * eps).reshape(eps.shape[0], -1).sum(1).float().cpu() for g in grads]
                per_batch[(layer, precision)].append(torch.stack(rows))
    scalars = {key: torch.cat(parts, dim=1) for key, parts in per_batch.items()}
    return Estimates(scalars, items, probe.quadratic, time.perf_counter() - started)


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
