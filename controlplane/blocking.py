"""Database work runs in a thread pool so that it never blocks the server's event loop."""

from __future__ import annotations

import asyncio
import contextvars
import functools
from concurrent.futures import ThreadPoolExecutor

_executor: ThreadPoolExecutor | None = None


def configure(max_workers: int = 16) -> None:
    global _executor
    _executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="mixprec-db")


async def run_blocking(fn, *args, **kwargs):
    if _executor is None:
        configure()
    loop = asyncio.get_running_loop()
    # The call's context (e.g. its write deadline) goes with it into the thread.
    context = contextvars.copy_context()
    return await loop.run_in_executor(_executor, functools.partial(context.run, fn, *args, **kwargs))
