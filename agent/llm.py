"""The one LLM client every LLM method uses: LiteLLM, streamed, retried by us, logged, and replayable.

* Every call streams (`stream_path` holds the text of the answer so far, for a live view) and asks
  for usage in the last chunk; tokens come from the server, cost from LiteLLM's offline price map
  (0.0 for a model it does not price, such as a local one). A stream that holds nothing from the
  server is asked again unstreamed; a server whose whole answer then has text (one that ignores
  `stream` and answers with one JSON body) is asked without streaming from then on.
* One deadline for the whole call (`timeout`): every attempt, every backoff and the streaming of the
  answer fit in it; a server that drips an answer slowly, or keeps the stream alive without answering,
  is cut off at the deadline, and the request is closed so the server can stop generating. Retries are
  ours (LiteLLM's are off): rate limits, timeouts, lost connections and 5xx errors are retried with
  exponential backoff (honouring Retry-After) while time is left; anything else fails at once. A call
  that fails for good raises LLMError, whose message is one line. What arrives is bounded where it
  arrives (agent.llm_transport): no response is read past 64 MiB or past its call's abandonment, and no
  redirect is followed.
* An answer is at most MAX_ANSWER_CHARS long; one cut off there or at max_tokens says so
  (`LLMReply.cut_off`), and the method treats it as an unusable answer, not as a failed call.
* Secrets (the values of environment variables named like keys, tokens or passwords, and strings that
  look like API keys) are redacted from every error, log line and answer before they go anywhere.
* Each call appends one JSON line to `log_path` (the run's llm.jsonl) and fsyncs it. Calls are
  numbered through the run, so a resumed run continues the numbering and the usage totals.
* `replay_from` (another run's llm.jsonl, or its directory) answers call N with that log's line N,
  after checking that it was made for the same purpose and trial with the same prompt; no network is
  touched. A replay that leaves its recording raises ReplayDiverged, which stops the run.

extract_json and extract_diff read what a model wrote; both skip a reasoning block (`<think>…</think>`)
and forgive prose and code fences around the payload, and raise ValueError with a short reason an LLM
can act on; neither can be made to recurse deeply or to take more than linear time.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TextIO, TypedDict

from agent.errors import ArenaError
from agent.jsonl import JsonObject, read_jsonl
from agent.llm_transport import watching
from agent.patches import ends_mid_hunk

Message = dict[str, str]     # one chat message: {"role": "system" | "user" | "assistant", "content": text}
LOG_NAME = "llm.jsonl"
BACKOFF_CAP_S = 30.0
MAX_ANSWER_CHARS = 200_000   # ten times the template's train.py: room for any diff, no room for a flood
PROBE: list[Message] = [{"role": "user", "content": "Say OK."}]  # the reachability check's one-token question
MIN_ATTEMPT_S = 1.0          # a retry that would have less time than this left is not made
OLLAMA_PREFIXES = ("ollama/", "ollama_chat/")
MIN_OLLAMA_CONTEXT = 8192
CHARS_PER_TOKEN = 4
MIN_ANSWER_TOKENS = 512      # a prompt past the model's context is retried with max_tokens halved down to this
MAX_JSON_DEPTH = 32
MAX_RELAXED_CHARS = 20_000  # of an answer read leniently from one brace on: a config is far shorter
MAX_JSON_TRIES = 50          # JSON objects tried in one answer, so a hostile answer cannot take quadratic time
REDACTED = "[redacted]"
_SECRET_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIALS?)$", re.IGNORECASE)
_SECRET_SHAPE = re.compile(r"\b(sk-[A-Za-z0-9_\-]{8,}|sk_[A-Za-z0-9_\-]{8,}|AIza[0-9A-Za-z_\-]{20,}|"
                           r"hf_[A-Za-z0-9]{20,}|"
                           r"gh[pousr]_[A-Za-z0-9]{20,}|xox[abpr]-[A-Za-z0-9\-]{10,})|(?i:bearer\s+)[A-Za-z0-9._\-]{8,}")
# reading answers: a ``` fenced block, the first line of a diff, markdown around a description line
_FENCED_BLOCK = re.compile(r"^```[^\n]*\n(.*?)^```", re.DOTALL | re.MULTILINE)
_DIFF_START = re.compile(r"^(diff --git |--- |@@ )", re.MULTILINE)
_DECORATION = re.compile(r"^[#*>\s]*(description\s*:)?[*\s]*", re.IGNORECASE)
_LABEL = re.compile(r"^[#*>\s]*description\s*:[*\s]*\S", re.IGNORECASE)
# (no two runs of blanks around an optional part: on a line of blanks that would backtrack quadratically)
_OPENER = re.compile(r"^(sure|certainly|of course|okay|ok|absolutely|alright|great)\b[!.,]*"
                     r"(\s*(here('s| is| are)|i('ll| will| can))\s+((is|are|propose|suggest|try)\s+)?"
                     r"((my|the|a|an|one)\s+)?"
                     r"(idea|change|diff|proposal|patch|suggestion|modification|edit|update|plan)s?[.:!?]?)?\s*$",
                     re.IGNORECASE)
_REASONING_START = re.compile(r"\s*<(think|thinking|reasoning)>", re.IGNORECASE)  # matched at a block's start
_REASONING_END = re.compile(r"</(think|thinking|reasoning)>", re.IGNORECASE)
_FENCE_LINE = re.compile(r"^```", re.MULTILINE)
# A string (kept whole, so what looks like a comment or a comma inside it stays), a // comment, a comma before
# a closing bracket, or a small power (2**12); a string left open runs to the end, as a reader of it would take it.
_JSON_NOISE = re.compile(r'"(?:[^"\\]|\\.)*"?|//[^\n]*|,(?=\s*[}\]])|(?<![\d.])(\d{1,2})\s*\*\*\s*(\d{1,2})(?![\d.])',
                         re.DOTALL)


class LLMError(ArenaError):
    """An LLM call that failed for good: after the last retry, or at once when retrying cannot help.
    The message is one line. `refused`: the server refused the key or the model (401, 403, 404), which
    no later call will change. `too_long`: the prompt does not fit the model's context, even with the
    fewest answer tokens the client asks for."""

    def __init__(self, message: str, refused: bool = False, too_long: bool = False):
        super().__init__(message)
        self.refused = refused
        self.too_long = too_long


class ModelUnavailable(ArenaError):
    """The model keeps failing: the run stops with this one line rather than record trials it did not make."""

    def __init__(self, error: LLMError, trial: int):
        super().__init__(f"the model failed ({error}); nothing was recorded for trial {trial}: check the server, "
                         "--model and --api-base, then run the same command again to resume")


class ReplayDiverged(ArenaError):
    """A replayed run asked for something its recording does not hold: the run stops (a method never
    treats this as a bad answer)."""


def secret_values() -> list[str]:
    """The values of environment variables named like secrets, longest first."""
    values = {v for k, v in os.environ.items() if _SECRET_NAME.search(k) and len(v) >= 8}
    return sorted(values, key=len, reverse=True)


def redact(text: str) -> str:
    """`text` with every secret this process knows of, and anything shaped like an API key, replaced."""
    for value in secret_values():
        text = text.replace(value, REDACTED)
    return _SECRET_SHAPE.sub(REDACTED, text)


@dataclass
class LLMReply:
    text: str               # "" when the model answered nothing; callers decide what that means
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    latency_s: float        # the whole call, retries and backoff included
    attempts: int
    model: str
    # "length": cut off at max_tokens; "size": cut off at MAX_ANSWER_CHARS; "deadline": still coming at the timeout
    finish_reason: str | None = None
    max_tokens: int | None = None  # what the call asked for (less than --max-tokens when the context was short)

    def cut_off(self) -> str | None:
        """Why the answer is incomplete, in words a model can act on; None when it is whole."""
        if self.finish_reason == "length":
            return (f"the answer was cut off at {self.max_tokens} tokens before it was complete; answer more "
                    "briefly")
        if self.finish_reason == "size":
            return f"the answer passed {MAX_ANSWER_CHARS:,} characters and was cut off; answer with one short proposal"
        if self.finish_reason == "deadline":
            return ("the answer was still coming when the call's time (--llm-timeout) ran out; answer more briefly, "
                    "with less reasoning")
        return None


class CallResult(TypedDict):
    """The outcome part of a log line, shared by live and replayed calls."""
    response: str | None    # None when the call failed
    error: str | None       # one line; None when the call succeeded
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    latency_s: float
    attempts: int
    finish_reason: str | None
    refused: bool           # the key or the model was refused (LLMError.refused)
    too_long: bool          # the prompt did not fit the model's context (LLMError.too_long)
    max_tokens: int | None  # the answer length asked for on the last attempt
    usage_estimated: bool   # no token counts came with the answer (cut off, or none sent): ours, 4 characters a token


class UsageTotals(TypedDict):
    calls: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    latency_s: float


def _litellm() -> ModuleType:
    """LiteLLM, imported on first use: the import takes seconds, which commands that never call a
    model should not pay. The local price map keeps the import from fetching one over the network."""
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    # LiteLLM ends a stream that repeats one chunk 100 times with a server error, which we would retry and
    # then take for an outage; a model caught in a loop gave an unusable answer, which the size limit ends.
    os.environ.setdefault("REPEATED_STREAMING_CHUNK_LIMIT", str(MAX_ANSWER_CHARS))
    import litellm

    litellm.suppress_debug_info = True
    return litellm


class LLMClient:
    def __init__(self, model: str, api_base: str | None = None, temperature: float = 0.7, max_tokens: int = 4096,
                 timeout: float = 120.0, retries: int = 3, log_path: str | Path | None = None,
                 stream_path: str | Path | None = None, replay_from: str | Path | None = None, *,
                 backoff_base: float = 1.0, sleep: Callable[[float], None] = time.sleep):
        self.model = model
        self.api_base = api_base
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.timeout = timeout
        self.retries = retries
        self.log_path = Path(log_path) if log_path is not None else None
        self.stream_path = Path(stream_path) if stream_path is not None else None
        self.streams = True  # until a server is seen to answer a streamed request with one JSON body
        self.backoff_base = backoff_base
        self._sleep = sleep
        self._totals: UsageTotals = {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0,
                                     "latency_s": 0.0}
        logged = self._open_log()
        for record in logged:
            self._count(record)
        # the last answer a killed arena logged may not have reached its journal: the same request asks for it
        self._unclaimed = logged[-1] if logged and logged[-1]["error"] is None else None
        self._replay = _load_replay(Path(replay_from)) if replay_from is not None else None

    # ------------------------------------------------------------------------ public

    def complete(self, messages: list[Message], purpose: str, trial: int | None = None) -> LLMReply:
        """The model's answer to `messages`; raises LLMError. `purpose` and `trial` label the log line."""
        call = self._totals["calls"]
        unclaimed, self._unclaimed = self._unclaimed, None
        if unclaimed is not None and (unclaimed["purpose"], unclaimed["trial"]) == (purpose, trial) \
                and unclaimed["messages"] == json.loads(redact(json.dumps(messages))):
            result = _logged_result(unclaimed)  # logged and counted already: asked and paid for once
            self._write_stream(result["response"] or "")
        else:
            if self._replay is not None:
                result = self._replayed(self._replay, call, purpose, trial, messages)
                self._write_stream(result["response"] or "")
            else:
                result = self._live(messages)
            self._append({"trial": trial, "purpose": purpose, "call": call, "model": self.model,
                          "messages": messages, **result, "replayed": self._replay is not None, "time": time.time()})
        if result["error"] is not None:
            raise LLMError(result["error"], result["refused"], result["too_long"])
        # every call that did not fail has a response; only a hand-edited recording could lack one
        return LLMReply(result["response"] or "", result["prompt_tokens"], result["completion_tokens"],
                        result["cost_usd"], result["latency_s"], result["attempts"], self.model,
                        result["finish_reason"], result["max_tokens"] or self.max_tokens)

    def check_reachable(self) -> bool:
        """Fail fast, before any trial, when the model cannot answer; raises ArenaError. The test is the
        real thing, a one-token chat call (a server may answer chat without listing its models), asked as
        answers will be (streamed, then whole from a server that does not stream) and bounded alike. A rate
        limit, or a server still loading its model (a 503, or a request held until the model is loaded), is
        waited for, up to --llm-timeout; nothing else. True when the model answered, False for a replay,
        which never touches the network."""
        if self._replay is not None:
            return False
        _litellm()  # imported before the clock starts, as for a call
        deadline = time.monotonic() + self.timeout
        attempt, streaming = 0, self.streams
        while True:
            attempt += 1
            try:
                self._stream_once(PROBE, deadline, streaming, 1, shown=False)
                return True
            except NotStreamed:
                streaming, attempt = False, attempt - 1
                continue
            except CallDeadline as late:
                if late.text:
                    return True  # it answers, slowly
                error: Exception = late
            except Exception as failure:  # noqa: BLE001 - whatever the cause, the user gets one line that says what to do
                error = failure
            wait = self._backoff(attempt, error)
            if _busy(error) and time.monotonic() + wait < deadline - MIN_ATTEMPT_S:
                self._sleep(wait)
                continue
            where = self.api_base or "its provider's endpoint"
            raise ArenaError(f"cannot reach model {self.model} at {where}: {_one_line(error)}; "
                             "start the server or check --model/--api-base") from None

    def used_through(self, calls: int | None) -> None:
        """The method's journal was written when `calls` calls were logged: their answers were used (a repair asks
        the same as the attempt it repairs when a model repeats itself), so none is handed back as unclaimed.
        None: a journal from before this was recorded."""
        if calls is not None and self._unclaimed is not None and self._unclaimed["call"] < calls:
            self._unclaimed = None

    def usage_totals(self) -> UsageTotals:
        """{"calls", "prompt_tokens", "completion_tokens", "cost_usd", "latency_s"} over the whole run."""
        return self._totals.copy()

    # ------------------------------------------------------------------------ calling the model

    def _live(self, messages: list[Message]) -> CallResult:
        """One call with retries, all within the call's deadline, as the result part of a log line.

        Rate limits and a server loading its model (429, 503) are waited for until the deadline; other
        transient failures are retried --llm-retries times. A prompt past the model's context is asked again
        with max_tokens halved, down to MIN_ANSWER_TOKENS, without counting as an attempt. An answer still
        coming at the deadline is returned as far as it came, marked "deadline" (an unusable answer, not an
        outage); a server that said nothing by then has failed."""
        _litellm()  # the first import takes seconds; it is not the model's latency
        start = time.monotonic()
        deadline = start + self.timeout
        attempt, streaming, max_tokens = 0, self.streams, self.max_tokens
        while True:
            attempt += 1
            try:
                text, usage, finish = self._stream_once(messages, deadline, streaming, max_tokens)
            except NotStreamed:  # asked again unstreamed, which is not another attempt
                streaming, attempt = False, attempt - 1
                continue
            except CallDeadline as late:
                if not late.text:
                    plural = "s" if attempt > 1 else ""
                    return _result(None, f"{self.model} failed after {attempt} attempt{plural}: {late}", 0, 0, 0.0,
                                   time.monotonic() - start, attempt, max_tokens=max_tokens)
                text, usage, finish = late.text, None, "deadline"
            except Exception as error:  # noqa: BLE001 - LiteLLM raises one of its exceptions for any failed request
                if _too_long(error) and max_tokens > MIN_ANSWER_TOKENS:
                    max_tokens, attempt = max(max_tokens // 2, MIN_ANSWER_TOKENS), attempt - 1
                    continue
                wait = self._backoff(attempt, error)
                if ((attempt > self.retries and not _busy(error)) or not _retryable(error)
                        or time.monotonic() + wait > deadline - MIN_ATTEMPT_S):
                    plural = "s" if attempt > 1 else ""
                    message = f"{self.model} failed after {attempt} attempt{plural}: {_one_line(error)}"
                    too_long = _too_long(error)
                    if too_long:
                        message += (f"; the prompt does not fit the model's context even with --max-tokens "
                                    f"{max_tokens}: serve the model with a longer context (llama-server -c, "
                                    "Ollama num_ctx, vLLM --max-model-len)")
                    return _result(None, message, 0, 0, 0.0, time.monotonic() - start, attempt,
                                   refused=_refused(error), too_long=too_long, max_tokens=max_tokens)
                self._sleep(wait)
                continue
            if not streaming and self.streams and text:
                self.streams = False  # its whole answer had what its stream lacked: ask it so from now on
            counted = _token_count(usage, "prompt_tokens"), _token_count(usage, "completion_tokens")
            prompt_tokens = counted[0] or _estimate(json.dumps(messages))
            completion_tokens = counted[1] or _estimate(text)
            return _result(text, None, prompt_tokens, completion_tokens, self._cost(prompt_tokens, completion_tokens),
                           time.monotonic() - start, attempt, finish, max_tokens=max_tokens,
                           usage_estimated=not all(counted))

    def _stream_once(self, messages: list[Message], deadline: float, streaming: bool, max_tokens: int,
                     shown: bool = True) -> tuple[str, object, str | None]:
        """One request: the answer's text (written to the stream file as it arrives, when `shown`), its usage and why it
        ended ("size" when it passed MAX_ANSWER_CHARS: a model caught in a loop); raises CallDeadline past
        the deadline, NotStreamed when a stream held nothing from the server.

        The request runs in a thread of its own and this one waits for it only until the deadline: a
        stream can keep a reader busy without giving it anything to check a clock between (SSE comment
        keep-alives, chunks with empty deltas, an event dripped byte by byte), and each read then comes in
        well within the socket's timeout. When the wait ends early (the deadline, Ctrl-C, SIGTERM) a
        response that has begun is closed under the reader, so the server stops generating for nobody;
        the reader ends at its next read and writes nothing more. A request still waiting for its
        response's headers is left to the socket's own timeout (what was left of the deadline when it
        was sent), in the background."""
        call = _Call()
        reader = threading.Thread(target=self._read_answer, args=(messages, deadline, streaming, max_tokens, shown,
                                                                  call),
                                  name="llm-call", daemon=True)
        reader.start()
        try:
            finished = call.done.wait(max(deadline - time.monotonic(), 0.0))
        finally:
            if not call.done.is_set():
                call.abandoned = True
                _close(call.response)
        text = redact(whole_characters("".join(call.pieces))[:MAX_ANSWER_CHARS])
        if not finished:
            raise CallDeadline(f"no complete answer within --llm-timeout {self.timeout:g} s", text)
        if call.error is not None:
            raise call.error
        return text, call.usage, call.finish

    def _read_answer(self, messages: list[Message], deadline: float, streaming: bool, max_tokens: int, shown: bool,
                     call: _Call) -> None:
        """The reader's half of _stream_once: fills `call` and sets call.done, whatever happens."""
        try:
            with watching(call):
                self._receive(messages, deadline, streaming, max_tokens, shown, call)
        except BaseException as error:  # noqa: BLE001 - handed to the waiting thread, which raises it
            call.error = ServerProblem(call.problem) if call.problem else error
        finally:
            _close(call.response)
            call.done.set()

    def _receive(self, messages: list[Message], deadline: float, streaming: bool, max_tokens: int, shown: bool,
                 call: _Call) -> None:
        # drop_params: a model that takes no temperature (say) gets the request without it, not a 400
        call.response = _litellm().completion(
            model=self.model, messages=messages, api_base=self.api_base, api_key=self._api_key(),
            temperature=self.temperature, max_tokens=max_tokens,
            timeout=max(deadline - time.monotonic(), 0.1), num_retries=0, stream=streaming,
            **({"stream_options": {"include_usage": True}} if streaming else {}),
            **self._context_for(messages, max_tokens), drop_params=True)
        if call.abandoned:
            return
        # truncated: it shows this attempt only; a lone surrogate half is shown as "?", never a failure
        shown_at = self.stream_path if shown and self.stream_path is not None else os.devnull
        with open(shown_at, "w", encoding="utf-8", errors="replace") as file:
            live = _LiveText(file)
            try:
                (_read_stream if streaming else _read_whole)(call, live)
            except NotStreamed:
                raise
            except Exception as error:
                if not call.pieces:  # some providers send the request at the first read: its own error
                    raise
                raise BrokenStream(_one_line(error)) from error  # the answer had begun, then broke off
            finally:
                live.close()

    def _context_for(self, messages: list[Message], max_tokens: int) -> dict[str, int]:
        """Ollama's context size for this call (num_ctx), which it otherwise keeps at its default of 2,048 or
        4,096 tokens and fills by dropping the start of the prompt, silently. A power of two that holds the
        prompt (at a conservative 3 characters a token) and the answer, so that it changes, and Ollama reloads
        the model, only when the prompt doubles. Other servers size the context themselves."""
        if not self.model.startswith(OLLAMA_PREFIXES):
            return {}
        needed = sum(len(message["content"]) for message in messages) // 3 + max_tokens
        return {"num_ctx": max(MIN_OLLAMA_CONTEXT, 1 << (needed - 1).bit_length())}

    def _api_key(self) -> str | None:
        # Local OpenAI-compatible servers ignore the key, but the OpenAI client refuses to send none.
        if self.api_base and self.model.startswith("openai/") and not os.environ.get("OPENAI_API_KEY"):
            return "no-key"
        return None  # LiteLLM reads the provider's usual environment variable

    def _backoff(self, attempt: int, error: Exception) -> float:
        delay = max(self.backoff_base * 2.0 ** (attempt - 1), _retry_after(error))
        return min(delay, BACKOFF_CAP_S)

    def _cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        litellm = _litellm()
        try:
            prompt_cost, completion_cost = litellm.cost_per_token(
                model=self.model, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
            return float((prompt_cost or 0.0) + (completion_cost or 0.0))
        except Exception:  # noqa: BLE001 - LiteLLM has no price for this model (a local one): it is free,
            litellm.register_model({self.model: {  # and registered so that LiteLLM's bookkeeping stops failing on it
                "input_cost_per_token": 0.0, "output_cost_per_token": 0.0, "cache_creation_input_token_cost": 0.0,
                "cache_read_input_token_cost": 0.0, "mode": "chat"}})
            return 0.0

    # ------------------------------------------------------------------------ replay, stream file and log

    def _replayed(self, replay: list[JsonObject], call: int, purpose: str, trial: int | None,
                  messages: list[Message]) -> CallResult:
        where = f"replay diverged at call {call} ({purpose!r} for trial {trial})"
        if call >= len(replay):
            raise ReplayDiverged(f"{where}: the recording holds only {len(replay)} calls; replay a run "
                                 "made with the same settings and arena version")
        recorded = replay[call]
        if (recorded["purpose"], recorded["trial"]) != (purpose, trial):
            raise ReplayDiverged(f"{where}: the recording made {recorded['purpose']!r} for trial {recorded['trial']} "
                                 "there; replay a run made with the same settings and arena version")
        if recorded["messages"] != messages:
            raise ReplayDiverged(f"{where}: {_first_difference(recorded['messages'], messages)}; replay a run "
                                 "made with the same settings and arena version")
        return _logged_result(recorded)

    def _write_stream(self, text: str) -> None:
        if self.stream_path is not None:
            self.stream_path.write_text(text)

    def _open_log(self) -> list[JsonObject]:
        """The calls already in this run's log (a resumed run); a line torn by a kill is cut off."""
        if self.log_path is None or not self.log_path.exists():
            return []
        return read_jsonl(self.log_path, "the LLM log", cut_torn=True)

    def _append(self, record: JsonObject) -> None:
        self._count(record)
        if self.log_path is None:
            return
        with open(self.log_path, "a") as f:
            f.write(redact(json.dumps(record)) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def _count(self, record: JsonObject) -> None:
        totals = self._totals
        totals["calls"] += 1
        totals["prompt_tokens"] += record["prompt_tokens"]
        totals["completion_tokens"] += record["completion_tokens"]
        totals["cost_usd"] += record["cost_usd"]
        totals["latency_s"] += record["latency_s"]


class CallDeadline(Exception):
    """The call's deadline passed before the answer was complete; `text` is what had come of it."""

    def __init__(self, message: str, text: str):
        super().__init__(message)
        self.text = text


class BrokenStream(Exception):
    """The server had begun its answer, then failed (a crashed model runner, a dropped connection, an error
    event in the stream): transient, so the call is retried, whatever status the failure carried."""


class ServerProblem(Exception):
    """The server's response could not be taken (an endless body, a redirect; agent.llm_transport): the same
    request would meet it again, so the call fails at once."""


class NotStreamed(Exception):
    """A streamed request got back nothing from the server, not even the role of the answer: perhaps a
    server that ignores `stream` and answers with one JSON body, which the stream reader cannot see. The
    client asks it again without streaming."""


@dataclass
class _Call:
    """One request, shared by the thread that reads it and the thread that waits for it."""
    done: threading.Event = field(default_factory=threading.Event)
    abandoned: bool = False  # the waiter gave up: the reader stops at its next step and writes nothing more
    response: object = None
    pieces: list[str] = field(default_factory=list)
    usage: object = None
    finish: str | None = None
    error: BaseException | None = None
    problem: str | None = None  # what the transport found wrong with the response (agent.llm_transport)


class _LiveText:
    """The answer so far, for the live view (state/llm_stream.txt): written a whole line at a time and
    redacted, so that a secret the model echoes never reaches the file, not even in part."""

    def __init__(self, file: TextIO):
        self.file = file
        self.pending: list[str] = []  # pieces of the unfinished line (joined once it ends: a long line stays linear)

    def write(self, piece: str) -> None:
        if "\n" not in piece:
            self.pending.append(piece)
            return
        lines, _, rest = piece.rpartition("\n")
        self.file.write(redact("".join(self.pending) + lines + "\n"))
        self.file.flush()
        self.pending = [rest]

    def close(self) -> None:
        self.file.write(redact("".join(self.pending)))
        self.pending = []


def _read_stream(call: _Call, live: _LiveText) -> None:
    spoke, length = False, 0  # spoke: a chunk came from the server (LiteLLM makes up a last one of its own)
    for chunk in call.response:  # type: ignore[attr-defined]  # LiteLLM's stream wrapper
        if call.abandoned:
            return
        call.usage = getattr(chunk, "usage", None) or call.usage
        choice = chunk.choices[0] if chunk.choices else None
        call.finish = getattr(choice, "finish_reason", None) or call.finish
        said = choice.delta if choice is not None else None
        delta = said.content if said is not None else None
        spoke = spoke or call.usage is not None or (said is not None and (delta is not None or said.role is not None))
        if delta:
            call.pieces.append(delta)
            length += len(delta)
            live.write(delta)
        if length > MAX_ANSWER_CHARS:
            call.finish = "size"
            return
    if not spoke:
        raise NotStreamed("the server answered a streamed request without a stream")


def _read_whole(call: _Call, live: _LiveText) -> None:
    choices = getattr(call.response, "choices", None) or [None]
    message = getattr(choices[0], "message", None)
    text = getattr(message, "content", None) or ""
    call.pieces.append(text[:MAX_ANSWER_CHARS + 1])
    call.usage = getattr(call.response, "usage", None)
    call.finish = "size" if len(text) > MAX_ANSWER_CHARS else getattr(choices[0], "finish_reason", None)
    live.write(text[:MAX_ANSWER_CHARS])


def whole_characters(text: str) -> str:
    """`text` with each surrogate pair that came split across two chunks joined into its character, and any
    lone surrogate (which no file can hold as UTF-8) replaced by U+FFFD."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _close(response: object) -> None:
    """Close a streamed response and the connection under it; whatever LiteLLM wrapped, try them all."""
    for stream in (getattr(response, "completion_stream", None), response):
        close = getattr(stream, "close", None)
        if callable(close):
            with contextlib.suppress(Exception):  # closing is a courtesy to the server, never a failure of ours
                close()


def _first_difference(recorded: list[Message], asked: list[Message]) -> str:
    if len(recorded) != len(asked):
        return f"the recording sent {len(recorded)} messages, this run {len(asked)}"
    for index, (a, b) in enumerate(zip(recorded, asked, strict=True)):
        if a != b:
            text_a, text_b = str(a.get("content")), str(b.get("content"))
            at = next((i for i, (x, y) in enumerate(zip(text_a, text_b, strict=False)) if x != y),
                      min(len(text_a), len(text_b)))
            return (f"message {index} ({b.get('role')}) differs from the recording at character {at}: "
                    f"recorded {text_a[at:at + 40]!r}, now {text_b[at:at + 40]!r}")
    return "the prompt differs from the recording"


def _result(response: str | None, error: str | None, prompt_tokens: int, completion_tokens: int, cost_usd: float,
            latency_s: float, attempts: int, finish_reason: str | None = None, refused: bool = False,
            too_long: bool = False, max_tokens: int | None = None, usage_estimated: bool = False) -> CallResult:
    """The outcome part of a log line, shared by live and replayed calls."""
    return {"response": response, "error": error, "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens, "cost_usd": cost_usd, "latency_s": latency_s,
            "attempts": attempts, "finish_reason": finish_reason, "refused": refused, "too_long": too_long,
            "max_tokens": max_tokens, "usage_estimated": usage_estimated}


def _logged_result(record: JsonObject) -> CallResult:
    """The outcome part of a log line as it was written (older logs lack the newer fields)."""
    return _result(record["response"], record["error"], record["prompt_tokens"], record["completion_tokens"],
                   record["cost_usd"], record["latency_s"], record["attempts"], record.get("finish_reason"),
                   record.get("refused", False), record.get("too_long", False), record.get("max_tokens"),
                   record.get("usage_estimated", False))


def _refused(error: Exception) -> bool:
    """The server refused the key, its rights or the model: the same call will fail every time."""
    return getattr(error, "status_code", None) in (401, 403, 404)


def _retryable(error: Exception) -> bool:
    """Rate limits, timeouts, lost connections, broken streams and server errors may pass; a bad request or key
    will not."""
    litellm = _litellm()
    transient = (litellm.RateLimitError, litellm.Timeout, litellm.APIConnectionError, litellm.InternalServerError,
                 litellm.ServiceUnavailableError, litellm.BadGatewayError, BrokenStream)
    status = getattr(error, "status_code", None)
    return isinstance(error, transient) or (isinstance(status, int) and status >= 500)


def _busy(error: Exception) -> bool:
    """A rate limit, or a server (still) loading its model: answers 429 or 503, or holds the request past the
    attempt's timeout. Waited for as long as the deadline allows."""
    return getattr(error, "status_code", None) in (429, 503) or isinstance(error, _litellm().Timeout)


_CONTEXT_MESSAGE = re.compile(r"context (length|size|window)|maximum context|too many tokens|prompt is too long",
                              re.IGNORECASE)


def _too_long(error: Exception) -> bool:
    """The prompt and the answer asked for do not fit the model's context (vLLM, llama.cpp, OpenAI, Ollama
    say so in a 400 or 413, each in its own words)."""
    if isinstance(error, _litellm().ContextWindowExceededError):
        return True
    return getattr(error, "status_code", None) in (400, 413) and bool(_CONTEXT_MESSAGE.search(str(error)))


def _retry_after(error: Exception) -> float:
    """The server's Retry-After in seconds, 0 when it sent none (or a date, which we do not parse)."""
    headers = getattr(error, "litellm_response_headers", None)
    retry_after = headers.get("retry-after") if headers else None
    if retry_after is None:
        return 0.0
    try:
        return float(retry_after)
    except (TypeError, ValueError):
        return 0.0


def _estimate(text: str) -> int:
    """Tokens in `text` at 4 characters a token: for an answer whose usage never came (no tokenizer is loaded,
    and none may be fetched, to count them)."""
    return -(-len(text) // CHARS_PER_TOKEN)


def _token_count(usage: object, name: str) -> int:
    """A token count of a stream's usage (LiteLLM's Usage; LiteLLM estimates it when the server sent
    none); 0 when there is none at all."""
    count = getattr(usage, name, None)
    return count if isinstance(count, int) else 0


def _one_line(error: Exception) -> str:
    text = redact(" ".join(str(error).split()))
    if "codec can't decode" in text:  # the SDK decodes strictly: an answer with one stray byte cannot be read
        byte = re.search(r"can't decode byte (0x[0-9a-f]+)", text)
        return (f"the server sent an answer that is not valid UTF-8 (byte {byte.group(1) if byte else '?'}); "
                "check the server and its model's tokenizer")
    return text[:400] or type(error).__name__


def _load_replay(path: Path) -> list[JsonObject]:
    log = path / LOG_NAME if path.is_dir() else path
    if not log.is_file():
        raise LLMError(f"nothing to replay: {log} does not exist; give a run directory that holds {LOG_NAME}")
    return read_jsonl(log, "the LLM log")


# ---------------------------------------------------------------------------- reading answers

def json_depth(text: str) -> int:
    """How deeply brackets nest in `text`, outside strings: one linear pass, no recursion."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth = max(depth - 1, 0)
    return deepest


def answer_part(text: str) -> str:
    """`text` without the model's reasoning, which reasoning models served without a reasoning parser write
    into the answer itself, drafts included: the blocks it opens with (`<think>…</think>`, or `thinking`,
    `reasoning`), and, where the chat template opened the block, all before the first closing tag outside
    a code fence. A tag anywhere else is text of the answer. A block opened and never closed is refused.
    Linear in the text, however many tags it holds."""
    at = 0
    if not _REASONING_START.match(text):
        closing = _first_outside_fences(_REASONING_END, text)
        at = closing.end() if closing is not None else 0
    while (opening := _REASONING_START.match(text, at)) is not None:
        closing = _REASONING_END.search(text, opening.end())
        if closing is None:
            raise ValueError("the answer is all reasoning (a <think> block never closed); end the reasoning "
                             "with </think> and write the answer after it")
        at = closing.end()
    return text[at:]


def _first_outside_fences(pattern: re.Pattern[str], text: str) -> re.Match[str] | None:
    """The first match of `pattern` not inside a ``` fenced block."""
    fences = [fence.start() for fence in _FENCE_LINE.finditer(text)]
    passed = 0
    for match in pattern.finditer(text):
        while passed < len(fences) and fences[passed] < match.start():
            passed += 1
        if passed % 2 == 0:
            return match
    return None


def extract_json(text: str) -> dict[str, object]:
    """The first JSON object in `text`'s answer part (answer_part); whatever surrounds it (fences, prose, more
    text) is ignored."""
    return json_objects(text)[0]


def json_objects(text: str) -> list[dict[str, object]]:
    """Every object in `text`'s answer part, in order (one inside another too), read as JSON; or, failing
    that, with // comments, trailing commas and powers (2**12) forgiven; or as a Python dict (single quotes,
    # comments, True). Raises ValueError, with the first reason, when there is none."""
    text = answer_part(text)
    if not text.strip():
        raise ValueError("the answer is empty; reply with a JSON object")
    if json_depth(text) > MAX_JSON_DEPTH:
        raise ValueError(f"the answer nests brackets more than {MAX_JSON_DEPTH} deep; reply with one flat JSON object")
    decoder = json.JSONDecoder()
    found: list[dict[str, object]] = []
    first_error = None
    tries, inside = 0, -1  # braces tried; the end of the last object read (braces before it are in it)
    for match in re.finditer(r"\{", text):
        if match.start() < inside:
            continue  # within an object read already: its own objects are taken from its value, not its text
        tries += 1
        if tries > MAX_JSON_TRIES:
            break
        # as written; then from the same brace without comments and trailing commas (from there: a quote in
        # the prose before it would turn the reading of strings inside out); then as a Python dict
        value: object = None
        try:
            value, inside = decoder.raw_decode(text, match.start())
        except (ValueError, RecursionError) as error:  # ValueError: also numbers too long to convert
            first_error = first_error or error
            try:
                value, _ = decoder.raw_decode(_relaxed(text[match.start():match.start() + MAX_RELAXED_CHARS]))
            except (ValueError, RecursionError):
                value = _python_dict(text, match.start())
            closing = _closing_brace(text, match.start())
            inside = match.start() + 1 if value is None or closing is None else closing + 1
        try:
            found += _objects_in(value)
        except ValueError as error:
            first_error = first_error or error
    if found:
        return found
    if first_error is None:
        raise ValueError("no JSON object in the answer; reply with one object in {...}")
    if isinstance(first_error, json.JSONDecodeError):
        raise ValueError(f"the JSON object in the answer does not parse: {first_error.msg} "
                         f"(line {first_error.lineno}, column {first_error.colno})")
    if "digits" in str(first_error):  # Python's own advice (sys.set_int_max_str_digits) is not the model's to take
        raise ValueError("the JSON object in the answer does not parse: a number has thousands of digits; write "
                         "plain numbers")
    raise ValueError(f"the JSON object in the answer does not parse: {str(first_error)[:120]}")


def _relaxed(text: str) -> str:
    """`text` without what JSON forbids and models write anyway: // comments and commas before a closing
    bracket, and with small powers (2**12) worked out (outside strings). One pass of one regular expression:
    linear, and in C (a hostile answer has MAX_JSON_TRIES braces read this way)."""
    def fixed(found: re.Match[str]) -> str:
        if found.group().startswith('"'):
            return found.group()
        return str(int(found[1]) ** int(found[2])) if found[1] else ""

    return _JSON_NOISE.sub(fixed, text)


def _objects_in(value: object) -> list[dict[str, object]]:
    """The objects of a value read from an answer, each before those it holds; ValueError for one nested
    deeper than MAX_JSON_DEPTH (json_depth can be misled: a stray quote makes brackets look like a string's).
    No recursion: what nests hundreds deep would exhaust Python's stack."""
    found: list[dict[str, object]] = []
    stack: list[tuple[object, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)) and depth >= MAX_JSON_DEPTH:
            raise ValueError(f"the answer nests brackets more than {MAX_JSON_DEPTH} deep; reply with one flat JSON "
                             "object")
        if isinstance(item, dict):
            found.append(item)
            stack += [(inner, depth + 1) for inner in reversed(list(item.values()))]
        elif isinstance(item, list):
            stack += [(inner, depth + 1) for inner in reversed(item)]
    return found


def _python_dict(text: str, start: int) -> dict[str, object] | None:
    """The Python dict literal that opens at `start` (single quotes, # comments, True and None, 4_096), read
    with ast.literal_eval, which runs no code; None when there is none."""
    end = _closing_brace(text, start)
    if end is None:
        return None
    try:
        value = ast.literal_eval(text[start:end + 1])
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None
    return value if isinstance(value, dict) and all(isinstance(key, str) for key in value) else None


def _closing_brace(text: str, start: int) -> int | None:
    """Where the bracket that opens at `start` closes, strings (either quote) and # comments skipped; None
    when it does not within MAX_RELAXED_CHARS."""
    limit = min(len(text), start + MAX_RELAXED_CHARS)
    at, depth, quote = start, 0, ""
    while at < limit:
        char = text[at]
        if quote:
            if char == "\\":
                at += 1  # the escaped character, whatever it is
            elif char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char == "#":  # a comment runs to the line's end, quotes and brackets in it included
            at = text.find("\n", at, limit)
            if at < 0:
                return None
        elif char in "{[(":
            depth += 1
        elif char in "}])":
            depth -= 1
            if depth == 0:
                return at
        at += 1
    return None


def extract_diff(text: str) -> tuple[str, str]:
    """(description, diff): the first line of prose before the diff, and the diff itself.

    The diff is the fenced blocks that hold diff lines, joined (a block repeated word for word counts
    once), or a JSON object's "diff" (and "description"), or else everything from the first diff line
    (`diff --git`, `--- ` or `@@ `) on. The description may be a heading or carry a 'Description:' label;
    both are stripped. With no prose before the diff, the first line after it describes the change, or
    else the diff's first added line.
    """
    text = answer_part(text)
    if not text.strip():
        raise ValueError("the answer is empty; write one line saying what the change does, then the diff")
    blocks = [m for m in _FENCED_BLOCK.finditer(text) if _DIFF_START.search(m.group(1))]
    if blocks:
        diff = "".join(dict.fromkeys(m.group(1) for m in blocks))
        before, after = text[:blocks[0].start()], text[blocks[-1].end():]
    elif (wrapped := _json_wrapped_diff(text)) is not None:
        return wrapped
    else:
        start = _DIFF_START.search(text)
        if start is None:
            raise ValueError("no unified diff in the answer; write '--- a/train.py', '+++ b/train.py' and '@@' hunks")
        diff, before, after = text[start.start():], text[:start.start()], ""
        if len(_FENCE_LINE.findall(before)) % 2 or ends_mid_hunk(diff):  # a fence opened and never closed
            raise ValueError("the answer stops in the middle of the diff (cut off?); send the whole diff again, "
                             "in a ```diff block that is closed with ```")
    diff = diff if diff.endswith("\n") else diff + "\n"
    return describe(before, after, diff), diff


def describe(before: str, after: str, diff: str) -> str:
    """A change's description: the first line of prose before it, else after it, else its first added line."""
    return _first_prose_line(before) or _first_prose_line(after) or _first_added_line(diff)


def _json_wrapped_diff(text: str) -> tuple[str, str] | None:
    """(description, diff) from an answer that is a JSON object with a "diff" string; None for any other."""
    if '"diff"' not in text:
        return None
    try:
        answer = extract_json(text)
    except ValueError:
        return None
    diff, description = answer.get("diff"), answer.get("description")
    if not isinstance(diff, str) or not _DIFF_START.search(diff):
        return None
    diff = diff if diff.endswith("\n") else diff + "\n"
    return (description.strip() if isinstance(description, str) and description.strip()
            else _first_added_line(diff)), diff


def _first_added_line(diff: str) -> str:
    """A description made from the diff, for an answer that gave none."""
    for line in diff.splitlines():
        if line.startswith("+") and not line.startswith("+++") and line[1:].strip():
            return "edit: " + line[1:].strip()
    return "edit of train.py"


def _first_prose_line(text: str) -> str:
    """The line labelled 'Description:', else the first that says something: not a fence, not an opener
    ("Sure! Here's my idea.") and not a lead-in to what follows ("Here is the diff:")."""
    lines = [line for line in text.splitlines() if not line.strip().startswith("```")]
    labelled = [line for line in lines if _LABEL.match(line)]
    for line in labelled + lines:
        stripped = _DECORATION.sub("", line).strip().rstrip("*").strip()
        if stripped and line in labelled:
            return stripped
        if stripped.endswith(":"):  # a lead-in, after what it may say first: "Longer warmdown. Here it is:"
            stripped = " ".join(re.split(r"(?<=[.!?])\s+", stripped)[:-1])
        if stripped and not _OPENER.match(stripped):
            return stripped
    return ""
