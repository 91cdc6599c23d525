"""A tiny random-weight Llama decoder built in code (a few MB): fast unit tests of the decoder path.

Never used for a quality claim: its weights are noise. Byte-level tokens, so any text encodes.
"""

from __future__ import annotations

import torch

from worker.models.decoder import decoder_model
from worker.models.loaded import LoadedModel

TINY_NAME = "tiny-llama"
EOS = "<eos>"


def byte_tokenizer():
    """A byte-level tokenizer (256 byte tokens, then <eos>), with no merges: every text encodes, offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {symbol: i for i, symbol in enumerate(sorted(alphabet))}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS, pad_token=EOS)
    return fast


def tiny_module(layers: int = 3, seed: int = 0, max_positions: int = 256):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=260, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                         max_position_embeddings=max_positions, eos_token_id=256, bos_token_id=256,
                         tie_word_embeddings=False)
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    module = LlamaForCausalLM(config)
    with torch.no_grad():  # larger weights than the init's 0.02 so that logits, and FP8 errors, are not tiny
        for parameter in module.parameters():
            if parameter.dim() == 2:
                parameter.normal_(0.0, 0.15)
    return module


def load_tiny_decoder(dtype: torch.dtype | str | None = None, device: torch.device | str = "cpu",
                      layers: int = 3) -> LoadedModel:
    return decoder_model(TINY_NAME, tiny_module(layers), byte_tokenizer(), dtype, device)
