"""One entry point for every model family: `minilm`, or any `package.module:factory`."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from mixprec.errors import FieldError, InvalidArgument


@dataclass
class LoadedModel:
    name: str
    module: nn.Module
    layer_map: dict[str, str]  # canonical layer name -> module path, in model order
    # For embedders: texts -> (n, d) L2-normalised; progress=DESCRIPTION shows a bar on stderr.
    embed: Callable[..., torch.Tensor] | None = None
    blocks: list[nn.Module] = field(default_factory=list)  # the repeated blocks, in order
    # Optional, with `batches`: runs the model from the middle of a block on cached base activations
    # (the sweep's fast path, worker.models.staged.StagedEncoder).
    staged: object | None = None
    # texts -> [(positions in texts, tokenizer output)]: the batches `embed` runs, for `staged.capture`.
    batches: Callable[[list[str]], list] | None = None

    @property
    def catalog(self) -> list[str]:
        return list(self.layer_map)


def load_model(spec: str, dtype: torch.dtype | None = None, device: str = "cpu") -> LoadedModel:
    if spec == "minilm":
        from worker.models.minilm import load_minilm

        return load_minilm(dtype=dtype, device=device)
    if ":" in spec:
        return load_factory(spec, dtype=dtype, device=device)
    raise InvalidArgument(FieldError("--model", f"{spec!r} is neither 'minilm' nor a 'package.module:factory'"))


def load_factory(spec: str, dtype: torch.dtype | None = None, device: str = "cpu") -> LoadedModel:
    """Any torch module a user's factory builds; its nn.Linear layers keep their own module names."""
    module_name, _, attr = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise InvalidArgument(FieldError("--model", f"cannot load {spec!r}: {err}")) from None
    module = factory()
    if not isinstance(module, nn.Module):
        raise InvalidArgument(FieldError("--model", f"{spec!r} returned a {type(module).__name__}, not a torch module"))
    module = module.to(device=device, dtype=dtype) if dtype else module.to(device)
    module.eval()
    layer_map = {name: name for name, m in module.named_modules() if isinstance(m, nn.Linear)}
    return LoadedModel(spec, module, layer_map)
