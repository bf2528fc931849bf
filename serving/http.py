"""The HTTP/1.1 protocol the predictor's uvicorn runs: uvicorn's httptools protocol with connection limits.

uvicorn (as KServe 0.21 configures it) reads request headers of any size (a 60 MiB header was read
and answered 200) and has no read timeout: a client that sends its headers, or a body it announced,
one byte every few seconds holds a connection and its buffers for ever. Those limits belong below the
ASGI app, where the bytes arrive, so this subclass enforces them (`serving.config.HttpLimits`):

- request line + headers over `max_header_bytes` -> 431, connection closed;
- headers not complete `header_timeout_s` after their first byte (or after the connection was opened)
  -> 408 (or a plain close when not a byte of a request came);
- no body bytes for `body_timeout_s` while more were announced -> 408 if no answer was started, close;
- bytes that are not HTTP (a space in the URL, say) -> a JSON 400 naming the problem, instead of
  uvicorn's bare text/plain one.

Each refusal is counted in `tsr_requests_rejected_total` with its reason, like every other 4xx.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import httptools
import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from serving.config import HttpLimits

# Room for the request line's method, spaces, version and CRLFs when headers are measured once parsed.
_REQUEST_LINE_OVERHEAD = len(b"OPTIONS  HTTP/1.1\r\n\r\n")


def http_response(status: int, error: str) -> bytes:
    """A complete `{"error": ...}` response that closes the connection, for answers given below the app."""
    body = orjson.dumps({"error": error})
    head = (
        STATUS_LINE[status]
        + b"content-type: application/json\r\ncontent-length: "
        + str(len(body)).encode()
        + b"\r\nconnection: close\r\n\r\n"
    )
    return head + body


@dataclass(frozen=True)
class RefusalCounter:
    """Counts a refusal made below the app by its reason (a `tsr_requests_rejected_total` label value)."""

    count: Callable[[str], None] = lambda reason: None


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header size limit and header/body read timeouts.

    `limits` and `refusals` are class attributes because uvicorn builds one protocol instance per
    connection from a class; `guarded_protocol` makes a subclass that carries them.
    """

    limits: ClassVar[HttpLimits] = HttpLimits()
    refusals: ClassVar[RefusalCounter] = RefusalCounter()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._reading_headers = True
        self._header_bytes = 0
        self._refused = False
        self._header_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None

    # ---- connection ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # A connection that never sends a request is closed as one that stops inside its headers.
        self._header_timer = self.loop.call_later(self.limits.header_timeout_s, self._header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._reading_headers:
            if self._header_timer is None:  # the first byte of a request on a kept-alive connection
                self._header_timer = self.loop.call_later(self.limits.header_timeout_s, self._header_timeout)
            self._header_bytes += len(data)
        elif self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = self.loop.call_later(self.limits.body_timeout_s, self._body_timeout)
        # uvicorn's data_received, keeping the parser's reason for a 400
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._answer_invalid(str(exc) or "unparseable request")
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        # Still inside the headers after this much: refuse now, before buffering any more of them.
        # (Headers that end inside this chunk are measured exactly in on_headers_complete.)
        if self._reading_headers and not self._refused and self._header_bytes > self.limits.max_header_bytes:
            self._refuse_header_size(f"more than {self._header_bytes} bytes")

    def _answer_invalid(self, reason: str) -> None:
        """uvicorn's answer to bytes that are not HTTP (a bare text 400, uncounted), as JSON with the reason."""
        if self._refused:
            return
        self._refused = True
        self._cancel_timers()
        self.refusals.count("invalid_http")
        self.transport.write(
            http_response(
                400,
                f"invalid HTTP request ({reason}); a URL must not contain spaces or control characters "
                "(percent-encode them)",
            )
        )
        self.transport.close()

    # ---- parser callbacks ---------------------------------------------------------------------

    def on_headers_complete(self) -> None:
        if self._refused:
            return
        size = len(self.url) + sum(len(n) + len(v) + 4 for n, v in self.headers) + _REQUEST_LINE_OVERHEAD
        if size > self.limits.max_header_bytes:
            self._refuse_header_size(f"{size} bytes")
            return
        self._reading_headers = False
        self._header_bytes = 0
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        super().on_headers_complete()
        # Until on_message_complete: a body is expected, and must keep coming.
        self._body_timer = self.loop.call_later(self.limits.body_timeout_s, self._body_timeout)

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._refused:
            return
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        self._reading_headers = True
        self._header_bytes = 0
        super().on_message_complete()

    # ---- refusals -----------------------------------------------------------------------------

    def _refuse_header_size(self, size: str) -> None:
        limit = self.limits.max_header_bytes
        self._refuse(431, "header_too_large", f"request line and headers are {size}, limit is max_header_bytes={limit}")

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self._refused or self.transport.is_closing():
            return
        if self.flow.read_paused:  # not the client's doing: uvicorn stopped reading (pipelining)
            self._header_timer = self.loop.call_later(self.limits.header_timeout_s, self._header_timeout)
            return
        if self._header_bytes == 0:  # not a byte of a request: an idle connection, nobody to answer
            self._refused = True
            self.transport.close()
            return
        timeout = self.limits.header_timeout_s
        self._refuse(
            408, "request_timeout", f"request headers not complete within header_timeout_s={timeout:g} seconds"
        )

    def _body_timeout(self) -> None:
        self._body_timer = None
        if self._refused or self.transport.is_closing():
            return
        if self.flow.read_paused:  # the app has not taken what came yet (flow control), not a stalled client
            self._body_timer = self.loop.call_later(self.limits.body_timeout_s, self._body_timeout)
            return
        timeout = self.limits.body_timeout_s
        self._refuse(
            408,
            "request_timeout",
            f"request body stalled: no bytes for body_timeout_s={timeout:g} seconds before it was complete",
        )

    def _refuse(self, status: int, reason: str, error: str) -> None:
        """Answer `status` (unless the app already started an answer) and close the connection."""
        self._refused = True
        self._cancel_timers()
        cycle = self.cycle
        answered = cycle is not None and not cycle.response_complete and cycle.response_started
        if cycle is not None and not cycle.response_complete:
            # The app (still waiting for the body) sees a disconnect and its answer goes nowhere.
            cycle.disconnected = True
            cycle.message_event.set()
        self.refusals.count(reason)
        if not answered and not self.transport.is_closing():
            self.transport.write(http_response(status, error))
        self.transport.close()

    def _cancel_timers(self) -> None:
        for timer in (self._header_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._header_timer = self._body_timer = None


def guarded_protocol(limits: HttpLimits, on_refusal: Callable[[str], None]) -> type[LimitedHttpToolsProtocol]:
    """The protocol class for uvicorn's `Config(http=...)`, with these limits and this refusal counter."""
    return type(
        "GuardedHttpToolsProtocol",
        (LimitedHttpToolsProtocol,),
        {"limits": limits, "refusals": RefusalCounter(on_refusal)},
    )
