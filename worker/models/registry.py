"""Which adapter loads which `--model`: a plain table. Adapters import nothing from here."""

from __future__ import annotations

import importlib

from mixprec.errors import FieldError, InvalidArgument
from mixprec.families import HF_PREFIX

# --model value -> "module:function" of the adapter that loads it (imported only when that model is used).
NAMED = {
    "minilm": "worker.models.minilm:load_minilm",
    "gemma3-270m": "worker.models.decoder:load_gemma3_270m",
    "tiny-llama": "worker.models.tiny:load_tiny_decoder",  # random weights: tests and trying things out
}
HF_LOADER = "worker.models.decoder:load_hf"  # --model hf:PATH
FACTORY_LOADER = "worker.models.factory:load_factory"  # --model package.module:factory


def load_model(spec: str, dtype="auto", device="auto"):
    """The LoadedModel (worker.models.loaded) for a `--model` value, on `device` in `dtype` (strings as
    `--device` and `--dtype` take them, or torch objects; auto: worker.device)."""
    from worker.device import placement

    device, dtype = placement(device, dtype)  # refused by name before anything loads
    if spec in NAMED:
        return _loader(NAMED[spec])(dtype=dtype, device=device)
    if spec.startswith(HF_PREFIX):
        return _loader(HF_LOADER)(spec.removeprefix(HF_PREFIX), dtype=dtype, device=device)
    if ":" in spec:
        return _loader(FACTORY_LOADER)(spec, dtype=dtype, device=device)
    raise InvalidArgument(FieldError("--model", f"{spec!r} is none of {', '.join(NAMED)}, hf:PATH "
                                                "or a 'package.module:factory'"))


def _loader(target: str):
    module, _, function = target.partition(":")
    return getattr(importlib.import_module(module), function)
