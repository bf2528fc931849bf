"""Image decoding off the event loop, within a process-wide pixel budget.

A small encoded image can declare millions of pixels (a 581-byte palette PNG of 2000x2000), so the
bytes of a request say little about what decoding it costs; its image headers do. Every request is
therefore checked in a worker thread first (`serving.codec.plan_*`: shapes, base64, formats, sizes
from the headers, the request's own `max_request_pixels`), then reserves its pixels out of the
process's `max_pixels_in_flight` and is decoded in the same bounded pool of threads. The event loop
only hands work over, so `/v2/health/live`, readiness probes and small requests are answered while
large ones decode; a request that finds the budget taken waits at most `wait_s`, then is refused
with a 503 (`DecodeOverloaded`), because queueing more work than the process can do only makes
every answer late.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from serving.codec import DecodePlan
from serving.config import CodecLimits, DecodeConfig


class DecodeOverloaded(Exception):
    """The process is already decoding as many pixels as it may (HTTP 503, retry later)."""


class PixelBudget:
    """A counting semaphore over pixels, granted first come, first served, on one event loop at a time.

    Not asyncio.Semaphore: a request takes many units at once, and FIFO order keeps a large request from
    waiting forever behind a stream of small ones. No loop is bound at construction (tests run the
    predictor under several `asyncio.run` calls).
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.in_use = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    async def acquire(self, pixels: int, timeout_s: float) -> bool:
        """Reserve `pixels`; False when they could not be had within `timeout_s`."""
        if not self._waiters and self.in_use + pixels <= self.capacity:
            self.in_use += pixels
            return True
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (pixels, future)
        self._waiters.append(entry)
        granted = False
        try:
            await asyncio.wait_for(future, timeout_s)  # cancels the future when the time runs out
            granted = True
        except TimeoutError:
            pass
        finally:
            if not granted:
                if future.done() and not future.cancelled():  # granted just as this task was cancelled
                    self.release(pixels)
                else:
                    with contextlib.suppress(ValueError):  # already dropped by _wake
                        self._waiters.remove(entry)
                    self._wake()  # it may have been the head that kept smaller requests waiting
        return granted

    def release(self, pixels: int) -> None:
        self.in_use -= pixels
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            pixels, future = self._waiters[0]
            if future.done():  # timed out or cancelled, not yet removed
                self._waiters.popleft()
                continue
            if self.in_use + pixels > self.capacity:
                return
            self._waiters.popleft()
            self.in_use += pixels
            future.set_result(None)


Planner = Callable[[Any, int, CodecLimits], DecodePlan]

# Decoding threads run this much nicer than the event loop's thread, so that under a decoding flood the
# kernel still schedules the loop (probes, small requests, the batcher) first; idle CPU still goes to them.
DECODE_NICE_INCREMENT = 10


def _lower_priority() -> None:
    """Thread initializer: on Linux, nice values are per thread (the thread id is a PRIO_PROCESS target)."""
    if sys.platform != "linux":
        return  # elsewhere the same call would renice the whole process
    with contextlib.suppress(OSError):
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + DECODE_NICE_INCREMENT))


class Decoder:
    """Runs `serving.codec` plans in a bounded thread pool, within the process's pixel budget."""

    def __init__(self, config: DecodeConfig, limits: CodecLimits) -> None:
        self.config = config
        self.limits = limits
        self.budget = PixelBudget(config.max_pixels_in_flight)
        self._pool = ThreadPoolExecutor(
            max_workers=config.threads, thread_name_prefix="tsr-decode", initializer=_lower_priority
        )

    async def decode(self, planner: Planner, payload: Any, image_size: int) -> torch.Tensor:
        """Check the request (in a worker), reserve its pixels, decode them (in a worker): (N, 3, S, S) uint8.

        Raises `serving.codec.Rejected` for a client mistake and `DecodeOverloaded` when the budget stays
        taken for `wait_s`. A request of raw tensors only needs no reservation: the first step converts it.
        """
        loop = asyncio.get_running_loop()
        plan_or_batch = await loop.run_in_executor(self._pool, _plan, planner, payload, image_size, self.limits)
        if isinstance(plan_or_batch, torch.Tensor):
            return plan_or_batch
        plan = plan_or_batch
        if not await self.budget.acquire(plan.pixels, self.config.wait_s):
            cfg = self.config
            raise DecodeOverloaded(
                f"server busy: {plan.where} holds {plan.pixels} pixels to decode and the server is already "
                f"decoding {self.budget.in_use} of max_decode_pixels={cfg.max_pixels_in_flight} "
                f"(waited {cfg.wait_s:g}s); retry later"
            )
        try:
            return await loop.run_in_executor(self._pool, plan.run)
        finally:
            self.budget.release(plan.pixels)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _plan(planner: Planner, payload: Any, image_size: int, limits: CodecLimits) -> DecodePlan | torch.Tensor:
    """In a worker: the checked plan, or, when nothing is left to decode, the batch itself (one thread hop)."""
    plan = planner(payload, image_size, limits)
    return plan if plan.pending else plan.run()
