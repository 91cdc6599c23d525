"""Where a model runs and in which dtype: `--device` and `--dtype`, resolved once for every command.

`auto` is the first CUDA device in BF16 where torch sees one, else the CPU in float32 (BF16 on a CPU
is slow and gives no speed; it is allowed, e.g. to check a BF16 run's quality without a GPU).
"""

from __future__ import annotations

import re

import torch

from mixprec.errors import FieldError, InvalidArgument

AUTO = "auto"
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"
_CUDA = re.compile(r"cuda(?::(\d{1,3}))?")


def resolve_device(value: str | torch.device = AUTO, flag: str = "--device") -> torch.device:
    """`auto`, `cpu`, `cuda` or `cuda:N` (or a torch.device) -> the torch.device; a CUDA device this machine
    lacks is refused by name."""
    if isinstance(value, torch.device):
        value = str(value)
    if value == AUTO:
        return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    if value == "cpu":
        return torch.device("cpu")
    match = _CUDA.fullmatch(value or "")
    if match is None:
        raise InvalidArgument(FieldError(flag, f"{str(value)[:40]!r} is not {DEVICE_CHOICES}"))
    if not torch.cuda.is_available():
        built = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise InvalidArgument(FieldError(flag, f"{value!r}: this machine has no CUDA device (torch "
                                               f"{torch.__version__}, {built}); use --device cpu or auto"))
    index, count = int(match.group(1) or 0), torch.cuda.device_count()
    if index >= count:
        raise InvalidArgument(FieldError(flag, f"{value!r}: this machine has {count} CUDA device(s), "
                                               f"cuda:0 to cuda:{count - 1}"))
    return torch.device("cuda", index)


def resolve_dtype(value: str | torch.dtype = AUTO, device: torch.device | None = None,
                  flag: str = "--dtype") -> torch.dtype:
    """`auto`, `bf16`, `fp16` or `fp32` (or a torch.dtype) -> the torch.dtype; `auto` is BF16 on CUDA, else float32."""
    if isinstance(value, torch.dtype):
        if value not in DTYPES.values():
            raise InvalidArgument(FieldError(flag, f"{value} is not one of {', '.join(DTYPES)}"))
        return value
    if value == AUTO:
        return torch.bfloat16 if device is not None and device.type == "cuda" else torch.float32
    if value not in DTYPES:
        raise InvalidArgument(FieldError(flag, f"{str(value)[:40]!r} is not auto or one of {', '.join(DTYPES)}"))
    return DTYPES[value]


def placement(device: str | torch.device = AUTO,
              dtype: str | torch.dtype | None = AUTO) -> tuple[torch.device, torch.dtype]:
    """(device, dtype) a model is loaded on and in; None as dtype is `auto`."""
    where = resolve_device(device)
    return where, resolve_dtype(AUTO if dtype is None else dtype, where)


def dtype_name(dtype: torch.dtype) -> str:
    """torch.bfloat16 -> "bfloat16", as the worker's reports and `eval` print it."""
    return str(dtype).removeprefix("torch.")
