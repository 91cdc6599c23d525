"""Catches a tensor made off the model's device on a machine without a GPU.

The model stays on the CPU while torch's default device is `meta`: a factory call that names no device
(torch.tensor, zeros, arange, ...) then makes a meta tensor, which holds no data, so the run fails
where it is used; and every such call is recorded with the line that made it, so the failure says
where. Code that places its tensors on the model's device names that device and never notices.
"""

from __future__ import annotations

import traceback
from contextlib import contextmanager

import torch
from torch.overrides import TorchFunctionMode

FACTORIES = {getattr(torch, name) for name in (
    "tensor", "as_tensor", "asarray", "empty", "zeros", "ones", "full", "arange", "linspace", "eye", "rand",
    "randn", "randint", "randperm", "empty_strided", "scalar_tensor")}
STRAY = "meta"


class FactoryCalls(TorchFunctionMode):
    """Records each torch factory call whose tensor landed on the stray device, with where it was made."""

    def __init__(self):
        super().__init__()
        self.stray: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in FACTORIES and isinstance(out, torch.Tensor) and out.device.type == STRAY:
            frames = [f for f in traceback.extract_stack()[:-1] if "/torch/" not in f.filename]
            where = frames[-1] if frames else None
            self.stray.append(f"torch.{func.__name__} at {where.filename}:{where.lineno}" if where else func.__name__)
        return out


@contextmanager
def no_stray_tensors():
    """Inside: torch's default device is meta, and the block must make no tensor there (asserted on exit,
    also when the block failed because of one: the failure then names the line)."""
    calls = FactoryCalls()
    failed = None
    with torch.device(STRAY), calls:
        try:
            yield calls
        except Exception as err:  # a stray meta tensor usually breaks the run; say where it came from
            failed = err
    assert not calls.stray, f"tensors made without the model's device: {sorted(set(calls.stray))}"
    if failed is not None:
        raise failed
