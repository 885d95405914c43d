"""LLM methods end to end: the real LiteLLM client talking to a real OpenAI-compatible server on loopback that
plays scripted answers, bad answers included. The code agent's run is a real `arena run` with real training
(an agent's diff that breaks training must crash for real); the fixed-space runs, the outage and the replay run
the same command on trials that train nothing (tests/fake_arena.py), since what they test is the method and the
loop."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from agent.constants import render_constants
from agent.patches import make_diff
from agent.presets import get_preset
from agent.record import TrialRecord
from agent.template import template_dir
from sandbox.outcome import Status
from tests.conftest import ROOT, one_line_error, run_arena
from tests.fake_arena import HOLD_ENV
from tests.fake_runs import fake_score
from tests.llm_server import Fault, ScriptedLLMServer
from tests.run_helpers import arena_run, check_run_consistent, fake_arena_run

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
FAST = ["--budget", "1", "--eval-tokens", "2048", "--trials", "6", "--startup-allowance", "300"]
BASELINE = render_constants((template_dir() / "train.py").read_text(), get_preset("cpu").constants)
# seconds an LLM call may take: the scripted server answers at once, but a busy machine may take seconds to
# make a call; no test here is about the deadline (tests/test_llm.py sets short ones of its own)
LLM_TIMEOUT = 60


def edit(old: str, new: str, source: str = BASELINE) -> str:
    """A diff against the baseline. Each scripted edit's context lines must stay clear of the others' edits,
    since which of them were kept (and so the parent's text) depends on measured val_bpb."""
    assert old in source
    return make_diff(source, source.replace(old, new, 1))


def code_answer(description: str, diff: str) -> str:
    return f"{description}\n\nHere is the change:\n```diff\n{diff}```\n"


def llm_args(server, method: str) -> list[str]:
    return ["--method", method, "--model", "openai/test-model", "--api-base", server.api_base,
            "--llm-timeout", str(LLM_TIMEOUT), "--llm-retries", "2", "--repairs", "2"]


@pytest.fixture(scope="module")
def code_run(tmp_path_factory, cache_root, stdlib_dataset):
    runs = tmp_path_factory.mktemp("code-runs")
    bad_context = edit("ADAM_BETAS = (0.8, 0.95)", "ADAM_BETAS = (0.85, 0.95)").replace(
        "VE_GATE_CHANNELS = 32", "VE_GATE_CHANNELS = 33")
    crash = edit("    cfg = build_config(ctx.vocab_size, ctx.seq_len)\n",
                 "    raise RuntimeError('the agent broke training')\n")
    with ScriptedLLMServer() as server:
        server.script(
            code_answer("longer warmdown", edit("WARMDOWN_RATIO = 0.5", "WARMDOWN_RATIO = 0.6")),   # trial 1
            Fault.http(500), code_answer("adam betas", bad_context),                                # trial 2 ...
            code_answer("adam betas, fixed", edit("ADAM_BETAS = (0.8, 0.95)", "ADAM_BETAS = (0.85, 0.95)")),
            code_answer("peek at the metric", "--- a/prepare.py\n+++ b/prepare.py\n@@ -1 +1 @@\n-x\n+y\n"),  # 3
            "I would rather not change anything today.",
            "Still no diff, sorry.",
            Fault.http(429, retry_after=0.1), code_answer("break it", crash),                       # trial 4
            Fault.empty(),
            code_answer("larger head init", edit("lm_head.weight, std=0.001", "lm_head.weight, std=0.002")),
        )
        proc = arena_run(runs, cache_root, "--name", "code", *llm_args(server, "code"), *FAST)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert server.remaining == 0
        requests = list(server.requests)
    return runs / "code", requests


@pytest.mark.slow
def test_code_agent_run(code_run):
    run_dir, requests = code_run
    records = check_run_consistent(run_dir, 6)
    assert [r["status"] for r in records] == ["ok", "ok", "ok", "invalid_patch", "crash", "ok"]
    assert records[1]["config"]["WARMDOWN_RATIO"] == 0.6 and records[1]["description"] == "longer warmdown"
    # trial 2: the unappliable diff went back with its reason and the repaired diff ran
    assert len(records[2]["repairs"]) == 1 and "hunk 1" in records[2]["repairs"][0]["reason"]
    assert "ADAM_BETAS = (0.85, 0.95)" in records[2]["diff"]
    repair_prompt = requests[3]["messages"][-1]["content"]
    assert "rejected" in repair_prompt and "hunk 1" in repair_prompt
    # trial 3: a diff against prepare.py, then prose twice: recorded as invalid_patch after 2 repairs
    assert len(records[3]["repairs"]) == 3 and "prepare.py" in records[3]["repairs"][0]["reason"]
    assert records[3]["commit"] is None
    assert "the agent broke training" in records[4]["log_tail"]
    assert len(records[5]["repairs"]) == 1  # the empty answer was sent back once
    # the prompt: program.md's rules, the best train.py, recent trials with their outcomes
    system, user = requests[-1]["messages"][0]["content"], requests[-1]["messages"][1]["content"]
    assert "Change only `train.py`" in system and "{time_budget}" not in system
    assert "def train(ctx)" in user and "FAILED: crash" in user and "the agent broke training" in user
    calls = [json.loads(line) for line in (run_dir / "llm.jsonl").read_text().splitlines()]
    assert len(calls) == 9 and all(c["cost_usd"] == 0.0 for c in calls)
    assert [c["attempts"] for c in calls][:3] == [1, 2, 1]  # the 500 was retried inside one call


@pytest.mark.slow  # arena child processes, seconds each
def test_replayed_run_reproduces_the_recorded_one(tmp_path, cache_root):
    """A replay needs every prompt as recorded, what trials measured included, and real training on a wall
    clock does not measure the same twice: here the trials train nothing, and score the same every time."""
    runs = tmp_path / "runs"
    bad_context = edit("ADAM_BETAS = (0.8, 0.95)", "ADAM_BETAS = (0.85, 0.95)").replace(
        "VE_GATE_CHANNELS = 32", "VE_GATE_CHANNELS = 33")
    with ScriptedLLMServer() as server:
        server.script(
            code_answer("longer warmdown", edit("WARMDOWN_RATIO = 0.5", "WARMDOWN_RATIO = 0.6")),   # trial 1
            Fault.http(500), code_answer("adam betas", bad_context),
            code_answer("adam betas, fixed", edit("ADAM_BETAS = (0.8, 0.95)", "ADAM_BETAS = (0.85, 0.95)")),
        )
        recorded = fake_arena_run(runs, cache_root, "--name", "code", *llm_args(server, "code"), *FAST, "--trials", "3")
        assert recorded.returncode == 0, recorded.stderr[-3000:]
    proc = fake_arena_run(runs, cache_root, "--name", "again", "--method", "code", "--model", "openai/test-model",
                          "--llm-replay", str(runs / "code"), *FAST, "--trials", "3")  # no server: llm.jsonl's answers
    assert proc.returncode == 0, proc.stderr[-3000:]
    original = check_run_consistent(runs / "code", 3)
    replayed = check_run_consistent(runs / "again", 3)  # an edit, then one repaired after a 500 and a retry
    assert len(replayed[2]["repairs"]) == 1
    for a, b in zip(original, replayed, strict=True):
        assert (a["description"], a["diff"], a["status"], a["val_bpb"], a["kept"], a.get("repairs")) == \
               (b["description"], b["diff"], b["status"], b["val_bpb"], b["kept"], b.get("repairs"))


@pytest.mark.slow  # arena child processes, seconds each
def test_a_replay_that_goes_off_its_recording_stops_with_one_line(code_run, tmp_path, cache_root):
    """Here the trials train nothing, so what the baseline measured, and with it the first prompt, differs."""
    run_dir, _ = code_run
    proc = fake_arena_run(tmp_path / "runs", cache_root, "--name", "off", "--method", "code", "--model",
                          "openai/test-model", "--llm-replay", str(run_dir), *FAST)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    last = proc.stderr.splitlines()[-1]
    assert last.startswith("error: replay diverged at call 0 ('propose' for trial 1): message ")
    assert "differs from the recording at character" in last and "replay a run made with the same settings" in last


def config_answer(**changes) -> str:
    config = {**get_preset("cpu").constants, **changes}
    return "Here is my proposal:\n```json\n" + json.dumps(config) + "\n```\nGood luck!"


@pytest.mark.slow  # arena child processes, seconds each
def test_llm_fixed_space_run(tmp_path, cache_root, stdlib_dataset):
    runs = tmp_path / "runs"
    with ScriptedLLMServer() as server:
        server.script(
            config_answer(MATRIX_LR=0.05),                                        # trial 1
            "I think a deeper model would help.", config_answer(DEPTH=4),        # trial 2: prose, repaired
            json.dumps({**get_preset("cpu").constants, "DROPOUT": 0.1}),          # trial 3: unknown key ...
            config_answer(DEPTH=40), config_answer(HEAD_DIM=48),                  # ... out of bounds twice
            Fault.dropped(), config_answer(WARMUP_RATIO=0.1),                     # trial 4: dropped, retried
            config_answer(EMBEDDING_LR=0.3),                                      # trial 5
        )
        proc = fake_arena_run(runs, cache_root, "--name", "llm", *llm_args(server, "llm"), *FAST)
        assert proc.returncode == 0, proc.stderr[-3000:]
        requests = list(server.requests)
    records = check_run_consistent(runs / "llm", 6)
    assert [r["status"] for r in records] == ["ok", "ok", "ok", "invalid_patch", "ok", "ok"]
    assert records[1]["config"]["MATRIX_LR"] == 0.05 and records[2]["config"]["DEPTH"] == 4
    reasons = [a["reason"] for a in records[3]["repairs"]]
    assert "unknown keys DROPOUT" in reasons[0] and "DEPTH" in reasons[1] and "HEAD_DIM" in reasons[2]
    assert '"DEPTH": 4' in records[2]["proposal_meta"]["answer"]  # the answer that ran, not the first one
    assert records[4]["config"]["WARMUP_RATIO"] == 0.1
    prompt = requests[-1]["messages"][1]["content"]
    assert "MATRIX_LR: float in [0.005, 0.2], log scale" in prompt and "Best 5 trials" in prompt
    assert "FAILED: invalid_patch" in prompt


@pytest.mark.slow  # a child arena that imports LiteLLM (10 s); test_llm checks the check itself quickly
def test_unreachable_model_stops_before_any_trial(tmp_path, cache_root, stdlib_dataset):
    server = ScriptedLLMServer().start()
    base = server.api_base
    server.stop()  # nothing listens there now
    line = one_line_error(arena_run(tmp_path / "runs", cache_root, "--name", "x", "--method", "code",
                                    "--model", "openai/test-model", "--api-base", base, "--llm-timeout", "2",
                                    "--llm-retries", "0"))
    assert "cannot reach model openai/test-model" in line
    assert not (tmp_path / "runs" / "x").exists()  # refused before the run was created


def test_llm_method_without_a_model_is_refused(tmp_path, cache_root, stdlib_dataset):
    assert "needs a model" in one_line_error(arena_run(tmp_path / "runs", cache_root, "--method", "llm"))


def llm_method(server, tmp_path, method: str = "llm", **changes):
    from agent.methods import make_method
    from agent.run import RunSettings
    from agent.space import load_space

    settings = RunSettings(name="m", method=method, model="openai/test-model", api_base=server.api_base,
                           llm_timeout=LLM_TIMEOUT, llm_retries=0, llm_warmup=0, llm_ratio=1.0, **changes)
    (tmp_path / "state").mkdir(parents=True, exist_ok=True)
    return make_method(settings, load_space("cpu"), tmp_path)


def context(trial: int = 1):
    from agent.methods.base import Context
    from agent.space import load_space

    baseline = TrialRecord(trial=0, kind="baseline", method="baseline", status=Status.OK, val_bpb=3.0,
                           config=dict(get_preset("cpu").constants), kept=True, description="baseline")
    return Context(trial, [baseline], baseline, BASELINE, load_space("cpu"))


@pytest.mark.parametrize("method", ["llm", "centaur"])
def test_hostile_and_cut_answers_are_unusable_answers_not_crashes(method, tmp_path):
    constants = json.dumps(get_preset("cpu").constants)
    answers = ['{"DEPTH": ' + "[" * 1200, constants.replace('"MATRIX_LR": 0.04', '"MATRIX_LR": 1' + "0" * 400),
               Fault.cut(constants[:40])]
    with ScriptedLLMServer() as server:
        server.script(*answers)
        chosen = llm_method(server, tmp_path, method)
        reasons = []
        for _ in answers:
            proposal = chosen.propose(context())
            reasons.append(proposal.invalid or proposal.meta.get("llm_error"))
    assert "nests brackets" in reasons[0] and "far out of any range" in reasons[1]
    assert "cut off at 4096 tokens" in reasons[2]


def test_a_model_that_fails_stops_the_run_instead_of_burning_trials(tmp_path):
    from agent.llm import ModelUnavailable

    with ScriptedLLMServer() as server:
        server.script(*[Fault.http(500)] * 4)
        with pytest.raises(ModelUnavailable, match=r"^the model failed \(openai/test-model failed after 1 attempt"):
            llm_method(server, tmp_path / "llm", "llm").propose(context())
        centaur = llm_method(server, tmp_path / "centaur", "centaur")
        assert centaur.propose(context(1)).meta["source"] == "cmaes-fallback"  # one failed call: a fallback
        assert centaur.propose(context(2)).meta["source"] == "cmaes-fallback"
        with pytest.raises(ModelUnavailable, match="nothing was recorded for trial 3"):  # three in a row: an outage
            centaur.propose(context(3))


def test_centaur_stops_at_once_when_the_key_or_model_is_refused(tmp_path):
    from agent.llm import ModelUnavailable

    with ScriptedLLMServer() as server:
        server.script(Fault.http(401, message="invalid api key"))
        with pytest.raises(ModelUnavailable, match="nothing was recorded for trial 1"):
            llm_method(server, tmp_path, "centaur").propose(context(1))


def test_centaur_counts_failed_calls_across_a_resume(tmp_path):
    """Two fallbacks after failed calls in the ledger, then a fresh Centaur (a resumed run): its first failed
    call is the third in a row."""
    from agent.llm import ModelUnavailable

    ctx = context(3)
    for trial in (1, 2):
        ctx.records.append(TrialRecord(trial=trial, kind="proposal", method="centaur", status=Status.OK, val_bpb=3.1,
                                       config=dict(get_preset("cpu").constants), kept=False, description="fallback",
                                       proposal_meta={"source": "cmaes-fallback",
                                                      "llm_error": "LLM call failed: HTTP 503"}))
    with ScriptedLLMServer() as server:
        server.script(Fault.http(500))
        with pytest.raises(ModelUnavailable, match="nothing was recorded for trial 3"):
            llm_method(server, tmp_path, "centaur").propose(ctx)


@pytest.mark.slow  # arena child processes, seconds each
def test_an_outage_ends_the_run_with_one_line_and_records_nothing(tmp_path, cache_root, stdlib_dataset):
    runs = tmp_path / "runs"
    with ScriptedLLMServer() as server:
        server.script(config_answer(MATRIX_LR=0.05), *[Fault.http(503)] * 3)
        proc = fake_arena_run(runs, cache_root, "--name", "down", *llm_args(server, "llm"), *FAST)
    assert proc.returncode == 2 and proc.stderr.splitlines()[-1].startswith("error: the model failed")
    assert "nothing was recorded for trial 2" in proc.stderr and "Traceback" not in proc.stderr
    records = check_run_consistent(runs / "down", 2)
    assert [r["status"] for r in records] == ["ok", "ok"]  # no invalid_patch for the outage


def test_a_repair_shows_the_first_prompt_and_only_the_last_answer(tmp_path):
    """Each repair asks for no more context than the one before it: the first prompt, the last answer (the start of
    one cut off) and the note, not every earlier exchange."""
    from agent.methods.llm_base import SHOWN_CHARS

    with ScriptedLLMServer() as server:
        server.script(Fault.cut("x" * 30_000), "no JSON here", config_answer(DEPTH=4))
        method = llm_method(server, tmp_path)
        first = method.propose(context())
        second = method.repair(first, first.invalid, 1)
        third = method.repair(second, second.invalid, 1)
        requests = list(server.requests)
    assert "cut off" in first.invalid and "no JSON object" in second.invalid and third.config["DEPTH"] == 4
    assert [len(r["messages"]) for r in requests] == [2, 4, 4]
    assert requests[1]["messages"][:2] == requests[2]["messages"][:2] == requests[0]["messages"]
    shown = requests[1]["messages"][2]["content"]
    assert shown.startswith("x" * SHOWN_CHARS) and len(shown) < SHOWN_CHARS + 100 and "not shown" in shown
    assert requests[2]["messages"][2]["content"] == "no JSON here"


def test_a_repair_past_the_models_context_is_an_unusable_answer_not_an_outage(tmp_path):
    with ScriptedLLMServer() as server:
        server.script("prose only", Fault.fits(20, "never"))  # the first prompt fits; a repair would not
        method = llm_method(server, tmp_path, max_tokens=512)
        first = method.propose(context())
        repaired = method.repair(first, first.invalid, 1)
    assert "did not fit the model's context" in repaired.invalid


@pytest.mark.slow  # arena child processes, seconds each
def test_a_proposal_that_changes_nothing_is_sent_back(tmp_path, cache_root, stdlib_dataset):
    """A model echoing the train.py or the best config it was shown would spend a whole trial on a re-run."""
    same = edit("WARMDOWN_RATIO = 0.5", "WARMDOWN_RATIO = 0.6").replace("+WARMDOWN_RATIO = 0.6",
                                                                        "+WARMDOWN_RATIO = 0.5")
    with ScriptedLLMServer() as server:
        server.script(code_answer("nothing, really", same),
                      code_answer("longer warmdown", edit("WARMDOWN_RATIO = 0.5", "WARMDOWN_RATIO = 0.6")))
        proc = fake_arena_run(tmp_path / "runs", cache_root, "--name", "same", *llm_args(server, "code"), *FAST,
                              "--trials", "2")
        assert proc.returncode == 0, proc.stderr[-3000:]
    records = check_run_consistent(tmp_path / "runs" / "same", 2)
    assert records[1]["status"] == "ok" and records[1]["description"] == "longer warmdown"
    assert "changes nothing" in records[1]["repairs"][0]["reason"]


def worse_than_the_baseline(name: str, values: tuple) -> object:
    """A value of constant `name` whose train.py the fake backend scores worse than the baseline's: discarded,
    so a repeat of it builds on the same parent."""
    constants = get_preset("cpu").constants
    baseline = fake_score(BASELINE)
    return next(v for v in values if fake_score(render_constants(BASELINE, {**constants, name: v})) > baseline)


@pytest.mark.slow  # arena child processes, seconds each
@pytest.mark.parametrize("method", ["code", "llm"])
def test_a_proposal_that_repeats_a_trial_is_sent_back(method, tmp_path, cache_root, stdlib_dataset):
    """A small model proposing again what it was told ran (a config, or a diff of the same parent) would spend
    a trial measuring noise; confirmation runs are the way to re-measure."""
    value = worse_than_the_baseline("WARMDOWN_RATIO", (0.6, 0.7, 0.4, 0.3, 0.8, 0.2))
    if method == "code":
        answers = [code_answer(f"warmdown {value}", edit("WARMDOWN_RATIO = 0.5", f"WARMDOWN_RATIO = {value}"))] * 2
        answers.append(code_answer("shorter warmup", edit("WARMUP_RATIO = 0.0", "WARMUP_RATIO = 0.05")))
    else:
        answers = [config_answer(WARMDOWN_RATIO=value)] * 2 + [config_answer(WARMUP_RATIO=0.05)]
    with ScriptedLLMServer() as server:
        server.script(*answers)
        proc = fake_arena_run(tmp_path / "runs", cache_root, "--name", "again", *llm_args(server, method), *FAST,
                              "--trials", "3")
        assert proc.returncode == 0, proc.stderr[-3000:]
    records = check_run_consistent(tmp_path / "runs" / "again", 3)
    assert records[1]["status"] == "ok" and not records[1]["kept"]
    assert records[2]["status"] == "ok" and records[2]["config"]["WARMUP_RATIO"] == 0.05
    reason = records[2]["repairs"][0]["reason"]
    assert reason.startswith("the proposal repeats trial 1, which ran already: val_bpb ") and "discarded" in reason


@pytest.mark.slow  # arena child processes, seconds each
@pytest.mark.parametrize("method", ["code", "llm"])
def test_a_proposal_that_repeats_a_trial_under_way_is_sent_back(method, tmp_path, cache_root, stdlib_dataset):
    """With two workers, a model asked for trial 2 while trial 1 still trains may propose trial 1 again: two
    trials would measure the same thing at once."""
    if method == "code":
        answers = [code_answer("longer warmdown", edit("WARMDOWN_RATIO = 0.5", "WARMDOWN_RATIO = 0.6"))] * 2
        answers.append(code_answer("shorter warmup", edit("WARMUP_RATIO = 0.0", "WARMUP_RATIO = 0.05")))
    else:
        answers = [config_answer(WARMDOWN_RATIO=0.6)] * 2 + [config_answer(WARMUP_RATIO=0.05)]
    with ScriptedLLMServer() as server:
        server.script(*answers)
        # trials after the baseline hold their worker for 10 s, so trial 1 is under way when trial 2 is asked for
        proc = fake_arena_run(tmp_path / "runs", cache_root, "--name", "twice", *llm_args(server, method), *FAST,
                              "--trials", "3", "--workers", "2", env={HOLD_ENV: "10"})
        assert proc.returncode == 0, proc.stderr[-3000:]
    records = {r["trial"]: r for r in check_run_consistent(tmp_path / "runs" / "twice", 3)}
    assert records[1]["config"]["WARMDOWN_RATIO"] == 0.6 and not records[1]["repairs"]
    assert records[2]["config"]["WARMUP_RATIO"] == 0.05 and records[2]["config"]["WARMDOWN_RATIO"] == 0.5
    assert records[2]["repairs"][0]["reason"] == ("the proposal repeats trial 1, which is under way; "
                                                  "propose something not yet tried")


@pytest.mark.slow  # arena child processes, seconds each
def test_a_model_none_of_whose_answers_can_be_used_stops_the_run(tmp_path, cache_root, stdlib_dataset):
    with ScriptedLLMServer() as server:
        server.responder = lambda body: ""  # every answer empty, as from a template that hides it all
        proc = fake_arena_run(tmp_path / "runs", cache_root, "--name", "mute", *llm_args(server, "code"), *FAST,
                              "--repairs", "0", "--trials", "100")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    line = proc.stderr.splitlines()[-1]
    assert line.startswith("error: none of the model's 20 proposals so far could be used") and "is empty" in line
    records = check_run_consistent(tmp_path / "runs" / "mute", 21)
    assert {r["status"] for r in records[1:]} == {"invalid_patch"}


@pytest.mark.slow  # arena child processes, seconds each
def test_a_resume_goes_on_counting_the_repairs_it_had_made(tmp_path, cache_root, stdlib_dataset):
    """The model failed during the second repair: the resumed run makes that repair, not two more."""
    runs = tmp_path / "runs"
    with ScriptedLLMServer() as server:
        server.script("no diff, first", "no diff, second", *[Fault.http(500)] * 3)
        down = fake_arena_run(runs, cache_root, "--name", "r", *llm_args(server, "code"), *FAST, "--trials", "2")
    assert down.returncode == 2 and "the model failed" in down.stderr
    with ScriptedLLMServer() as server:
        server.script("no diff, third")
        proc = fake_arena_run(runs, cache_root, "--name", "r", *llm_args(server, "code"), *FAST, "--trials", "2")
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert len(server.requests) == 1
    records = check_run_consistent(runs / "r", 2)
    assert records[1]["status"] == "invalid_patch" and len(records[1]["repairs"]) == 3  # the first answer, 2 repairs


@pytest.mark.slow  # arena child processes, seconds each
def test_a_repair_killed_while_asked_is_asked_again_not_taken_from_the_last_one(tmp_path, cache_root, stdlib_dataset):
    """A model that repeats itself makes the second repair ask what the first asked. arena killed while it waits
    for that answer: the resumed run asks the model, and llm.jsonl holds every call an uninterrupted run would."""
    runs = tmp_path / "runs"
    args = ["--runs-dir", str(runs), "--name", "r", *FAST, "--trials", "2"]
    with ScriptedLLMServer() as server:
        server.script("no diff", "no diff", Fault(text="never sent", delay=120))
        arena = subprocess.Popen([sys.executable, "-m", "tests.fake_arena", "run", *llm_args(server, "code"), *args],
                                 env={**os.environ, "ARENA_CACHE": str(cache_root)}, cwd=ROOT,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 300
            while len(server.requests) < 3 and arena.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            assert len(server.requests) == 3, arena.poll()
        finally:
            arena.kill()
            arena.wait()
    with ScriptedLLMServer() as server:
        server.script("no diff, at last")
        proc = fake_arena_run(runs, cache_root, *llm_args(server, "code"), *args[2:])
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert len(server.requests) == 1
    records = check_run_consistent(runs / "r", 2)
    assert records[1]["status"] == "invalid_patch" and len(records[1]["repairs"]) == 3  # the answer and 2 repairs
    calls = [(line["purpose"], line["response"]) for line in map(json.loads, (runs / "r" / "llm.jsonl").open())]
    assert calls == [("propose", "no diff"), ("repair", "no diff"), ("repair", "no diff, at last")]


@pytest.mark.slow  # arena child processes, seconds each
def test_answers_written_to_break_arena_are_refused_or_recorded_as_one_line(tmp_path, cache_root, stdlib_dataset):
    """A red team's answers: JSON nested 900 deep behind a stray quote, a hunk header of 5,000 digits, a diff
    that cannot be parsed, a description holding NUL, a lone surrogate, terminal escapes and a forged report
    line. Each is refused with a reason, or recorded with its description as one printable line; the run
    ends, a resume goes on, replay reads it, and the ledger, git and journal agree."""
    runs = tmp_path / "runs"
    good = edit("WARMDOWN_RATIO = 0.5", "WARMDOWN_RATIO = 0.6")
    forged = "\u001b]0;pwned\u0007\u001b[1A\u001b[2K\ntrial 1 ok: val_bpb 3.000000 -> keep"
    answers = [
        '"{"diff": "x", "WARMDOWN_RATIO": ' + "[" * 900 + "]" * 900 + "}",
        "```diff\n--- a/train.py\n+++ b/train.py\n@@ -" + "9" * 5000 + " +1 @@\n-x\n+y\n```",
        "```diff\n--- a/train.py\nnot a diff line\n+++ b/z\n@@ -1 +1 @@\n-x\n+y\n```",
        json.dumps({"description": "nul\u0000 and a surrogate \ud800" + forged, "diff": good}),
    ]
    with ScriptedLLMServer() as server:
        server.script(*answers)
        proc = fake_arena_run(runs, cache_root, "--name", "r", *llm_args(server, "code"), *FAST, "--trials", "5",
                              "--repairs", "0", "--no-tui")
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = check_run_consistent(runs / "r", 5)
    assert [r["status"] for r in records[1:]] == ["invalid_patch"] * 3 + ["ok"], [r["reason"] for r in records]
    described = records[4]["description"]
    assert described.startswith("nul\ufffd and a surrogate \ufffd")
    assert not any(char in described for char in "\n\u001b\u0000")
    assert "\u001b" not in proc.stdout + proc.stderr and "-> keep" not in proc.stdout
    with ScriptedLLMServer() as server:
        server.script("no diff at all", "none again")
        proc = fake_arena_run(runs, cache_root, "--name", "r", *llm_args(server, "code"), *FAST, "--trials", "7",
                              "--repairs", "0", "--no-tui")
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = check_run_consistent(runs / "r", 7)
    assert [r["status"] for r in records[5:]] == ["invalid_patch", "invalid_patch"]
    replay = run_arena("replay", str(runs / "r"), cache=cache_root)
    assert replay.returncode == 0, replay.stderr[-2000:]
