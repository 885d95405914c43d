"""The LLM client for real: LiteLLM over HTTP against the scripted loopback server, then replay offline."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from collections.abc import Callable

import pytest

from agent.errors import ArenaError
from agent.llm import (
    MAX_ANSWER_CHARS,
    LLMClient,
    LLMError,
    ReplayDiverged,
    extract_diff,
    extract_json,
    json_objects,
)
from tests.llm_server import Fault, ScriptedLLMServer

MODEL = "openai/test-model"
# LiteLLM itself touches fields pydantic 2.11 deprecates; that is not ours to see
pytestmark = pytest.mark.filterwarnings("ignore:Accessing the 'model_:DeprecationWarning")
LOG_FIELDS = {"trial", "purpose", "call", "model", "messages", "response", "error", "prompt_tokens",
              "completion_tokens", "cost_usd", "latency_s", "attempts", "finish_reason", "time", "max_tokens",
              "usage_estimated"}


def ask(text: str) -> list[dict]:
    return [{"role": "system", "content": "You tune GPTs."}, {"role": "user", "content": text}]


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def make_client(tmp_path, sleeps):
    """A client on the run directory tmp_path whose backoff sleeps are recorded, not slept. Its deadline is
    generous (the scripted server answers at once, but a busy machine may take seconds to make a call); the
    tests about deadlines set their own."""
    def make(api_base: str | None, **overrides) -> LLMClient:
        options = dict(timeout=60.0, retries=2, log_path=tmp_path / "llm.jsonl", stream_path=tmp_path / "stream.txt",
                       backoff_base=0.01, sleep=sleeps.append)
        return LLMClient(overrides.pop("model", MODEL), api_base, **{**options, **overrides})
    return make


def closed_port_base() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def raised_within(call: Callable[[], object], limit: float = 120) -> BaseException | None:
    """What `call` raised (None if nothing), run in a thread that must end within `limit` seconds: without its
    deadline, a call on a stream kept alive would wait for ever."""
    raised: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as error:  # noqa: BLE001 - handed to the test
            raised.append(error)

    caller = threading.Thread(target=run, daemon=True)
    caller.start()
    caller.join(limit)
    assert not caller.is_alive(), "the call outlived its deadline"
    return raised[0] if raised else None


def read_log(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ---------------------------------------------------------------------------- answers

def test_plain_answer_counts_the_servers_usage(llm_server, make_client):
    llm_server.script("raise the matrix learning rate")
    reply = make_client(llm_server.api_base, temperature=0.2, max_tokens=64).complete(
        ask("one two three four"), "propose", 1)
    assert reply.text == "raise the matrix learning rate"
    assert (reply.prompt_tokens, reply.completion_tokens) == (3 + 4, 5)  # the server counts words
    assert reply.latency_s > 0 and reply.attempts == 1 and reply.model == MODEL
    body = llm_server.requests[0]
    assert body["model"] == "test-model" and body["messages"] == ask("one two three four")
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["temperature"] == 0.2 and body["max_tokens"] == 64


def test_streamed_text_lands_in_the_stream_file(llm_server, make_client, tmp_path):
    (tmp_path / "stream.txt").write_text("an older answer that must not survive")
    llm_server.script("a long answer that arrives in many small chunks")
    reply = make_client(llm_server.api_base).complete(ask("go"), "propose", 1)
    assert (tmp_path / "stream.txt").read_text() == reply.text == "a long answer that arrives in many small chunks"


def test_cost_is_zero_for_an_unpriced_model_and_priced_otherwise(llm_server, make_client):
    llm_server.script("free answer", "paid answer")
    assert make_client(llm_server.api_base).complete(ask("hi"), "propose", 1).cost_usd == 0.0
    priced = make_client(llm_server.api_base, model="openai/gpt-4o-mini").complete(ask("hi"), "propose", 2)
    assert priced.cost_usd > 0


def test_empty_answer_is_an_empty_string(llm_server, make_client):
    llm_server.script(Fault.empty())
    reply = make_client(llm_server.api_base).complete(ask("go"), "propose", 1)
    assert reply.text == "" and reply.completion_tokens == 0


# ---------------------------------------------------------------------------- retries

def test_rate_limit_then_server_error_then_success(llm_server, make_client, sleeps):
    llm_server.script(Fault.http(429, retry_after=0.05), Fault.http(500), "third time lucky")
    reply = make_client(llm_server.api_base).complete(ask("go"), "propose", 1)
    assert reply.text == "third time lucky" and reply.attempts == 3
    assert len(llm_server.requests) == 3
    assert sleeps == [0.05, 0.02]  # Retry-After beats the first backoff (0.01); then 0.01 * 2


def test_dropped_connection_is_retried(llm_server, make_client):
    llm_server.script(Fault.dropped(), "after the drop")
    reply = make_client(llm_server.api_base).complete(ask("go"), "propose", 1)
    assert reply.text == "after the drop" and reply.attempts == 2


@pytest.mark.parametrize("status", [401, 400])
def test_client_errors_are_not_retried(llm_server, make_client, sleeps, status):
    llm_server.script(Fault.http(status), "never asked for")
    with pytest.raises(LLMError) as caught:
        make_client(llm_server.api_base).complete(ask("go"), "propose", 1)
    message = str(caught.value)
    assert len(llm_server.requests) == 1 and llm_server.remaining == 1 and sleeps == []
    assert "\n" not in message and "after 1 attempt:" in message and f"HTTP {status}" in message


def test_a_stalled_server_gets_one_deadline_not_one_per_retry(llm_server, make_client, sleeps):
    llm_server.script(Fault.slow(5), Fault.slow(5))
    with pytest.raises(LLMError, match="failed after 1 attempt: no complete answer within --llm-timeout 1.5 s"):
        make_client(llm_server.api_base, timeout=1.5, retries=3).complete(ask("go"), "propose", 1)
    assert len(llm_server.requests) == 1 and sleeps == []  # no time was left for a second attempt


def test_an_answer_that_is_not_utf8_fails_with_one_line_that_names_the_server(llm_server, make_client, sleeps):
    """LiteLLM's SDK decodes a stream strictly: one stray byte makes the answer unreadable. Retried (the next
    answer may be clean), then one line that says what is wrong, not a codec's traceback."""
    llm_server.script(*[Fault.not_utf8("an answer with a stray byte")] * 3)
    with pytest.raises(LLMError) as caught:
        make_client(llm_server.api_base).complete(ask("go"), "propose", 1)
    assert str(caught.value) == (f"{MODEL} failed after 3 attempts: the server sent an answer that is not valid UTF-8 "
                                 "(byte 0xe9); check the server and its model's tokenizer")
    llm_server.script(Fault.not_utf8("once"), "clean")
    assert make_client(llm_server.api_base).complete(ask("go"), "propose", 1).text == "clean"


def test_connection_refused_fails_after_the_retries(make_client, sleeps):
    with pytest.raises(LLMError, match="failed after 3 attempts"):
        make_client(closed_port_base()).complete(ask("go"), "propose", 1)
    assert sleeps == [0.01, 0.02]


def test_backoff_is_capped(make_client):
    client = make_client(None, backoff_base=1.0)
    assert [client._backoff(attempt, RuntimeError()) for attempt in (1, 2, 6, 7)] == [1.0, 2.0, 30.0, 30.0]


# ---------------------------------------------------------------------------- reachability

def test_check_reachable_asks_for_one_token_even_from_a_server_that_lists_no_models(make_client):
    with ScriptedLLMServer(models=False) as server:  # GET /models answers 501, as on some local servers
        for model in (MODEL, "hosted_vllm/test-model"):
            make_client(server.api_base, model=model).check_reachable()
        assert server.models_requests == 0 and server.remaining == 0


def test_check_reachable_fails_on_a_refused_token(make_client):
    with ScriptedLLMServer() as server:
        client = make_client(server.api_base, model="hosted_vllm/test-model")
        server.stop()
        with pytest.raises(ArenaError, match="^cannot reach model hosted_vllm/test-model at "):
            client.check_reachable()


def test_check_reachable_waits_for_a_rate_limit_or_a_loading_server(make_client, sleeps):
    with ScriptedLLMServer() as server:
        server.check_answers.extend([Fault.http(429), Fault.http(503)])
        make_client(server.api_base, retries=2).check_reachable()
        assert len(sleeps) == 2
        server.check_answers.append(Fault.http(401))
        with pytest.raises(ArenaError, match="^cannot reach model"):
            make_client(server.api_base, retries=2).check_reachable()
        assert len(sleeps) == 2  # a refused key is not waited for


def test_check_reachable_is_bounded_by_the_deadline_like_a_call(make_client):
    """A server that holds the check's stream open without answering (keep-alives well within the socket's
    timeout) is given --llm-timeout, as a call is, not for ever."""
    with ScriptedLLMServer() as server:
        server.check_answers.append(Fault.kept_alive())
        error = raised_within(make_client(server.api_base, timeout=2.0).check_reachable)
    assert isinstance(error, ArenaError)
    message = str(error)
    assert "no complete answer within --llm-timeout 2 s" in message and "\n" not in message
    assert message.endswith("start the server or check --model/--api-base")


def test_check_reachable_passes_a_server_that_answers_a_stream_with_one_body(make_client, tmp_path):
    """The check asks as calls do, streamed, then whole where the server sent one JSON body; what it
    answered is not shown in the live view's stream file."""
    with ScriptedLLMServer() as server:
        server.check_answers.append(Fault.unstreamed("OK"))
        assert make_client(server.api_base).check_reachable()
        assert not server.check_answers
    assert not (tmp_path / "stream.txt").exists()


def test_check_reachable_names_model_and_base_when_down(make_client):
    base = closed_port_base()
    with pytest.raises(ArenaError) as caught:
        make_client(base).check_reachable()
    message = str(caught.value)
    assert message.startswith(f"cannot reach model {MODEL} at {base}: ")
    assert message.endswith("start the server or check --model/--api-base") and "\n" not in message


# ---------------------------------------------------------------------------- log and replay

def record_a_run(server: ScriptedLLMServer, make_client) -> LLMClient:
    """Three calls: two answers around a call that fails for good (401)."""
    server.script("first proposal", Fault.http(401), "second proposal")
    client = make_client(server.api_base)
    client.complete(ask("trial one"), "propose", 1)
    with pytest.raises(LLMError):
        client.complete(ask("trial two"), "propose", 2)
    client.complete(ask("trial two again"), "repair", 2)
    return client


def test_every_call_is_one_log_line(llm_server, make_client, tmp_path):
    client = record_a_run(llm_server, make_client)
    lines = read_log(tmp_path / "llm.jsonl")
    assert [line["call"] for line in lines] == [0, 1, 2]
    assert all(line.keys() >= LOG_FIELDS for line in lines)
    assert [(line["purpose"], line["trial"]) for line in lines] == [("propose", 1), ("propose", 2), ("repair", 2)]
    assert [line["response"] for line in lines] == ["first proposal", None, "second proposal"]
    assert lines[1]["error"].startswith(f"{MODEL} failed after 1 attempt") and lines[0]["error"] is None
    assert lines[0]["messages"] == ask("trial one")
    totals = client.usage_totals()
    assert totals["calls"] == 3
    assert totals["prompt_tokens"] == sum(line["prompt_tokens"] for line in lines) > 0
    assert totals["completion_tokens"] == 4 and totals["cost_usd"] == 0.0
    assert lines[0]["usage_estimated"] is False  # the server's own counts


def test_a_resumed_run_continues_numbering_and_totals(llm_server, make_client, tmp_path):
    record_a_run(llm_server, make_client)
    with open(tmp_path / "llm.jsonl", "a") as log:
        log.write('{"trial": 3, "purp')  # a kill in the middle of a write
    llm_server.script("after the resume")
    client = make_client(llm_server.api_base)
    assert client.usage_totals()["calls"] == 3
    client.complete(ask("trial three"), "propose", 3)
    assert [line["call"] for line in read_log(tmp_path / "llm.jsonl")] == [0, 1, 2, 3]


def test_an_answer_logged_by_an_arena_killed_before_it_was_journaled_is_not_asked_for_again(llm_server, make_client,
                                                                                              tmp_path):
    """kill -9 between the log line and the journal: the resumed run asks the same for the same trial, and gets
    the logged answer, so the model is asked (and paid) once and the log stays a faithful recording."""
    llm_server.script("the first answer", "the next answer")
    make_client(llm_server.api_base).complete(ask("go"), "propose", 2)
    resumed = make_client(llm_server.api_base)
    assert resumed.complete(ask("go"), "propose", 2).text == "the first answer"
    assert len(llm_server.requests) == 1 and resumed.usage_totals()["calls"] == 1
    assert resumed.complete(ask("go"), "propose", 3).text == "the next answer"  # only the first call is looked up
    again = make_client(llm_server.api_base)
    llm_server.script("asked anew")
    assert again.complete(ask("go on"), "propose", 3).text == "asked anew"  # another request: asked
    assert [line["trial"] for line in read_log(tmp_path / "llm.jsonl")] == [2, 3, 3]


def test_an_answer_the_journal_used_is_not_taken_for_a_request_that_repeats_it(llm_server, make_client, tmp_path):
    """A model that repeats an unusable answer makes the next repair ask what the last one asked. Killed during
    that call, the resumed run must ask it, not take the last repair's answer (used: the journal says how many
    calls it had seen) for it: that lost an attempt, and a replay of the run diverged."""
    llm_server.script("the same unusable answer", "a fresh answer", "never asked")
    make_client(llm_server.api_base).complete(ask("repair it"), "repair", 2)
    resumed = make_client(llm_server.api_base)
    resumed.used_through(1)
    assert resumed.complete(ask("repair it"), "repair", 2).text == "a fresh answer"
    assert len(llm_server.requests) == 2 and [line["call"] for line in read_log(tmp_path / "llm.jsonl")] == [0, 1]
    again = make_client(llm_server.api_base)  # killed after that answer was logged, before the journal took it
    again.used_through(1)
    assert again.complete(ask("repair it"), "repair", 2).text == "a fresh answer" and len(llm_server.requests) == 2


def test_replay_reproduces_the_run_without_a_server(make_client, tmp_path):
    with ScriptedLLMServer() as server:
        record_a_run(server, make_client)
    replay_dir = tmp_path / "replay"
    replay_dir.mkdir()
    client = make_client(closed_port_base(), log_path=replay_dir / "llm.jsonl", stream_path=replay_dir / "stream.txt",
                         replay_from=tmp_path)  # a run directory, or its llm.jsonl
    client.check_reachable()  # a replay needs no server
    assert client.complete(ask("trial one"), "propose", 1).text == "first proposal"
    with pytest.raises(LLMError, match=f"^{MODEL} failed after 1 attempt"):
        client.complete(ask("trial two"), "propose", 2)
    assert client.complete(ask("trial two again"), "repair", 2).text == "second proposal"
    assert (replay_dir / "stream.txt").read_text() == "second proposal"
    original, replayed = read_log(tmp_path / "llm.jsonl"), read_log(replay_dir / "llm.jsonl")
    assert [line["response"] for line in replayed] == [line["response"] for line in original]
    assert all(line["replayed"] for line in replayed)
    with pytest.raises(ReplayDiverged, match=r"replay diverged at call 3 \('propose' for trial 3\): the recording "
                                             "holds only 3 calls"):
        client.complete(ask("more"), "propose", 3)


def test_replay_that_diverges_raises(llm_server, make_client, tmp_path):
    record_a_run(llm_server, make_client)
    client = make_client(None, log_path=None, replay_from=tmp_path / "llm.jsonl")
    with pytest.raises(ReplayDiverged, match=r"call 0 \('repair' for trial 1\): the recording made 'propose'"):
        client.complete(ask("trial one"), "repair", 1)
    client = make_client(None, log_path=None, replay_from=tmp_path / "llm.jsonl")
    with pytest.raises(ReplayDiverged) as caught:  # the same call, another prompt: a replay that went off
        client.complete(ask("trial 1"), "propose", 1)
    assert "message 1 (user) differs from the recording at character 6: recorded 'one', now '1'" in str(caught.value)


def test_replay_of_a_missing_log_is_a_one_line_error(tmp_path):
    with pytest.raises(LLMError, match="nothing to replay"):
        LLMClient(MODEL, replay_from=tmp_path)


# ---------------------------------------------------------------------------- faults that must not hold or crash a run

def assert_request_closed(server: ScriptedLLMServer) -> None:
    """The client closed its request: the server notices at its next chunk (within 30 s on a busy host)."""
    deadline = time.monotonic() + 30
    while server.disconnects == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server.disconnects == 1


def test_an_answer_still_coming_at_the_deadline_is_returned_as_far_as_it_came(llm_server, make_client, tmp_path):
    """A server that drips an answer (one chunk every 0.4 s, 30 s in all) is cut off at the call's deadline, and
    the request is closed, so the server stops generating for nobody. The model was answering: what came is an
    unusable answer, with its tokens counted, not an outage."""
    llm_server.script(Fault.dripped("x" * 300, every=0.4))
    client = make_client(llm_server.api_base, timeout=8.0, retries=3)  # time for a first chunk on a busy machine
    reply = client.complete(ask("go"), "propose", 1)
    assert 0 < len(reply.text) < 300 and set(reply.text) == {"x"}
    assert reply.finish_reason == "deadline" and "--llm-timeout" in reply.cut_off()
    assert reply.prompt_tokens > 0 and reply.completion_tokens > 0  # estimated: the usage chunk never came
    assert len(llm_server.requests) == 1  # one deadline for the call, not one per attempt
    assert_request_closed(llm_server)
    logged = read_log(tmp_path / "llm.jsonl")[-1]
    assert logged["finish_reason"] == "deadline" and logged["usage_estimated"] is True


def test_an_unstreamed_answer_still_coming_at_the_deadline_is_closed(llm_server, make_client):
    """LiteLLM reads an unstreamed answer whole, out of the client's reach: a body that goes on past the
    deadline is closed under it at its next piece, so the server stops sending for nobody."""
    llm_server.script(Fault.unstreamed("learned"), "learned", Fault.endless_body(every=0.05))  # asked twice, then
    client = make_client(llm_server.api_base, timeout=8.0)  # time for the first answer on a busy machine
    assert client.complete(ask("go"), "propose", 1).text == "learned"  # ... it asks this server unstreamed
    with pytest.raises(LLMError, match="no complete answer within --llm-timeout 8 s"):
        client.complete(ask("go"), "propose", 2)
    assert_request_closed(llm_server)


def test_a_body_that_never_ends_fails_at_the_size_limit(llm_server, make_client, monkeypatch, sleeps):
    """An endless response (a broken proxy) is read up to MAX_RESPONSE_BYTES, not until memory runs out;
    the same request would meet it again, so it is not retried."""
    monkeypatch.setattr("agent.llm_transport.MAX_RESPONSE_BYTES", 2**20)
    llm_server.script(Fault.endless_body())
    with pytest.raises(LLMError) as caught:
        make_client(llm_server.api_base).complete(ask("go"), "propose", 1)
    assert str(caught.value) == (f"{MODEL} failed after 1 attempt: the server's response passed 1 MiB without "
                                 "ending; check the server")
    assert_request_closed(llm_server)


@pytest.mark.parametrize("status", [301, 307])
def test_a_redirect_is_not_followed(llm_server, make_client, status, sleeps):
    """Following it would turn the POST into a GET (301) or send the prompt to another address (307)."""
    elsewhere = f"{closed_port_base()}/chat/completions"
    llm_server.script(Fault.redirected(status, elsewhere))
    with pytest.raises(LLMError) as caught:
        make_client(llm_server.api_base).complete(ask("go"), "propose", 1)
    assert str(caught.value) == (f"{MODEL} failed after 1 attempt: the server redirected the request (HTTP "
                                 f"{status}) to {elsewhere}; point --api-base at where it redirects")
    assert len(llm_server.requests) == 1 and sleeps == []


EMPTY_DELTA = ('data: {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "test-model", '
               '"choices": [{"index": 0, "delta": {}, "finish_reason": null}]}')


@pytest.mark.parametrize("line", [": keep-alive", EMPTY_DELTA], ids=["comments", "empty deltas"])
def test_a_stream_kept_alive_without_an_answer_is_cut_off_at_the_deadline(llm_server, make_client, line):
    """SSE comments (a proxy's keep-alives) or chunks that carry nothing give the stream reader nothing to
    stop at, and each comes well within the socket's timeout: only the call's own deadline ends it."""
    llm_server.script(Fault.kept_alive(line))
    client = make_client(llm_server.api_base, timeout=2.0, retries=3)
    error = raised_within(lambda: client.complete(ask("go"), "propose", 1))
    assert isinstance(error, LLMError) and "no complete answer within --llm-timeout 2 s" in str(error)
    assert_request_closed(llm_server)


def test_an_interrupted_call_closes_its_request(llm_server, make_client):
    """Ctrl-C or SIGTERM (here a timer's signal) while the answer streams: the server is told at once."""
    class Interrupted(BaseException):  # as KeyboardInterrupt and arena's Terminated are
        pass

    def interrupt(signum, frame):
        raise Interrupted

    llm_server.script(Fault.dripped("x" * 300, every=0.2))
    client = make_client(llm_server.api_base, timeout=60.0)
    client.check_reachable()  # LiteLLM imported: the signal comes while the answer streams
    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 1.5)
        with pytest.raises(Interrupted):
            client.complete(ask("go"), "propose", 1)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert_request_closed(llm_server)


def test_a_server_that_does_not_stream_is_asked_without_streaming(llm_server, make_client):
    """A server that answers a streamed request with one JSON body: its answer is not lost, and later calls
    ask it without streaming."""
    llm_server.script(Fault.unstreamed("the first answer"), "the first answer", "the second answer")
    client = make_client(llm_server.api_base)
    assert client.complete(ask("go"), "propose", 1).text == "the first answer"
    second = client.complete(ask("go on"), "propose", 2)
    assert second.text == "the second answer" and second.completion_tokens == 3
    assert [bool(r.get("stream")) for r in llm_server.requests] == [True, False, False]


def test_a_character_split_across_chunks_is_joined_and_a_lone_half_replaced(llm_server, make_client, tmp_path):
    """A character outside the BMP reaches a JSON stream as two UTF-16 halves, which a server may send in
    two chunks; a half without its pair can be in no file as UTF-8."""
    llm_server.script(Fault(text="ok \ud83d\ude00 then \ud83d alone", chunk=1))
    reply = make_client(llm_server.api_base).complete(ask("go"), "propose", 1)
    assert reply.text == "ok \U0001f600 then \ufffd alone"
    assert json.loads((tmp_path / "llm.jsonl").read_text().splitlines()[-1])["response"] == reply.text


def test_an_answer_has_a_size_limit(llm_server, make_client, tmp_path):
    """A model caught in a loop: its answer is cut at the limit (and LiteLLM's own loop check does not turn it
    into a server error that would be retried and then taken for an outage)."""
    llm_server.script(Fault(text="[" * (MAX_ANSWER_CHARS + 50_000), chunk=4096))
    reply = make_client(llm_server.api_base, timeout=120).complete(ask("go"), "propose", 1)
    assert len(reply.text) == MAX_ANSWER_CHARS and "passed 200,000 characters" in reply.cut_off()
    assert (tmp_path / "llm.jsonl").stat().st_size < 2 * MAX_ANSWER_CHARS


def test_an_answer_cut_at_max_tokens_says_so(llm_server, make_client):
    llm_server.script(Fault.cut('{"DEPTH": 4, "MATRIX'), "whole")
    client = make_client(llm_server.api_base, max_tokens=64)
    reply = client.complete(ask("go"), "propose", 1)
    assert reply.text == '{"DEPTH": 4, "MATRIX' and "cut off at 64 tokens" in reply.cut_off()
    assert client.complete(ask("go"), "propose", 2).cut_off() is None


def test_secrets_are_redacted_everywhere(llm_server, make_client, tmp_path, monkeypatch):
    secret = "sk-live-0123456789abcdefSECRET"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    monkeypatch.setenv("MY_SERVICE_TOKEN", "token-value-987654321")
    llm_server.script(Fault.http(401, message=f"Incorrect API key provided: {secret}. Also token-value-987654321"))
    with pytest.raises(LLMError) as caught:
        make_client(llm_server.api_base).complete(ask("go"), "propose", 1)
    log = (tmp_path / "llm.jsonl").read_text()
    for text in (str(caught.value), log):
        assert secret not in text and "token-value-987654321" not in text and "[redacted]" in text


def test_a_secret_the_model_echoes_never_reaches_the_live_file(llm_server, make_client, tmp_path, monkeypatch):
    """The live view's file is written as the answer streams: a line at a time, redacted, so no part of a
    secret is ever in it, not even while the rest of the secret is still on its way."""
    secret = "localkey-7f3a9b2c1d5e"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    live = tmp_path / "stream.txt"
    seen: set[str] = set()
    done = threading.Event()

    def watch() -> None:  # what the file holds while the answer streams
        while not done.is_set():
            seen.add(live.read_text() if live.exists() else "")
            time.sleep(0.001)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    llm_server.script(Fault(text=f"the key you sent me is {secret}, and\nagain: {secret}\nbye", chunk=3, drip=0.02))
    try:
        reply = make_client(llm_server.api_base).complete(ask("go"), "propose", 1)
    finally:
        done.set()
        watcher.join()
    assert secret not in reply.text and reply.text.count("[redacted]") == 2
    assert live.read_text() == reply.text
    assert len(seen) > 2 and not any(secret[:6] in text for text in seen)  # not even its first part, at any moment


@pytest.mark.parametrize("words", ["vllm", "llamacpp"])
def test_a_prompt_past_the_context_is_asked_again_for_a_shorter_answer(llm_server, make_client, tmp_path, words):
    """vLLM and llama.cpp refuse a prompt plus max_tokens past the model's context with a 400: the call asks again
    with max_tokens halved (not an attempt, not an outage) and records what it asked for."""
    prompt = ask("go")
    prompt_words = sum(len(m["content"].split()) for m in prompt)
    llm_server.script(Fault.fits(prompt_words + 1500, "the answer", words))
    reply = make_client(llm_server.api_base, max_tokens=4096).complete(prompt, "propose", 1)
    assert reply.text == "the answer" and reply.max_tokens == 1024 and reply.attempts == 1
    assert [r["max_tokens"] for r in llm_server.requests] == [4096, 2048, 1024]
    assert read_log(tmp_path / "llm.jsonl")[-1]["max_tokens"] == 1024


def test_a_prompt_that_fits_no_answer_fails_with_one_line_that_says_what_to_do(llm_server, make_client):
    llm_server.script(Fault.fits(3, "never"))  # the prompt alone is longer than the context
    with pytest.raises(LLMError) as caught:
        make_client(llm_server.api_base, max_tokens=4096).complete(ask("go"), "propose", 1)
    error = caught.value
    assert error.too_long and not error.refused and "\n" not in str(error)
    assert "does not fit the model's context even with --max-tokens 512" in str(error)
    assert "llama-server -c" in str(error) and "num_ctx" in str(error)
    assert [r["max_tokens"] for r in llm_server.requests] == [4096, 2048, 1024, 512]


@pytest.mark.parametrize("model, base", [(MODEL, "/v1"), ("ollama_chat/test-model", "")], ids=["openai", "ollama"])
def test_an_answer_broken_off_by_the_server_is_asked_again(llm_server, make_client, model, base):
    """A model runner that crashes mid-answer (Ollama: an error line in the NDJSON stream; llama.cpp, vLLM: an
    error event): the server accepted the request, so the failure is transient, whatever status LiteLLM gives."""
    llm_server.script(Fault.broken("half an ans", "an error was encountered while running the model: unexpected EOF"),
                      "the whole answer")
    api_base = llm_server.api_base.removesuffix("/v1") + base
    reply = make_client(api_base, model=model).complete(ask("go"), "propose", 1)
    assert reply.text == "the whole answer" and reply.attempts == 2


@pytest.mark.parametrize("model, base", [(MODEL, "/v1"), ("ollama_chat/test-model", "")], ids=["openai", "ollama"])
def test_a_refusal_is_not_a_broken_stream_however_the_provider_reads_it(llm_server, make_client, model, base):
    """Only an answer that had begun and then broke off is a broken stream, retried; a refusal stays a refusal.
    (Some providers, Gemini's among them, send the request only at the stream's first read, so their refusals
    come from the stream; the two here send it at once.)"""
    llm_server.script(Fault.http(404, message="model 'test-model' not found"), "never asked")
    with pytest.raises(LLMError) as caught:
        make_client(llm_server.api_base.removesuffix("/v1") + base, model=model).complete(ask("go"), "propose", 1)
    assert caught.value.refused and len(llm_server.requests) == 1


def test_an_ollama_model_is_asked_in_ollamas_own_words(llm_server, make_client, tmp_path):
    llm_server.script("an answer from ollama", "a second one")
    client = make_client(llm_server.api_base.removesuffix("/v1"), model="ollama_chat/test-model")
    client.check_reachable()
    reply = client.complete(ask("go"), "propose", 1)
    assert reply.text == "an answer from ollama" and reply.cost_usd == 0.0
    assert reply.prompt_tokens == 4 and reply.completion_tokens == 4  # Ollama's own counts (words, here)
    # a context that holds the prompt and the answer, not Ollama's default that drops the prompt's start
    assert llm_server.requests[-1]["options"] == {"num_predict": 4096, "num_ctx": 8192, "temperature": 0.7}
    client.complete([{"role": "user", "content": "x" * 60_000}], "propose", 2)
    assert llm_server.requests[-1]["options"]["num_ctx"] == 32768  # 20,000 + 4,096 tokens, a power of two


def test_a_loading_server_is_waited_for_until_the_deadline_not_the_retries(llm_server, make_client, sleeps):
    """A server that answers 503 while it loads the model: more retries than --llm-retries, within the deadline."""
    llm_server.script(*[Fault.http(503, message="Loading model")] * 5, "ready now")
    reply = make_client(llm_server.api_base, retries=2).complete(ask("go"), "propose", 1)
    assert reply.text == "ready now" and reply.attempts == 6 and len(sleeps) == 5
    llm_server.check_answers.extend([Fault.http(503)] * 6)
    make_client(llm_server.api_base, retries=2).check_reachable()
    assert len(sleeps) == 11


# ---------------------------------------------------------------------------- parsing answers

def test_extract_json_from_prose_and_a_fence():
    text = 'I would try this:\n```json\n{"matrix_lr": 0.04, "note": "braces } in strings"}\n```\nGood luck.'
    assert extract_json(text) == {"matrix_lr": 0.04, "note": "braces } in strings"}


def test_extract_json_ignores_trailing_text_and_stray_braces():
    assert extract_json('Use {x} wisely. {"depth": 4} and then {"depth": 5}') == {"depth": 4}


def test_the_answer_after_a_reasoning_block_is_read_not_a_draft_inside_it():
    """A reasoning model served without a reasoning parser writes its thinking, drafts included, into the answer."""
    draft, final = '{"DEPTH": 4}', '{"DEPTH": 10}'
    assert extract_json(f"<think>Draft: {draft} No, too shallow.</think>\n{final}") == {"DEPTH": 10}
    assert extract_json(f"Let me see. {draft} Hmm.</think>{final}") == {"DEPTH": 10}  # the template opened it
    assert extract_json(f"<think>x</think><think>{draft}</think>{final}") == {"DEPTH": 10}
    draft_diff = DIFF.replace("DEPTH = 4", "DEPTH = 8")
    text = f"<THINK>Maybe:\n```diff\n{draft_diff}```\nNo.</THINK>\nDeeper model\n```diff\n{DIFF}```"
    assert extract_diff(text) == ("Deeper model", DIFF)
    with pytest.raises(ValueError, match="all reasoning"):
        extract_json(f"<think>still thinking about {draft}")


def test_a_reasoning_tag_inside_the_answer_is_part_of_it():
    """Only blocks the answer opens with are reasoning (or all before a closing tag the template opened):
    a tag mentioned later, or inside a fenced diff, is the answer's own text."""
    assert extract_json('Keep <reasoning> short: {"DEPTH": 10}') == {"DEPTH": 10}
    tagged = DIFF.replace("+DEPTH = 4", "+DEPTH = 4  # </think>")
    assert extract_diff(f"Deeper model\n```diff\n{tagged}```") == ("Deeper model", tagged)


def test_extract_json_forgives_comments_and_trailing_commas():
    text = '```json\n{\n  "DEPTH": 4,  // deeper\n  "NAME": "a // b, }",\n  "LRS": [0.1, 0.2,],\n}\n```'
    assert extract_json(text) == {"DEPTH": 4, "NAME": "a // b, }", "LRS": [0.1, 0.2]}
    assert extract_json('He said "try it. ' + text) == {"DEPTH": 4, "NAME": "a // b, }", "LRS": [0.1, 0.2]}


@pytest.mark.parametrize("text, reason", [
    ("", "empty"),
    ("no object here", "no JSON object"),
    ('```json\n{"depth": 4 "width": 5}\n```', "does not parse"),
])
def test_extract_json_errors(text, reason):
    with pytest.raises(ValueError, match=reason):
        extract_json(text)


DIFF = "--- a/train.py\n+++ b/train.py\n@@ -1,1 +1,1 @@\n-DEPTH = 3\n+DEPTH = 4\n"


def test_extract_diff_from_a_fence_with_a_description():
    text = f"**Description:** deeper model\n\nWhy: more capacity.\n\n```diff\n{DIFF}```\nThat is all."
    assert extract_diff(text) == ("deeper model", DIFF)


def test_extract_diff_without_a_fence():
    assert extract_diff(f"# Deeper model\n{DIFF.rstrip()}") == ("Deeper model", DIFF)
    miscounted = DIFF.replace("@@ -1,1 +1,1 @@", "@@ -1,3 +1,3 @@")  # whole, its last line a change: counts err
    assert extract_diff(f"Deeper model\n{miscounted}") == ("Deeper model", miscounted)
    added_first = "--- a/train.py\n+++ b/train.py\n@@ -1,4 +1,4 @@\n+DEPTH = 4\n-DEPTH = 3\n"  # + before -
    assert extract_diff(f"Deeper model\n{added_first}") == ("Deeper model", added_first)


@pytest.mark.parametrize("text, expected", [
    (f"```diff\n{DIFF}```", ("edit: DEPTH = 4", DIFF)),  # no prose at all: the first added line describes it
    (f"```diff\n{DIFF}```\nThis makes the model deeper.", ("This makes the model deeper.", DIFF)),
    (f"Deeper.\n```diff\n{DIFF}```\nIn short:\n```diff\n{DIFF}```", ("Deeper.", DIFF)),  # a block repeated
    ('{"description": "deeper", "diff": ' + json.dumps(DIFF) + "}", ("deeper", DIFF)),
    ("```json\n" + json.dumps({"diff": DIFF.rstrip()}) + "\n```", ("edit: DEPTH = 4", DIFF)),
    # an opener or a lead-in is no description; a labelled line wins wherever it is
    (f"Sure! Here's my idea.\n**Description:** deeper\n```diff\n{DIFF}```", ("deeper", DIFF)),
    (f"Here is the diff:\n```diff\n{DIFF}```\nThis deepens the model.", ("This deepens the model.", DIFF)),
    (f"Sure, a deeper model helps.\n```diff\n{DIFF}```", ("Sure, a deeper model helps.", DIFF)),
    (f"Sure, I will make the model deeper.\n```diff\n{DIFF}```", ("Sure, I will make the model deeper.", DIFF)),
    (f"Deeper model. Here is the diff:\n```diff\n{DIFF}```", ("Deeper model.", DIFF)),
])
def test_extract_diff_reads_what_small_models_write(text, expected):
    assert extract_diff(text) == expected


@pytest.mark.parametrize("text, reason", [
    ("just prose, no diff", "no unified diff"),
    ("", "the answer is empty"),
    ("<think>all the work went here</think>\n", "the answer is empty"),
    ('{"description": "deeper", "diff": "make it deeper"}', "no unified diff"),
    # cut off by the model's length limit, which the server did not report: a fence never closed, or a bare
    # diff whose last hunk stops on a removed line short of both of its header's counts
    (f"Deeper\n```diff\n{DIFF}", "stops in the middle of the diff"),
    ("Deeper\n" + DIFF.replace("@@ -1,1 +1,1 @@", "@@ -1,3 +1,3 @@").replace("+DEPTH = 4\n", ""),
     "stops in the middle of the diff"),
])
def test_extract_diff_errors(text, reason):
    with pytest.raises(ValueError, match=reason):
        extract_diff(text)


@pytest.mark.parametrize("text, reason", [
    ('{"DEPTH": ' + "[" * 1200, "nests brackets more than 32 deep"),
    ('{"MATRIX_LR": 1' + "0" * 5000 + "}", "a number has thousands of digits"),  # more than Python converts
    ('{"a": ' * 60_000 + "1" + "}" * 60_000, "nests brackets"),
    ("{" * 200_000, "nests brackets"),
    ('{"a": 1' + ", " * 100_000 + "// x" * 20_000, "does not parse"),  # what the relaxed reading removes
    ("{x} " * 50 + ", " * 100_000, "does not parse"),  # every brace read leniently too
    ("<think></think>" * 25_000, "empty"),
    ("</think>" * 25_000 + "x", "no JSON object"),
    ("```\n" * 25_000 + "</think>" * 25_000, "no JSON object"),
])
def test_hostile_json_answers_fail_quickly_and_plainly(text, reason):
    def parse() -> None:
        with pytest.raises(ValueError, match=reason):
            extract_json(text)

    def scan() -> int:  # one pass over the text in Python: linear, and slowed by a busy machine alike
        return sum(1 for c in text if c == "{")

    # linear: a few scans' time (the quadratic reader took minutes, thousands of scans); best of 3, so a
    # moment of load on one side does not decide
    assert best_time(parse) < 100 * best_time(scan) + 0.01


def best_time(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


@pytest.mark.parametrize("value, reason", [
    ("1" + "0" * 400, "far out of any range"),
    ("1e999", "must be a finite number"),
    ("NaN", "must be a finite number"),
    ("[1, 2]", "must be a number or a string"),
])
def test_constants_from_an_llm_must_be_plain_finite_values(value, reason):
    from agent.methods.llm_fixed import parse_config
    from agent.presets import load_presets
    from agent.space import load_space

    config = {**load_presets()["cpu"].constants}
    text = json.dumps(config).replace('"MATRIX_LR": 0.04', f'"MATRIX_LR": {value}')
    with pytest.raises(ValueError, match=reason):
        parse_config(text, load_space("cpu"))


@pytest.mark.parametrize("text, expected", [
    ("{'DEPTH': 4, 'NAME': 'a # b', 'ON': True}  # a Python dict", {"DEPTH": 4, "NAME": "a # b", "ON": True}),
    ('{\n  "DEPTH": 4,  # deeper\n  "BATCH": 4_096,\n}', {"DEPTH": 4, "BATCH": 4096}),
    ('{"BATCH": 2**12, "NOTE": "2**3"}', {"BATCH": 4096, "NOTE": "2**3"}),
])
def test_json_objects_forgive_what_small_models_write(text, expected):
    assert json_objects(text) == [expected]


def test_json_objects_are_every_object_in_order_and_run_no_code():
    assert json_objects('best {"D": 3}. Now {"why": "x", "config": {"D": 4}}') == [
        {"D": 3}, {"why": "x", "config": {"D": 4}}, {"D": 4}]
    quoted = '{"why": "trial 3 with {\'D\': 5} ran out of memory", "config": {"D": 2}}'  # text in a string
    assert json_objects(quoted) == [{"why": "trial 3 with {'D': 5} ran out of memory", "config": {"D": 2}}, {"D": 2}]
    assert json_objects('{"B": 2**12}') == [{"B": 4096}]
    with pytest.raises(ValueError, match="does not parse"):  # a decimal's power is not worked out as another
        json_objects('{"B": 1.5**2}')
    with pytest.raises(ValueError, match="does not parse"):
        json_objects("{'D': __import__('os').system('echo CHEAT')}")


def test_a_config_answer_is_read_as_a_small_model_means_it():
    """The proposal, not the best it echoed; inside a wrapper; names in any case; only what it changes (the rest
    as the best it was shown); whole floats and numeric strings as the numbers they are."""
    from agent.methods.llm_fixed import parse_config
    from agent.presets import load_presets
    from agent.space import load_space

    space, best = load_space("cpu"), dict(load_presets()["cpu"].constants)
    proposal = {**best, "DEPTH": best["DEPTH"] + 1}
    assert parse_config(f"The best is {json.dumps(best)}. I propose {json.dumps(proposal)}", space, best) == proposal
    assert parse_config(f"I propose {json.dumps(proposal)}, up from {json.dumps(best)}", space, best) == proposal
    echoed = json.dumps({k: str(v) for k, v in best.items()})  # the best again, its numbers quoted
    assert parse_config(f"Best: {echoed}. Next: {json.dumps(proposal)}", space, best) == proposal
    wrapped = {"reasoning": "deeper", "config": {"depth": float(best["DEPTH"] + 1), "matrix_lr": "0.05"}}
    assert parse_config(json.dumps(wrapped), space, best) == {**proposal, "MATRIX_LR": 0.05}
    with pytest.raises(ValueError, match="missing keys"):  # without a best to build on, every constant is needed
        parse_config('{"DEPTH": 4}', space)
    with pytest.raises(ValueError, match="unknown keys DROPOUT"):
        parse_config(json.dumps({**proposal, "DROPOUT": 0.1}), space, best)
