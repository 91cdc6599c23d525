"""Embed requests from different callers computed together: one forward pass set, one pinned map.

Requests wait at most `wait_s` for company (or until `max_texts` texts are waiting), are taken whole
(a request is never split across batches, so all of its vectors come from one map), and each caller
gets back only its own vectors, with the policy version that computed them.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from concurrent.futures import Executor
from typing import Callable

# run(list of requests' texts) -> (list of each request's vectors, the policy version of the batch)
BatchRun = Callable[[list[list[str]]], tuple[list[list[list[float]]], int]]


class EmbedBatcher:
    def __init__(self, run: BatchRun, executor: Executor, max_texts: int = 32, wait_s: float = 0.005):
        self._run, self._executor = run, executor
        self.max_texts, self.wait_s = max_texts, wait_s
        self._pending: deque[tuple[list[str], asyncio.Future, float]] = deque()
        self._pending_texts = 0
        self._enough = asyncio.Event()
        self._drainer: asyncio.Task | None = None
        self.batches = 0  # forward-pass sets run so far (how many requests shared them: requests / batches)

    async def embed(self, texts: list[str]) -> tuple[list[list[float]], int]:
        answer = asyncio.get_running_loop().create_future()
        self._pending.append((texts, answer, time.monotonic()))
        self._pending_texts += len(texts)
        if self._pending_texts >= self.max_texts:
            self._enough.set()
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.ensure_future(self._drain())
        return await answer  # a caller that goes away cancels `answer`; its batch skips it

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            left = self._pending[0][2] + self.wait_s - time.monotonic()
            if left > 0 and self._pending_texts < self.max_texts:
                try:
                    await asyncio.wait_for(self._enough.wait(), left)
                except asyncio.TimeoutError:
                    pass
            batch = self._take()
            if not batch:
                continue
            self.batches += 1
            try:
                results, version = await loop.run_in_executor(self._executor, self._run, [t for t, _ in batch])
            except Exception as err:  # noqa: BLE001 - each caller of the batch gets the batch's error
                for _, answer in batch:
                    if not answer.done():
                        answer.set_exception(err)
                continue
            for (_, answer), vectors in zip(batch, results, strict=True):
                if not answer.done():
                    answer.set_result((vectors, version))

    def _take(self) -> list[tuple[list[str], asyncio.Future]]:
        """Whole requests, oldest first, up to max_texts texts (one request alone may be more)."""
        batch, count = [], 0
        while self._pending and (not batch or count + len(self._pending[0][0]) <= self.max_texts):
            texts, answer, _ = self._pending.popleft()
            self._pending_texts -= len(texts)
            if not answer.done():
                batch.append((texts, answer))
                count += len(texts)
        if self._pending_texts < self.max_texts:
            self._enough.clear()
        return batch
