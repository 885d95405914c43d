"""What a call of the LLM client receives, bounded where it arrives: in httpx's transport.

LiteLLM reads an unstreamed answer whole inside `completion()`, and follows redirects, before the client
sees any of it. So a server that sends an endless body would fill memory, and keep a reader that its call
abandoned at the deadline busy for as long as it sends; and a redirect would send the prompt to another
address (307/308) or turn it into a GET that fails with a misleading "Method Not Allowed" (301/302).

`watching(call)` marks the current thread as reading `call`. For such a thread only, every response that
httpx's HTTPTransport returns (whatever client LiteLLM made, through whichever proxy) has its body read
through a guard that stops at the call's abandonment or past MAX_RESPONSE_BYTES, and a redirect is not
followed. Either sets `call.problem`, which the client reports instead of the transport error that LiteLLM
and the SDK wrap it in ("Connection error."). Threads that are not watching are untouched.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Protocol

import httpx

MAX_RESPONSE_BYTES = 64 * 2**20  # far above any answer (MAX_ANSWER_CHARS streamed as ~200-byte events), and bounded
REDIRECTS = (301, 302, 303, 307, 308)


class Watched(Protocol):
    abandoned: bool          # set by the caller's thread when it gave up on the call
    problem: str | None      # set here: what was wrong with the server's response


Handler = Callable[[httpx.HTTPTransport, httpx.Request], httpx.Response]
_reading = threading.local()
_installing = threading.Lock()


@contextlib.contextmanager
def watching(call: Watched) -> Iterator[None]:
    _install()
    _reading.call = call
    try:
        yield
    finally:
        _reading.call = None


class _GuardedBody(httpx.SyncByteStream):
    def __init__(self, body: httpx.SyncByteStream, call: Watched):
        self.body = body
        self.call = call

    def __iter__(self) -> Iterator[bytes]:
        received = 0
        for chunk in self.body:
            received += len(chunk)
            if self.call.abandoned:
                raise httpx.ReadError("the call was abandoned at its deadline")  # closes the connection
            if received > MAX_RESPONSE_BYTES:
                self.call.problem = (f"the server's response passed {MAX_RESPONSE_BYTES // 2**20} MiB without "
                                     "ending; check the server")
                raise httpx.ReadError(self.call.problem)
            yield chunk

    def close(self) -> None:
        self.body.close()


def _install() -> None:
    """Wrap HTTPTransport.handle_request once, for the threads that are watching a call."""
    with _installing:
        original = httpx.HTTPTransport.handle_request
        if not getattr(original, "guarded", False):
            httpx.HTTPTransport.handle_request = _guarded(original)  # type: ignore[method-assign,assignment]


def _guarded(original: Handler) -> Handler:
    def handle_request(transport: httpx.HTTPTransport, request: httpx.Request) -> httpx.Response:
        response = original(transport, request)
        call: Watched | None = getattr(_reading, "call", None)
        if call is None:
            return response
        if response.status_code in REDIRECTS:
            response.close()
            where = response.headers.get("location", "another address")
            call.problem = (f"the server redirected the request (HTTP {response.status_code}) to {where}; "
                            "point --api-base at where it redirects")
            raise httpx.RemoteProtocolError(call.problem, request=request)
        assert isinstance(response.stream, httpx.SyncByteStream)
        response.stream = _GuardedBody(response.stream, call)
        return response

    handle_request.guarded = True  # type: ignore[attr-defined]
    return handle_request
