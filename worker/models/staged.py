"""Runs a BERT-style encoder from the middle of a block on cached base activations: the sweep's fast path.

A change confined to one layer alters nothing upstream of it, so one reference pass keeps the base
activations at each stage of each block (its input, the attention context, the attention output) and
a single-layer run starts at that layer's stage.

Runs are also packed: the token-wise work (every projection, LayerNorm and the MLP, nearly all the
FLOPs) runs on real tokens only, and padding is laid out again only around the attention product.
That is exact where a layer's output for one token depends on that token alone; per-tensor activation
scales see every row of the batch, padding included, so such runs keep the padded rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

# Where a single-layer change starts to matter inside a block, earliest first.
STAGES = ("attention", "attention_output", "mlp", "mlp_output")
# About the share of a block's FLOPs that starting at each stage skips (q/k/v and attention are about a
# third; a down_proj run recomputes up_proj, so it skips what an up_proj run skips).
_SKIPPED = (0.0, 0.3, 0.4, 0.4)
STAGE_OF = {"q_proj": "attention", "k_proj": "attention", "v_proj": "attention", "o_proj": "attention_output",
            "up_proj": "mlp", "down_proj": "mlp_output"}


def mean_pooled(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Sentence embeddings from padded (texts, length, hidden) states: the mean over real tokens, L2-normalised,
    in float32 (a BF16 model's cosines are compared at 1e-5) on the states' device."""
    hidden = hidden.float()
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return F.normalize(pooled, dim=-1)


@dataclass
class CapturedBatch:
    """One batch of the reference pass, its activations as (rows, hidden) for the rows runs compute."""

    index: list[int]            # where these texts sit in the caller's list
    shape: tuple[int, int]      # (texts, padded length)
    rows: torch.Tensor | None   # flat positions of the computed rows in (texts * length); None: all of them
    text_of_row: torch.Tensor   # which text each computed row belongs to (for mean pooling)
    row_weight: torch.Tensor    # 1 for a real token, 0 for padding
    key_mask: torch.Tensor      # (texts, 1, 1, length), True where attention may look
    inputs: list[torch.Tensor] = field(default_factory=list)     # per block: its input
    context: list[torch.Tensor] = field(default_factory=list)    # per block: attention context before o_proj
    attention: list[torch.Tensor] = field(default_factory=list)  # per block: attention output before up_proj


class StagedEncoder:
    """`capture(batches)` once, then `embed_from(captured, block, stage)` per single-layer run."""

    def __init__(self, model, hidden_size: int):
        self.model, self.hidden_size = model, hidden_size
        self.blocks = list(model.encoder.layer)

    def stage_of(self, layer: str) -> tuple[int, int] | None:
        """(block, stage index) where `layer` sits, or None for a layer outside the blocks."""
        parts = layer.split(".")
        if len(parts) == 4 and parts[0] == "layers" and parts[3] in STAGE_OF:
            return int(parts[1]), STAGES.index(STAGE_OF[parts[3]])
        return None

    def work(self, block: int, stage: int) -> float:
        """Estimated cost of a run from `stage` of `block`, as a share of a full forward pass."""
        return (len(self.blocks) - block - _SKIPPED[stage]) / len(self.blocks)

    def capture(self, batches, packed: bool = True, during=None) -> tuple[torch.Tensor, list[CapturedBatch]]:
        """Runs the model once over `batches` ((index, tokenizer output) pairs) at the engine's current map:
        the texts' embeddings (as the model's own embed computes them) and each block's stage
        activations; `packed=False` keeps padding rows too. `during(embeddings, tokens)`, if given, is
        called per batch on the embeddings with their graph (the fast sweep's estimates ride on this pass)."""
        with torch.inference_mode(during is None):
            return self._capture(batches, packed, during)

    def _capture(self, batches, packed: bool, during) -> tuple[torch.Tensor, list[CapturedBatch]]:
        captured = []
        out = torch.empty(sum(len(index) for index, _ in batches), self.hidden_size, device=self.model.device)
        for index, tokens in batches:
            mask = tokens["attention_mask"].bool()
            flat_mask = mask.reshape(-1)
            texts, length = mask.shape
            text_of_row = torch.arange(texts, device=mask.device).repeat_interleave(length)
            rows = flat_mask.nonzero().squeeze(1) if packed else None
            batch = CapturedBatch(
                index=list(index), shape=(texts, length), rows=rows,
                text_of_row=text_of_row if rows is None else text_of_row[rows],
                row_weight=flat_mask.float() if rows is None else torch.ones(len(rows), device=mask.device),
                key_mask=mask[:, None, None, :])
            handles = []
            for block in self.blocks:
                handles += [
                    block.register_forward_pre_hook(lambda _m, args, b=batch: b.inputs.append(self._rows(b, args[0]))),
                    block.attention.output.register_forward_pre_hook(
                        lambda _m, args, b=batch: b.context.append(self._rows(b, args[0]))),
                    block.attention.register_forward_hook(
                        lambda _m, _a, out, b=batch: b.attention.append(self._rows(b, out[0]))),
                ]
            try:
                pooled = mean_pooled(self.model(**tokens).last_hidden_state, tokens["attention_mask"])
                if during is not None:
                    during(pooled, tokens)
                out[batch.index] = pooled.detach()
            finally:
                for handle in handles:
                    handle.remove()
            captured.append(batch)
        return out, captured

    @staticmethod
    def _rows(batch: CapturedBatch, hidden: torch.Tensor) -> torch.Tensor:
        flat = hidden.detach().reshape(-1, hidden.shape[-1])
        return flat if batch.rows is None else flat[batch.rows]

    def _attend(self, block, x: torch.Tensor, batch: CapturedBatch) -> torch.Tensor:
        """Self-attention context for the computed rows; padding exists only inside this function."""
        attn = block.attention.self
        texts, length = batch.shape
        heads, head_size = attn.num_attention_heads, attn.attention_head_size

        def per_head(rows: torch.Tensor) -> torch.Tensor:
            if batch.rows is not None:
                full = rows.new_zeros(texts * length, rows.shape[-1])
                full[batch.rows] = rows
                rows = full
            return rows.view(texts, length, heads, head_size).transpose(1, 2)

        context = F.scaled_dot_product_attention(
            per_head(attn.query(x)), per_head(attn.key(x)), per_head(attn.value(x)),
            attn_mask=batch.key_mask, scale=attn.scaling)
        context = context.transpose(1, 2).reshape(texts * length, heads * head_size)
        return context if batch.rows is None else context[batch.rows]

    def _block(self, b: int, batch: CapturedBatch, x: torch.Tensor | None, stage: int = 0,
               record: CapturedBatch | None = None) -> torch.Tensor:
        """Block `b` from `stage` on: from its input `x`, or from `batch`'s cache at a later stage; what it
        computes or reuses at each stage goes into `record`, if given."""
        block = self.blocks[b]
        source = batch.inputs[b] if x is None else x
        context = self._attend(block, source, batch) if stage == 0 else batch.context[b]
        attention = block.attention.output(context, source) if stage <= 1 else batch.attention[b]
        if record is not None:
            record.inputs.append(source)
            record.context.append(context)
            record.attention.append(attention)
        if stage <= STAGES.index("mlp"):
            return block.feed_forward_chunk(attention)
        # mlp_output: the MLP's hidden layer is recomputed (up_proj is upstream of the change, so as
        # cached) rather than cached, since it is four times the hidden size.
        return block.output(block.intermediate(attention), attention)

    def embed_from(self, captured: list[CapturedBatch], block: int, stage: int) -> torch.Tensor:
        """Normalised mean-pooled embeddings of the captured texts, recomputed from `stage` of `block` on
        at the engine's current map."""
        return self._run(captured, block, stage, record=False)[0]

    def capture_from(self, captured: list[CapturedBatch], block: int,
                     stage: int) -> tuple[torch.Tensor, list[CapturedBatch]]:
        """`embed_from`, also keeping this run's activations (shared with `captured` before the start),
        so that a next run differing from this one only at or after a later layer can start there."""
        return self._run(captured, block, stage, record=True)

    @torch.inference_mode()
    def _run(self, captured: list[CapturedBatch], block: int, stage: int, record: bool):
        out = torch.empty(sum(len(b.index) for b in captured), self.hidden_size, device=self.model.device)
        records = []
        for batch in captured:
            kept = None
            if record:
                kept = replace(batch, inputs=batch.inputs[:block], context=batch.context[:block],
                               attention=batch.attention[:block])
                records.append(kept)
            hidden = self._block(block, batch, None, stage, kept)
            for b in range(block + 1, len(self.blocks)):
                hidden = self._block(b, batch, hidden, record=kept)
            hidden = hidden.float()  # pooled as mean_pooled pools
            weight = batch.row_weight.to(hidden.dtype).unsqueeze(1)
            summed = hidden.new_zeros(batch.shape[0], hidden.shape[-1]).index_add_(0, batch.text_of_row, hidden * weight)
            counts = hidden.new_zeros(batch.shape[0]).index_add_(0, batch.text_of_row, weight.squeeze(1))
            out[batch.index] = F.normalize(summed / counts.clamp(min=1e-9).unsqueeze(1), dim=-1)
        return out, records
