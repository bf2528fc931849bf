"""HTTP guard in front of KServe's endpoints: body size limit, request latency, rejection counts.

A pure ASGI middleware (no extra task per request), so a request's `RequestNote` set here
is the one the predictor sees: the predictor writes *why* it refused a request, and this
layer, which sees every status code (including KServe's own 404 for an unknown model and
FastAPI's validation errors), counts each refused request exactly once.
"""

from __future__ import annotations

import re
import time
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import ORJSONResponse

from serving.monitoring.metrics import PredictorMetrics

Scope = dict[str, Any]
Message = dict[str, Any]

_INFERENCE_PATH = re.compile(r"^/(v1)/models/[^/]+:predict$|^/(v2)/models/[^/]+(?:/versions/[^/]+)?/infer$")


@dataclass
class RequestNote:
    reason: str | None = None  # set by the predictor when it refuses the request


_CURRENT: ContextVar[RequestNote | None] = ContextVar("tsr_request_note", default=None)


def note_rejection(reason: str) -> bool:
    """Record why the current HTTP request is refused; False when there is none (gRPC)."""
    note = _CURRENT.get()
    if note is None:
        return False
    note.reason = reason
    return True


def _reason_for_status(status: int) -> str:
    # Without a note, KServe refused the body before the predictor saw it: it did not parse.
    return {400: "malformed_json", 404: "unknown_model", 413: "body_too_large", 422: "malformed_json"}.get(
        status, "bad_request"
    )


async def validation_error_handler(request: Request, exc: Exception) -> ORJSONResponse:
    """FastAPI answers a body that does not fit the V2 schema with 422; the protocol says 400."""
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    parts = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}" for e in errors[:5]]
    detail = "; ".join(parts) or str(exc)
    note_rejection("malformed_json")
    return ORJSONResponse(status_code=400, content={"error": f"request body is not a valid V2 request: {detail}"})


class RequestGuard:
    """Refuses bodies over `max_request_bytes` (413) before anything parses them; times and counts requests."""

    def __init__(self, app: Any, model_name: str, max_request_bytes: int, metrics: PredictorMetrics) -> None:
        self.app = app
        self.model_name = model_name
        self.max_request_bytes = max_request_bytes
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        match = _INFERENCE_PATH.match(scope.get("path", "")) if scope["type"] == "http" else None
        if match is None:
            await self.app(scope, receive, send)
            return
        protocol = match.group(1) or match.group(2)
        started = time.perf_counter()
        note = RequestNote()
        token = _CURRENT.set(note)
        status = 500
        try:

            async def send_status(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = int(message["status"])
                await send(message)

            body, refusal = await self._read_body(scope, receive)
            if refusal is not None:
                await self._respond(send_status, 413, refusal)
                return
            replayed = False

            async def replay() -> Message:
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return dict(await receive())  # http.disconnect

            await self.app(scope, replay, send_status)
        finally:
            _CURRENT.reset(token)
            m = self.metrics
            m.request_seconds.labels(self.model_name, protocol, str(status)).observe(time.perf_counter() - started)
            if 400 <= status < 500:
                m.rejected.labels(self.model_name, note.reason or _reason_for_status(status)).inc()

    async def _read_body(self, scope: Scope, receive: Any) -> tuple[bytes, str | None]:
        """The whole body, or a refusal once it is known to exceed the limit (header first)."""
        limit = self.max_request_bytes
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                return b"", f"request body is {int(value)} bytes, limit is max_request_bytes={limit}"
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return b"", f"request body exceeds max_request_bytes={limit}"
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks), None

    @staticmethod
    async def _respond(send: Any, status: int, error: str) -> None:
        payload = orjson.dumps({"error": error})
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        # The client may still be sending; close the connection rather than read the rest.
        headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})
