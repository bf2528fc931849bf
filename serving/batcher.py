"""In-process dynamic batching: concurrent requests share one forward pass.

On a CPU a forward pass over 32 small images costs far less than 32 passes over one, so
requests that arrive while the model is busy are queued and run together. A single worker
task takes whatever is queued (up to `max_batch_size` images), waits at most `max_wait_s`
for more when the batch is not full and the previous pass was shared (under light traffic a
lone request runs at once), and runs the batch in a dedicated one-thread executor:
the event loop never runs inference, and only one pass holds torch's intra-op threads at a
time. With `max_batch_size=1` every request runs alone (the unbatched baseline in the bench).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import torch

from serving.config import BatchingConfig

T = TypeVar("T")


@dataclass
class _Pending(Generic[T]):
    images: torch.Tensor
    future: asyncio.Future[tuple[torch.Tensor, T]]
    queued_at: float = field(default_factory=time.perf_counter)


BatchObserver = Callable[[int, list[float]], None]  # (images in the pass, seconds each request queued)


class DynamicBatcher(Generic[T]):
    """`await submit(images)` -> (rows of `run(batch)` for those images, the tag `run` returned).

    `run` gets uint8 (N, 3, S, S) and returns (per-image outputs (N, ...), tag); the tag lets
    the caller know which model produced the rows when the model is swapped between passes.
    """

    def __init__(
        self, run: Callable[[torch.Tensor], tuple[torch.Tensor, T]], config: BatchingConfig, observe: BatchObserver
    ) -> None:
        self.run = run
        self.config = config
        self.observe = observe
        self._queue: asyncio.Queue[_Pending[T]] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._carry: _Pending[T] | None = None  # the request that did not fit the last pass leads the next
        self._last_pass_requests = 0  # >1: requests are arriving together, worth waiting for more
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="tsr-forward")

    def _ensure_worker(self) -> asyncio.Queue[_Pending[T]]:
        # Created lazily: the queue and the task belong to the loop the server runs.
        if self._queue is None or self._worker is None or self._worker.done():
            self._queue = asyncio.Queue()
            self._worker = asyncio.get_running_loop().create_task(self._work(self._queue), name="tsr-batcher")
        return self._queue

    async def submit(self, images: torch.Tensor) -> tuple[torch.Tensor, T]:
        queue = self._ensure_worker()
        future: asyncio.Future[tuple[torch.Tensor, T]] = asyncio.get_running_loop().create_future()
        queue.put_nowait(_Pending(images, future))
        return await future

    async def _collect(self, queue: asyncio.Queue[_Pending[T]]) -> list[_Pending[T]]:
        first, self._carry = self._carry, None
        batch = [first if first is not None else await queue.get()]
        size = batch[0].images.shape[0]
        deadline = time.perf_counter() + self.config.max_wait_s
        while size < self.config.max_batch_size:
            if queue.empty():
                if self._last_pass_requests <= 1:
                    break  # light traffic: nobody to wait for, a lone request goes at once
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(queue.get(), remaining)
                except TimeoutError:
                    break
            else:
                item = queue.get_nowait()
            if size + item.images.shape[0] > self.config.max_batch_size:
                self._carry = item
                break
            batch.append(item)
            size += item.images.shape[0]
        return batch

    async def _work(self, queue: asyncio.Queue[_Pending[T]]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [p for p in await self._collect(queue) if not p.future.done()]  # drop cancelled clients
            self._last_pass_requests = len(batch)
            if not batch:
                continue
            started = time.perf_counter()
            images = batch[0].images if len(batch) == 1 else torch.cat([p.images for p in batch])
            try:
                outputs, tag = await loop.run_in_executor(self._executor, self.run, images)
            except Exception as exc:  # the model failed: every request in the pass gets the error
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(exc)
                continue
            self.observe(images.shape[0], [started - p.queued_at for p in batch])
            for p, rows in zip(batch, outputs.split([p.images.shape[0] for p in batch]), strict=True):
                if not p.future.done():
                    p.future.set_result((rows, tag))

    def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)
