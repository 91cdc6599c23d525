"""A user's own model: any torch module a `package.module:factory` builds."""

from __future__ import annotations

import importlib

import torch
from torch import nn

from mixprec.errors import FieldError, InvalidArgument
from worker.device import placement
from worker.models.loaded import LoadedModel


def load_factory(spec: str, dtype: torch.dtype | str | None = None, device: torch.device | str = "cpu") -> LoadedModel:
    """Its nn.Linear layers keep their own module names."""
    device, dtype = placement(device, dtype)
    module_name, _, attr = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise InvalidArgument(FieldError("--model", f"cannot load {spec!r}: {err}")) from None
    module = factory()
    if not isinstance(module, nn.Module):
        raise InvalidArgument(FieldError("--model", f"{spec!r} returned a {type(module).__name__}, not a torch module"))
    module = module.to(device=device, dtype=dtype)
    module.eval()
    layer_map = {name: name for name, m in module.named_modules() if isinstance(m, nn.Linear)}
    return LoadedModel(spec, module, layer_map)
