"""A real OpenAI-compatible chat server on 127.0.0.1 that plays a script, for tests of LLM clients.

    with ScriptedLLMServer() as server:                    # or the `llm_server` fixture
        server.script("first answer", Fault.http(429, retry_after=1), Fault.empty())
        client = LLMClient("openai/test-model", api_base=server.api_base)

Each POST to /v1/chat/completions (or /chat/completions) takes the next scripted answer: a plain
string is the reply's text; a `Fault` is an HTTP error (with a message of the test's choosing), a
delay, a dropped connection, an empty reply, an answer dripped slowly, one cut off at max_tokens, a
stream kept alive with nothing in it, one JSON body though a stream was asked for, an error in the
middle of a stream (a model runner that crashed), a byte that is not UTF-8, a redirect, a body that
never ends, or, for a prompt and
max_tokens past a context size, the 400 that vLLM or llama.cpp sends (that answer stays next in the
script until a request fits).
Ollama's own API is spoken too (POST /api/chat, NDJSON streams, and /api/show), for LiteLLM's
`ollama_chat/` models: the same script, in Ollama's words.
With nothing left in the script the server answers HTTP 400, so a test that asks once too often fails
at once instead of retrying; a request for one token (max_tokens 1: a reachability check) is answered
"OK", streamed or whole as asked, without touching the script (or with the next Fault in `check_answers`). Streaming
requests get SSE chunks of a few characters each, a usage chunk when `stream_options.include_usage`
is set, then `data: [DONE]`. Usage counts words: prompt_tokens over all message contents,
completion_tokens over the answer. GET /v1/models lists the
one model `test-model`, unless the server was made with models=False (then it answers 501, as some
local servers do). Every chat request body is kept in `requests`, in arrival order; `disconnects`
counts answers the client stopped reading before their end.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

MODEL = "test-model"
CHAT_PATHS = ("/v1/chat/completions", "/chat/completions")
MODELS_PATHS = ("/v1/models", "/models")
OLLAMA_CHAT, OLLAMA_SHOW = "/api/chat", "/api/show"
NOT_UTF8 = "\udce9"  # the byte 0xE9 as Python's surrogateescape holds it in a str
NOT_UTF8_ESCAPED = json.dumps(NOT_UTF8).strip('"').encode()  # as JSON writes it
CHUNK_CHARS = 16  # chunks small enough that a short answer streams as several deltas (LiteLLM spends ~3 ms
DRIP_CHUNK_CHARS = 4  # on each, so not smaller); a dripped answer comes in the smallest ones


@dataclass(frozen=True)
class Fault:
    """A scripted answer other than plain text; build one with the class methods."""
    status: int = 200
    retry_after: float | None = None
    delay: float = 0.0
    drop: bool = False
    text: str = ""
    message: str = ""
    drip: float = 0.0                 # seconds between chunks
    finish_reason: str = "stop"
    chunk: int = CHUNK_CHARS          # characters per streamed chunk
    keep_alive: str = ""              # an SSE line sent every 0.2 s instead of an answer, until the client leaves
    whole: bool = False               # one JSON body even when the request asked for a stream
    stream_error: str = ""            # sent as an error event after the text, instead of the stream's end
    context: int = 0                  # tokens (words) of prompt + max_tokens past which the request is refused
    context_words: str = "vllm"       # whose words refuse it: "vllm" or "llamacpp"
    redirect: int = 0                 # an HTTP redirect status, to `text` as its Location
    endless: float | None = None      # seconds between the pieces of a body that never ends

    @classmethod
    def http(cls, status: int, retry_after: float | None = None, message: str = "") -> Fault:
        """An HTTP error with an OpenAI-style error body (429 may carry Retry-After)."""
        return cls(status=status, retry_after=retry_after, message=message)

    @classmethod
    def dripped(cls, text: str, every: float) -> Fault:
        """Answer `text` one small chunk every `every` seconds (a slow or stuck local server)."""
        return cls(text=text, drip=every, chunk=DRIP_CHUNK_CHARS)

    @classmethod
    def cut(cls, text: str) -> Fault:
        """Answer `text`, then say it stopped at max_tokens (finish_reason "length")."""
        return cls(text=text, finish_reason="length")

    @classmethod
    def slow(cls, seconds: float, text: str = "too late") -> Fault:
        """Answer `text`, but only after `seconds` (longer than the client's timeout, to provoke one)."""
        return cls(delay=seconds, text=text)

    @classmethod
    def kept_alive(cls, line: str = ": keep-alive") -> Fault:
        """Stream `line` (an SSE comment, or an event with an empty delta) forever and never an answer: a
        proxy waiting on a model that never finishes."""
        return cls(keep_alive=line)

    @classmethod
    def redirected(cls, status: int, location: str) -> Fault:
        """Redirect the request to `location` (a proxy sending http to https, a server that moved)."""
        return cls(redirect=status, text=location)

    @classmethod
    def endless_body(cls, every: float = 0.0) -> Fault:
        """One JSON body, streamed or not, that never ends: its start, then 64 KiB of spaces every `every`
        seconds until the client leaves."""
        return cls(endless=every)

    @classmethod
    def not_utf8(cls, text: str) -> Fault:
        """Stream `text` with the byte 0xE9 alone in its middle, which no UTF-8 decoder takes."""
        middle = len(text) // 2
        return cls(text=text[:middle] + NOT_UTF8 + text[middle:])

    @classmethod
    def unstreamed(cls, text: str) -> Fault:
        """Answer `text` as one JSON completion, though the request asked for a stream."""
        return cls(text=text, whole=True)

    @classmethod
    def broken(cls, text: str, error: str) -> Fault:
        """Stream `text`, then an error event where the stream's end should be (a crashed model runner)."""
        return cls(text=text, stream_error=error)

    @classmethod
    def fits(cls, context: int, text: str, words: str = "vllm") -> Fault:
        """Answer `text` to the first request whose prompt words plus max_tokens fit in `context`; refuse each
        one before it as vLLM (or llama.cpp) refuses a request past the model's context."""
        return cls(text=text, context=context, context_words=words)

    @classmethod
    def dropped(cls) -> Fault:
        """Close the connection without sending a byte of response."""
        return cls(drop=True)

    @classmethod
    def empty(cls) -> Fault:
        """A well-formed reply whose content is empty."""
        return cls()


Answer = str | Fault


def _words(text: str | None) -> int:
    return len(text.split()) if text else 0


def _prompt_tokens(messages: list[dict]) -> int:
    return sum(_words(m.get("content")) for m in messages if isinstance(m.get("content"), str))


class ScriptedLLMServer:
    """The server; start() or `with` runs it in a daemon thread on a free port."""

    def __init__(self, models: bool = True) -> None:
        self.requests: list[dict] = []  # chat request bodies, in arrival order
        self.models_requests = 0
        self.models = models
        self.disconnects = 0
        self.check_answers: deque[Fault] = deque()  # the next reachability checks' answers, in order (else "OK")
        self._script: deque[Fault] = deque()
        # what to answer once the script is used up: a function of the request body (None: an error)
        self.responder: Callable[[dict], str] | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()  # wakes handlers that sleep through a scripted delay
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_class(self))
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def script(self, *answers: Answer) -> None:
        """Queue answers for the next chat requests, in order."""
        # anything else would break the handler mid-answer, and look to the client like a server fault it
        # may well be meant to survive: a test's mistake passing as the client's success
        assert all(isinstance(a, str | Fault) for a in answers), f"answers are str or Fault, got {answers!r}"
        with self._lock:
            self._script.extend(Fault(text=a) if isinstance(a, str) else a for a in answers)

    @property
    def remaining(self) -> int:
        return len(self._script)

    def start(self) -> ScriptedLLMServer:
        # a short poll interval makes stop() quick (shutdown waits for the next poll)
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02},
                                        name="llm-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> ScriptedLLMServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _next(self, body: dict) -> Fault | None:
        with self._lock:
            self.requests.append(body)
            if self._script:
                return self._script.popleft()
            return Fault(text=self.responder(body)) if self.responder is not None else None

    def _again(self, answer: Fault) -> None:
        """`answer` is the next one again (a request it was not for)."""
        with self._lock:
            self._script.appendleft(answer)

    def _wait(self, seconds: float) -> bool:
        """Sleep through a scripted delay; False when the server is stopping meanwhile."""
        return not self._stopping.wait(seconds)


def _handler_class(server: ScriptedLLMServer) -> type[BaseHTTPRequestHandler]:
    class Handler(_Handler):
        scripted = server
    return Handler


class _Handler(BaseHTTPRequestHandler):
    scripted: ScriptedLLMServer

    def log_message(self, format: str, *args) -> None:
        pass  # keep test output clean

    def do_GET(self) -> None:
        if self.path.rstrip("/") not in MODELS_PATHS:
            return self._error(404, f"no route {self.path}")
        if not self.scripted.models:
            return self._error(501, "this server lists no models")
        self.scripted.models_requests += 1
        self._json(200, {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "test"}]})

    def do_POST(self) -> None:
        path = self.path.rstrip("/")
        if path == OLLAMA_SHOW:  # LiteLLM asks Ollama about the model before it prices a call
            return self._json(200, {"details": {"family": "test", "parameter_size": "1B"}, "model_info": {},
                                    "capabilities": ["completion"]})
        if path not in (*CHAT_PATHS, OLLAMA_CHAT):
            return self._error(404, f"no route {self.path}")
        ollama = path == OLLAMA_CHAT
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        max_tokens = body.get("max_tokens", (body.get("options") or {}).get("num_predict"))
        if max_tokens == 1:  # a reachability check: answered, the script untouched
            checks = self.scripted.check_answers
            answer = checks.popleft() if checks else Fault(text="OK")
        else:
            next_answer = self.scripted._next(body)
            if next_answer is None:
                return self._error(400, "the test server's script is exhausted")
            answer = next_answer
        prompt_tokens = _prompt_tokens(body.get("messages", []))
        if answer.context and prompt_tokens + (max_tokens or 0) > answer.context:
            self.scripted._again(answer)
            return self._error(400, _too_long(answer, prompt_tokens, max_tokens or 0))
        if answer.delay and not self.scripted._wait(answer.delay):
            return
        if answer.drop:
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if answer.status != 200:
            headers = {"Retry-After": f"{answer.retry_after:g}"} if answer.retry_after is not None else {}
            return self._error(answer.status, answer.message or f"scripted HTTP {answer.status}", headers)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": _words(answer.text)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        try:
            if answer.redirect:
                return self._json(answer.redirect, {}, {"Location": answer.text})
            if answer.endless is not None:
                return self._endless(answer.endless)
            if ollama:
                self._ollama(answer, usage, streamed=body.get("stream", True))
            elif body.get("stream") and not answer.whole:
                include_usage = (body.get("stream_options") or {}).get("include_usage")
                self._stream(answer, usage if include_usage else None)
            else:
                self._json(200, _completion(answer.text, usage, answer.finish_reason))
        except (BrokenPipeError, ConnectionResetError):
            self.scripted.disconnects += 1  # the client gave up (e.g. its deadline came first)

    def _ollama(self, answer: Fault, usage: dict, streamed: bool) -> None:
        """Ollama's answer: NDJSON lines of message pieces, then a last line with done and token counts."""
        counts = (usage["prompt_tokens"], usage["completion_tokens"])
        if not streamed:
            return self._json(200, _ollama_line(answer.text, done=True, usage=counts))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.end_headers()
        for i in range(0, len(answer.text), answer.chunk):
            if answer.drip and not self.scripted._wait(answer.drip):
                return
            self._line(_ollama_line(answer.text[i:i + answer.chunk]))
        self._line({"error": answer.stream_error} if answer.stream_error else _ollama_line("", done=True, usage=counts))

    def _line(self, payload: dict) -> None:
        self.wfile.write(json.dumps(payload).encode() + b"\n")
        self.wfile.flush()

    def _stream(self, answer: Fault, usage: dict | None) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()  # HTTP/1.0: the stream ends when the connection closes
        text = answer.text
        pieces = [text[i:i + answer.chunk] for i in range(0, len(text), answer.chunk)]
        self._event(_chunk({"role": "assistant", "content": ""}, None))
        while answer.keep_alive and self.scripted._wait(0.2):
            self.wfile.write(answer.keep_alive.encode() + b"\n\n")
            self.wfile.flush()
        for piece in pieces:
            if answer.drip and not self.scripted._wait(answer.drip):
                return
            self._event(_chunk({"content": piece}, None))
        if answer.stream_error:  # as llama.cpp and vLLM report a failure after the headers went out
            return self._event({"error": {"message": answer.stream_error, "type": "server_error", "code": 500}})
        self._event(_chunk({}, answer.finish_reason))
        if usage is not None:
            self._event({**_chunk({}, None), "choices": [], "usage": usage})
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()

    def _endless(self, every: float) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()  # HTTP/1.0: the body ends when the connection closes, which the server never does
        self.wfile.write(b'{"id": "chatcmpl-test", "choices": [')
        while self.scripted._wait(every):
            self.wfile.write(b" " * 65536)
            self.wfile.flush()

    def _event(self, payload: dict) -> None:
        data = json.dumps(payload).encode().replace(NOT_UTF8_ESCAPED, b"\xe9")  # NOT_UTF8 as its byte
        self.wfile.write(b"data: " + data + b"\n\n")
        self.wfile.flush()

    def _json(self, status: int, payload: dict, headers: dict | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, headers: dict | None = None) -> None:
        kind = "invalid_request_error" if status < 500 else "server_error"
        self._json(status, {"error": {"message": message, "type": kind, "code": status}}, headers)


def _completion(text: str, usage: dict, finish_reason: str = "stop") -> dict:
    return {"id": "chatcmpl-test", "object": "chat.completion", "created": int(time.time()), "model": MODEL,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": finish_reason}],
            "usage": usage}


def _ollama_line(text: str, done: bool = False, usage: tuple[int, int] | None = None) -> dict:
    line = {"model": MODEL, "created_at": "2026-01-01T00:00:00Z", "message": {"role": "assistant", "content": text},
            "done": done}
    if done:
        line["done_reason"] = "stop"
    if usage is not None:
        line.update(prompt_eval_count=usage[0], eval_count=usage[1])
    return line


def _too_long(answer: Fault, prompt_tokens: int, max_tokens: int) -> str:
    """The refusal of a request past the context, in the words of the server the answer imitates."""
    if answer.context_words == "llamacpp":
        return "the request exceeds the available context size, try increasing it"
    return (f"This model's maximum context length is {answer.context} tokens. However, you requested "
            f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the messages, {max_tokens} in the completion). "
            "Please reduce the length of the messages or completion.")


def _chunk(delta: dict, finish_reason: str | None) -> dict:
    return {"id": "chatcmpl-test", "object": "chat.completion.chunk", "created": int(time.time()), "model": MODEL,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}


@pytest.fixture
def llm_server():
    """A running ScriptedLLMServer, stopped after the test."""
    with ScriptedLLMServer() as server:
        yield server
