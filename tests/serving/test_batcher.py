"""The batcher coalesces concurrent requests, hands each its own rows back, and never mixes up errors."""

from __future__ import annotations

import asyncio
import threading

import pytest
import torch

from serving.batcher import BatchingConfig, DynamicBatcher


class Recorder:
    """A stand-in forward pass: row i of the output is the mean of image i, so rows are traceable."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.sizes: list[int] = []
        self.threads: set[str] = set()
        self.fail_on = fail_on

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, str]:
        self.sizes.append(images.shape[0])
        self.threads.add(threading.current_thread().name)
        if self.fail_on is not None and len(self.sizes) == self.fail_on:
            raise RuntimeError("model failed")
        return images.float().mean(dim=(1, 2, 3)), f"pass{len(self.sizes)}"


def _images(value: int, n: int = 1) -> torch.Tensor:
    return torch.full((n, 3, 4, 4), value, dtype=torch.uint8)


def _run(batcher: DynamicBatcher[str], requests: list[torch.Tensor]) -> list[tuple[torch.Tensor, str]]:
    async def go() -> list[tuple[torch.Tensor, str]]:
        try:
            return list(await asyncio.gather(*(batcher.submit(r) for r in requests)))
        finally:
            batcher.close()

    return asyncio.run(go())


def test_concurrent_requests_share_a_pass_and_get_their_own_rows() -> None:
    rec = Recorder()
    observed: list[tuple[int, int]] = []
    batcher = DynamicBatcher(
        rec, BatchingConfig(max_batch_size=64, max_wait_s=0.05), lambda n, w: observed.append((n, len(w)))
    )
    results = _run(batcher, [_images(v, n=1 + v % 3) for v in range(20)])
    for v, (rows, _tag) in enumerate(results):
        assert rows.tolist() == [float(v)] * (1 + v % 3)
    assert sum(rec.sizes) == sum(1 + v % 3 for v in range(20))
    assert len(rec.sizes) < 20  # fewer passes than requests
    assert max(rec.sizes) <= 64
    assert [n for n, _ in observed] == rec.sizes and sum(k for _, k in observed) == 20
    assert all(name.startswith("tsr-forward") for name in rec.threads)  # never on the event loop's thread


def test_max_batch_size_is_respected_and_an_oversized_request_runs_alone() -> None:
    rec = Recorder()
    batcher = DynamicBatcher(rec, BatchingConfig(max_batch_size=4, max_wait_s=0.05), lambda n, w: None)
    results = _run(batcher, [_images(1, 3), _images(2, 3), _images(3, 10), _images(4, 1)])
    assert [r[0].shape[0] for r in results] == [3, 3, 10, 1]
    assert all(size <= 4 for size in rec.sizes if size != 10) and 10 in rec.sizes
    assert results[2][0].tolist() == [3.0] * 10


def test_batch_size_one_means_one_pass_per_request() -> None:
    rec = Recorder()
    batcher = DynamicBatcher(rec, BatchingConfig(max_batch_size=1, max_wait_s=0.05), lambda n, w: None)
    _run(batcher, [_images(v) for v in range(6)])
    assert rec.sizes == [1] * 6


def test_a_failed_pass_fails_its_requests_only() -> None:
    rec = Recorder(fail_on=1)
    batcher = DynamicBatcher(rec, BatchingConfig(max_batch_size=1, max_wait_s=0), lambda n, w: None)

    async def go() -> list[object]:
        try:
            return list(await asyncio.gather(*(batcher.submit(_images(v)) for v in range(3)), return_exceptions=True))
        finally:
            batcher.close()

    results = asyncio.run(go())
    assert isinstance(results[0], RuntimeError)
    assert [r[0].tolist() for r in results[1:]] == [[1.0], [2.0]]  # type: ignore[index]


def test_invalid_config_is_refused() -> None:
    with pytest.raises(ValueError, match="max_batch_size"):
        BatchingConfig(max_batch_size=0)


def test_a_lone_request_does_not_wait_for_company() -> None:
    """Light traffic: with nothing else queued and no shared pass before, the request runs at once
    instead of sitting out max_wait_s (set absurdly high here so a wait could not go unnoticed)."""
    waits: list[float] = []
    batcher = DynamicBatcher(
        Recorder(), BatchingConfig(max_batch_size=32, max_wait_s=5.0), lambda n, w: waits.extend(w)
    )
    _run(batcher, [_images(1)])
    assert waits and waits[0] < 2.5
