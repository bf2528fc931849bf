"""Parts of the HTTP guard that need no server: the memory trimmer and the model-name check.
(The guard's answers over HTTP are tested against a real server in test_server_http.py.)"""

from __future__ import annotations

import asyncio

import pytest

from serving import guard
from serving.guard import MemoryTrimmer, invalid_model_name


def test_memory_is_trimmed_once_after_a_burst_of_large_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    """Red team (issue 17): RSS grew 815 -> 1,078 MiB over a round of large requests and stayed there;
    malloc_trim(0) runs once, TRIM_DELAY_S after the last large request of a burst, off the event loop."""
    monkeypatch.setattr(guard, "TRIM_DELAY_S", 0.05)
    calls: list[int] = []
    trimmer = MemoryTrimmer()
    assert trimmer._trim is not None, "glibc's malloc_trim not found"  # Linux (the predictor image)
    trimmer._trim = lambda pad: calls.append(pad) or 1

    async def burst() -> None:
        for _ in range(5):
            trimmer.after_large_request()
            await asyncio.sleep(0.01)
        assert calls == []  # not during the burst
        await asyncio.sleep(0.3)

    asyncio.run(burst())
    assert calls == [0]


@pytest.mark.parametrize(
    ("path", "refused"),
    [
        ("/v1/models/gtsrb-classifier:predict", False),
        ("/v1/models/other-model:predict", False),  # a valid name: KServe's own 404
        ("/v2/models/signs-2/infer", False),
        ("/v2/health/live", False),
        ("/v1/models/evil\nINFO forged:predict", True),
        ("/v1/models/evil\x00:predict", True),
        ("/v2/models/Upper/ready", True),
        ("/v2/models/a b/infer", True),
        ("/v2/models/" + "a" * 64 + "/infer", True),
        ("/v2/repository/models/x\r\ny/load", True),
        ("/v1/models/abc\n", True),
    ],
)
def test_model_names_must_be_dns_1123_labels(path: str, refused: bool) -> None:
    reason = invalid_model_name({"path": path}, "gtsrb-classifier")
    assert (reason is not None) == refused, reason
    if reason is not None:
        assert "is not a valid model name" in reason and "\n" not in reason and "\x00" not in reason
