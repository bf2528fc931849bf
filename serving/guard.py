"""HTTP guard in front of KServe's endpoints: body size limit, request latency, rejection counts.

A pure ASGI middleware (no extra task per request), so a request's `RequestNote` set here
is the one the predictor sees: the predictor writes *why* it refused a request, and this
layer, which sees every status code (including KServe's own 404 for an unknown model and
FastAPI's validation errors), counts each refused request exactly once.

It also answers, with a 4xx, the client mistakes that kserve 0.21 itself would answer with
a 5xx (found by tests/serving/test_fuzz.py): a malformed binary-extension V2 body (kserve
parses it outside any error handling: 500) and requests for model versions, an explainer or
another model's reload, none of which this predictor has (kserve: 501 and 503). A 5xx means
"the server is broken" and feeds the TSRHighErrorRate alert, so no client should cause one.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import email.message
import json
import math
import re
import struct
import time
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import numpy as np
import orjson
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import ORJSONResponse
from kserve.utils.numpy_codec import to_np_dtype

from serving.monitoring.metrics import PredictorMetrics

Scope = dict[str, Any]
Message = dict[str, Any]

_INFERENCE_PATH = re.compile(r"^/(v1)/models/[^/]+:predict$|^/(v2)/models/[^/]+(?:/versions/[^/]+)?/infer$")
# Endpoints kserve answers with a 5xx for what this predictor does not have (see `not_found`).
_VERSIONED_PATH = re.compile(r"^/v2/models/([^/]+)/versions/[^/]+(?:/ready|/infer)?$")
_VERSION_QUERY_PATH = re.compile(r"^/v2/models/([^/]+)(?:/ready|/infer)?$")
_EXPLAIN_PATH = re.compile(r"^/v1/models/([^/]+):explain$")
_REPOSITORY_PATH = re.compile(r"^/v2/repository/models/([^/]+)/(?:load|unload)$")
# Every path that names a model, and the name in it (the V1 name ends at its ':verb').
_MODEL_NAME_PATH = re.compile(
    r"/v1/models/(.*?)(?::predict|:explain)?|/v2/(?:repository/)?models/([^/]*)(?:/.*)?", re.DOTALL
)
# What a model name can be: KServe's InferenceService names are DNS-1123 labels.
_VALID_MODEL_NAME = re.compile(r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?")
_BINARY_HEADER = b"inference-header-content-length"


# A request body at least this large makes the allocator take memory it then keeps (see MemoryTrimmer).
TRIM_AFTER_BYTES = 1024 * 1024
TRIM_DELAY_S = 1.0  # after the last large request, so a burst is trimmed once, once it is over


def _libc_malloc_trim() -> Any:
    """glibc's malloc_trim, or None (musl, macOS): returning freed heap memory to the system."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


class MemoryTrimmer:
    """Gives freed heap memory back to the system after large requests.

    A 15 MiB JSON body becomes hundreds of MiB of Python objects while it is parsed; once freed, glibc
    keeps most of it in its arenas, so the predictor's RSS stays up after a burst of large requests
    (815 -> 1,078 MiB over a red-team round). `malloc_trim(0)` hands the free pages back; it takes a few
    ms, so it runs in a worker thread, once, `TRIM_DELAY_S` after the last large request.
    """

    def __init__(self) -> None:
        self._trim = _libc_malloc_trim()
        self._timer: asyncio.TimerHandle | None = None

    def after_large_request(self) -> None:
        if self._trim is None:
            return
        loop = asyncio.get_running_loop()
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_later(TRIM_DELAY_S, self._run, loop)

    def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        loop.run_in_executor(None, self._trim, 0)


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


def not_found(scope: Scope, model_name: str) -> str | None:
    """Why kserve would answer this request with a 5xx although it asks for something that is not here.

    kserve answers model versions and explain with 501 and a repository load of an unknown model
    with 503; this predictor serves one unversioned model without an explainer, so each is a 404.
    """
    path = scope.get("path", "")
    if match := _REPOSITORY_PATH.match(path):
        return None if match.group(1) == model_name else f"Model with name {match.group(1)} does not exist."
    if match := _EXPLAIN_PATH.match(path):
        return f"model {match.group(1)!r} has no explainer here; use /v1/models/{match.group(1)}:predict"
    match = _VERSIONED_PATH.match(path)
    if match is None and (match := _VERSION_QUERY_PATH.match(path)) is not None:
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"))
        if not any(key == "model_version" and value for key, value in query):
            return None
    if match is None:
        return None
    name = match.group(1)
    return (
        f"model {name!r} is served unversioned (its version is the model_version of every response); "
        f"use /v2/models/{name}/infer, /ready or the metadata endpoint without a version"
    )


def invalid_model_name(scope: Scope, model_name: str) -> str | None:
    """Why the model name in this path cannot be one, or None.

    A name from the URL reaches KServe's log lines ("Model with name X does not exist"); `%0a` in
    it wrote a forged line into the log, `%00` a NUL. Only the served name and DNS-1123 labels (what
    an InferenceService may be called) go further; anything else is a 404 that says why, in one line.
    """
    match = _MODEL_NAME_PATH.fullmatch(scope.get("path", ""))
    if match is None:
        return None
    name = match.group(1) if match.group(1) is not None else match.group(2)
    if name == model_name or _VALID_MODEL_NAME.fullmatch(name):
        return None
    return (
        f"model name {ascii(name)[:80]} is not a valid model name (lowercase letters, digits and '-', "
        f"at most 63 characters); this server serves '{model_name}'"
    )


def _parsed_as_json(content_type: str | None) -> bool:
    """FastAPI's rule for whether it parses a body as JSON (fastapi.routing.get_request_handler)."""
    if not content_type:
        return True
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json"))


def _is_raw_octet_stream(content_type: bytes | None, body: bytes) -> bool:
    """An image sent as `application/octet-stream` (curl --data-binary), which kserve 0.21 parses as JSON.

    kserve lists that exact content type among its JSON types, so the predictor's raw-image path
    never saw it: every such image was a 400. A body that starts like JSON still goes the JSON way.
    """
    if content_type is None or content_type.split(b";")[0].strip().lower() != b"application/octet-stream":
        return False
    return body.lstrip()[:1] not in (b"{", b"[")


def _with_content_type(scope: Scope, content_type: bytes) -> Scope:
    headers = [(k, v) for k, v in scope.get("headers", []) if k != b"content-type"]
    return {**scope, "headers": [*headers, (b"content-type", content_type)]}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _binary_input_refusal(item: Any, where: str, payload: bytes, start: int) -> tuple[str | None, int]:
    """Check one input of a binary-extension body; returns (refusal, where its binary data ends)."""
    if not isinstance(item, dict):
        return f"{where} must be an object, got {type(item).__name__}", start
    for key, kind in (("name", str), ("datatype", str), ("shape", list)):
        if not isinstance(item.get(key), kind):
            return f"{where}.{key} must be a {kind.__name__}, got {type(item.get(key)).__name__}", start
    shape = item["shape"]
    if not all(_is_int(s) and s >= 0 for s in shape):
        return f"{where}.shape must hold integers >= 0, got {shape}", start
    parameters = item.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        return f"{where}.parameters must be an object, got {type(parameters).__name__}", start
    if item.get("data") is not None or not parameters or "binary_data_size" not in parameters:
        return None, start  # JSON data, or kserve's own 400 for missing data
    size = parameters["binary_data_size"]
    if not _is_int(size) or size < 0 or start + size > len(payload):
        return (
            f"{where}.parameters.binary_data_size must be an integer in 0..{len(payload) - start} "
            f"(the bytes left after the JSON header), got {size!r}"
        ), start
    end = start + size
    dtype = to_np_dtype(item["datatype"])
    if dtype is None:
        return None, end  # kserve answers an unknown datatype with its own 400
    count = math.prod(shape)
    if item["datatype"] != "BYTES":
        itemsize = np.dtype(dtype).itemsize
        if size != count * itemsize:
            return f"{where}: shape {shape} of {item['datatype']} needs {count * itemsize} bytes, got {size}", end
        return None, end
    # BYTES: elements are <uint32 little-endian length><bytes>; kserve then decodes each as UTF-8.
    offset, elements = start, 0
    while offset < end:
        if offset + 4 > end:
            return f"{where}: BYTES element {elements} is cut off in its 4-byte length prefix", end
        (length,) = struct.unpack_from("<I", payload, offset)
        if offset + 4 + length > end:
            return f"{where}: BYTES element {elements} declares {length} bytes, only {end - offset - 4} follow", end
        try:
            payload[offset + 4 : offset + 4 + length].decode("utf-8")
        except UnicodeDecodeError:
            return (
                f"{where}: BYTES element {elements} is not UTF-8; in the binary extension images must be "
                "base64 text (raw image bytes work in the JSON form as base64, or over gRPC)"
            ), end
        offset += 4 + length
        elements += 1
    if elements != count:
        return f"{where}: shape {shape} declares {count} BYTES elements, the binary data holds {elements}", end
    return None, end


def binary_body_refusal(body: bytes, header_length: bytes, content_type: str | None) -> str | None:
    """Why kserve's binary-extension parser (InferRequest.from_bytes) would fail with a 500, or None.

    kserve calls it outside its error handling, so a wrong length header, a binary_data_size
    that does not fit, or non-UTF-8 BYTES become 500s; this mirrors its checks so they are 400s.
    Only the JSON header is parsed here; the binary data is length-checked, never copied.
    """
    payload = body
    if _parsed_as_json(content_type):
        # FastAPI parses the body as JSON; a V2 body reaches from_bytes only as a JSON string.
        try:
            value = json.loads(body)
        except (ValueError, RecursionError):
            return None
        if not isinstance(value, str):
            return None
        try:
            payload = value.encode("utf-8")
        except UnicodeEncodeError:
            return None
    text = header_length.decode("latin-1").strip()
    if not text.isdigit() or int(text) > len(payload):
        return f"inference-header-content-length must be the JSON header's length, 0..{len(payload)}, got {text!r}"
    start = int(text)
    try:
        header = orjson.loads(payload[:start])
    except orjson.JSONDecodeError:
        return None  # kserve answers 400 "Unrecognized request format"
    if not isinstance(header, dict) or not isinstance(header.get("inputs"), list):
        return "the JSON header of a binary V2 request must be an object with an 'inputs' list"
    for key in ("id", "parameters", "outputs"):
        expected = {"id": str, "parameters": dict, "outputs": list}[key]
        if header.get(key) is not None and not isinstance(header[key], expected):
            return f"{key} must be a {expected.__name__}, got {type(header[key]).__name__}"
    for i, output in enumerate(header.get("outputs") or []):
        if not isinstance(output, dict) or not isinstance(output.get("name"), str):
            return f"outputs[{i}] must be an object with a string 'name'"
        if output.get("parameters") is not None and not isinstance(output["parameters"], dict):
            return f"outputs[{i}].parameters must be an object"
    for i, item in enumerate(header["inputs"]):
        refusal, start = _binary_input_refusal(item, f"inputs[{i}]", payload, start)
        if refusal is not None:
            return refusal
    return None


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
        self.trimmer = MemoryTrimmer()

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        is_http = scope["type"] == "http"
        match = _INFERENCE_PATH.match(scope.get("path", "")) if is_http else None
        missing = (invalid_model_name(scope, self.model_name) or not_found(scope, self.model_name)) if is_http else None
        if match is None:
            if missing is not None:
                await self._respond(send, 404, missing, close=True)  # its body, if any, is unread
            else:
                await self.app(scope, receive, send)
            return
        protocol = match.group(1) or match.group(2)
        started = time.perf_counter()
        note = RequestNote()
        token = _CURRENT.set(note)
        status: int | None = 500
        try:

            async def send_status(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = int(message["status"])
                await send(message)

            if scope.get("method") != "POST":
                # KServe's GET /v1/models/{name} route would take 'name:predict' for a model name (404).
                note.reason = "method_not_allowed"
                await self._respond(
                    send_status,
                    405,
                    f"{scope.get('method')} is not allowed on {scope.get('path')}; inference takes POST",
                    close=True,
                    extra=[(b"allow", b"POST")],
                )
                return
            if missing is not None:
                await self._respond(send_status, 404, missing, close=True)  # its body is unread
                return
            body, refusal, complete = await self._read_body(scope, receive)
            if refusal is not None:
                await self._respond(send_status, 413, refusal, close=True)
                return
            if not complete:  # the client went away, or the HTTP layer gave up on it (serving/http.py)
                status = None
                return
            headers = dict(scope.get("headers", []))
            if protocol == "v1" and _is_raw_octet_stream(headers.get(b"content-type"), body):
                scope = _with_content_type(scope, b"image/*")
            if protocol == "v2" and _BINARY_HEADER in headers:
                content_type = headers.get(b"content-type")
                bad = binary_body_refusal(
                    body, headers[_BINARY_HEADER], content_type and content_type.decode("latin-1")
                )
                if bad is not None:
                    note.reason = "malformed_json"
                    await self._respond(send_status, 400, f"binary V2 request: {bad}")
                    return
            replayed = False

            async def replay() -> Message:
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return dict(await receive())  # http.disconnect

            await self.app(scope, replay, send_status)
            if len(body) >= TRIM_AFTER_BYTES:
                self.trimmer.after_large_request()
        finally:
            _CURRENT.reset(token)
            if status is not None:
                m = self.metrics
                m.request_seconds.labels(self.model_name, protocol, str(status)).observe(time.perf_counter() - started)
                if 400 <= status < 500 or (status == 503 and note.reason is not None):
                    m.rejected.labels(self.model_name, note.reason or _reason_for_status(status)).inc()

    async def _read_body(self, scope: Scope, receive: Any) -> tuple[bytes, str | None, bool]:
        """(the whole body, a refusal once it is known to exceed the limit (header first), whether it came whole)."""
        limit = self.max_request_bytes
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                return b"", f"request body is {int(value)} bytes, limit is max_request_bytes={limit}", False
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return b"", None, False  # http.disconnect before the body was complete
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return b"", f"request body exceeds max_request_bytes={limit}", False
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks), None, True

    @staticmethod
    async def _respond(
        send: Any, status: int, error: str, close: bool = False, extra: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        payload = orjson.dumps({"error": error})
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        headers += extra or []
        if close:  # the client may still be sending; close the connection rather than read the rest
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})
