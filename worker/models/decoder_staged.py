"""Runs a decoder from block i on cached base activations: the decoder sweep's fast path.

A causal model's block i sees only what blocks before it computed, so a change confined to block i or
later (a projection, or the block's KV cache) leaves the inputs of block i exactly as at base: one
reference pass keeps every block's input (and the masks and rotary embeddings the blocks were called
with), and a run starts at its layer's block. Outputs are final normed hidden states, (texts, tokens,
hidden); the quality evaluator turns them into logits (worker.quality.language).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from mixprec.errors import InvalidArgument
from mixprec.families import split_block_layer

# What a block is called with besides its input: masks, rotary embeddings, positions (kept from the capture).
_KWARGS = ("attention_mask", "position_embeddings", "position_ids")


@dataclass
class CapturedBatch:
    index: list[int]                   # where these texts sit in the caller's list
    input_ids: torch.Tensor            # (texts, tokens)
    inputs: list[torch.Tensor] = field(default_factory=list)  # per block: its input hidden states
    calls: list[dict] = field(default_factory=list)           # per block: masks and rotary it was called with


class StagedDecoder:
    """`capture(batches)` once at base, then `embed_from(captured, block, 0)` per run starting at `block`
    (the name matches the encoder's runner, worker.models.staged, so the sweep drives both alike)."""

    def __init__(self, decoder):
        self.decoder = decoder
        config = decoder.config
        per_block = 2 * config.hidden_size * (
            config.num_attention_heads * decoder.head_dim * 2 + config.num_key_value_heads * decoder.head_dim * 2
        ) + 3 * 2 * config.hidden_size * config.intermediate_size
        head = 2 * config.hidden_size * config.vocab_size
        # Every run pays the output head (Gemma 3 270M: the 262k-token head is about 60 % of a pass).
        self._block_share = per_block * decoder.num_layers / (per_block * decoder.num_layers + head)

    @property
    def blocks(self) -> list:
        return self.decoder.layers

    def stage_of(self, layer: str) -> tuple[int, int] | None:
        try:
            return split_block_layer(layer)[0], 0
        except InvalidArgument:
            return None

    def work(self, block: int, stage: int) -> float:
        """Estimated cost of a run from `block`, as a share of a full forward pass (head included)."""
        return 1 - self._block_share * block / self.decoder.num_layers

    @torch.inference_mode()
    def capture(self, batches, packed: bool = True) -> tuple[torch.Tensor, list[CapturedBatch]]:
        """One pass at the current map over `batches` ((index, input_ids) pairs): final hidden states and
        every block's input. (`packed` is the encoder runner's; decoder windows have no padding.)"""
        captured, outputs = [], {}
        layers = self.decoder.layers
        for index, input_ids in batches:
            batch = CapturedBatch(list(index), input_ids)

            def record(_module, args, kwargs, b=batch):
                b.inputs.append(args[0] if args else kwargs["hidden_states"])
                b.calls.append({name: kwargs.get(name) for name in _KWARGS})

            handles = [layer.register_forward_pre_hook(record, with_kwargs=True) for layer in layers]
            try:
                hidden = self.decoder.hidden(input_ids)
            finally:
                for handle in handles:
                    handle.remove()
            captured.append(batch)
            outputs.update(zip(batch.index, hidden, strict=True))
        return torch.stack([outputs[i] for i in range(len(outputs))]), captured

    def embed_from(self, captured: list[CapturedBatch], block: int, stage: int = 0) -> torch.Tensor:
        """Final hidden states of the captured texts, recomputed from `block` on at the current map."""
        return self._run(captured, block, record=False)[0]

    def capture_from(self, captured: list[CapturedBatch], block: int,
                     stage: int = 0) -> tuple[torch.Tensor, list[CapturedBatch]]:
        """`embed_from`, also keeping this run's block inputs (shared with `captured` before `block`)."""
        return self._run(captured, block, record=True)

    @torch.inference_mode()
    def _run(self, captured: list[CapturedBatch], block: int, record: bool):
        outputs, records = {}, []
        layers, model = self.decoder.layers, self.decoder.module.model
        with self.decoder.pinned():
            for batch in captured:
                kept = replace(batch, inputs=batch.inputs[:block], calls=batch.calls[:block]) if record else None
                cache = self.decoder.new_cache()
                hidden = batch.inputs[block]
                for b in range(block, len(layers)):
                    if kept is not None:
                        kept.inputs.append(hidden)
                        kept.calls.append(batch.calls[b])
                    hidden = layers[b](hidden, cache=cache, **batch.calls[b])
                    if isinstance(hidden, tuple):  # older transformers return (hidden, ...)
                        hidden = hidden[0]
                outputs.update(zip(batch.index, model.norm(hidden), strict=True))
                if kept is not None:
                    records.append(kept)
        return torch.stack([outputs[i] for i in range(len(outputs))]), records
