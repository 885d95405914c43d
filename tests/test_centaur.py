"""Centaur: the exact LLM share, the CMA-ES state in the prompt, fallbacks, and an identical resume."""

from __future__ import annotations

import json
import pickle
from dataclasses import replace
from fractions import Fraction

import pytest

from agent.methods import make_method
from agent.methods.base import Context, Proposal
from agent.methods.centaur import Centaur, is_llm_turn
from agent.presets import get_preset
from agent.record import TrialRecord
from agent.run import RunSettings
from agent.space import load_space
from agent.ui.export import html_report, markdown_report
from agent.ui.report import trial_facts
from agent.ui.sources import open_history
from sandbox.outcome import Status
from tests.llm_server import Fault, ScriptedLLMServer
from tests.run_helpers import check_run_consistent, fake_arena_run
from tests.test_llm_methods import FAST, LLM_TIMEOUT, llm_args

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
SPACE = load_space("cpu")
START = get_preset("cpu").constants


@pytest.mark.parametrize("ratio", ["0.3", "0.25", "0.8", "0.1", "1", "0"])
def test_llm_share_is_exact(ratio):
    r = Fraction(ratio)
    turns = [is_llm_turn(i, r) for i in range(100)]
    assert abs(sum(turns) - 100 * r) < 1
    for n in range(1, 101):  # at every point of the run, not only at the end
        assert abs(sum(turns[:n]) - n * r) < 1


def fake_record(trial: int, config: dict, value: float | None) -> TrialRecord:
    return TrialRecord(trial=trial, kind="proposal", method="centaur", status=Status.OK if value else Status.OOM,
                       val_bpb=value, config=config, peak_memory_gb=1.0, description="x")


def objective(config: dict) -> float | None:
    if config["DEVICE_BATCH_SIZE"] * config["DEPTH"] >= 96:
        return None  # pretend big models run out of memory
    return 2.0 + abs(config["MATRIX_LR"] - 0.05) + 0.01 * config["DEPTH"]


def drive(centaur: Centaur, records: list[TrialRecord], n: int) -> list:
    proposals = []
    for _ in range(n):
        trial = len(records)
        best = min((r for r in records if r.val_bpb), key=lambda r: r.val_bpb or 0.0)
        proposal = centaur.propose(Context(trial, records, best, "", SPACE))
        record = fake_record(trial, proposal.config, objective(proposal.config))
        records.append(record)
        centaur.observe(record)
        proposals.append(proposal)
    return proposals


def centaur_for(server: ScriptedLLMServer, run_dir) -> Centaur:
    (run_dir / "state").mkdir(parents=True)
    settings = RunSettings(name="c", method="centaur", model="openai/test-model", api_base=server.api_base,
                           llm_ratio=0.3, llm_warmup=10, llm_timeout=LLM_TIMEOUT, llm_retries=0)
    return make_method(settings, SPACE, run_dir)


@pytest.mark.slow  # 140 proposals, 40 of them LLM calls over loopback HTTP
def test_centaur_share_prompt_fallback_and_resume(tmp_path):
    llm_config = {**START, "MATRIX_LR": 0.05}
    with ScriptedLLMServer() as server:
        # 100 proposals: 10 warm-up, then floor(90 * 0.3) = 27 LLM turns; two of them answer badly
        server.script("no JSON here", json.dumps({**START, "DEPTH": 99}), *[json.dumps(llm_config)] * 25)
        centaur = centaur_for(server, tmp_path)
        baseline = replace(fake_record(0, START, objective(START)), kind="baseline", method="baseline")
        records = [baseline]
        centaur.observe(baseline)
        proposals = drive(centaur, records, 60)
        saved = pickle.dumps(centaur.state())
        later = drive(centaur, records, 40)
        requests = list(server.requests)
        assert server.remaining == 0
    sources = [p.meta["source"] for p in proposals + later]
    assert sources[:10] == ["cmaes"] * 10
    assert sources.count("llm") + sources.count("cmaes-fallback") == 27
    assert sources.count("cmaes-fallback") == 2
    fallbacks = [p for p in proposals + later if p.meta["source"] == "cmaes-fallback"]
    assert "not" in fallbacks[0].meta["llm_error"].lower() or "json" in fallbacks[0].meta["llm_error"].lower()
    assert "DEPTH" in fallbacks[1].meta["llm_error"]
    assert all(p.config == llm_config for p in proposals + later if p.meta["source"] == "llm")
    for p in proposals + later:
        SPACE.check(p.config)
    prompt = requests[-1]["messages"][1]["content"]
    assert any(r.status is Status.OOM for r in records[:-1])
    assert "CMA-ES state" in prompt and "CMA-ES's own next candidate" in prompt
    assert "MATRIX_LR: mean" in prompt and "Strongest correlations" in prompt and "Best 5 trials" in prompt
    assert "ran out of memory or time" in prompt  # the failed configurations are shown
    # resume: a fresh Centaur restored from the mid-run state proposes exactly what the original did
    with ScriptedLLMServer() as server:
        server.script(*[json.dumps(llm_config)] * 40)
        restored = centaur_for(server, tmp_path / "again")
        restored.restore(pickle.loads(saved))
        records2 = records[:61]
        again = drive(restored, records2, 40)
    assert [p.config for p in again] == [p.config for p in later]
    assert [p.meta["source"] for p in again] == [p.meta["source"] for p in later]


def test_an_llm_config_that_ran_already_or_is_under_way_falls_back_to_cmaes(tmp_path):
    """Re-running a configuration that ran measures noise (confirmation runs do that on purpose), and one
    under way on another worker would measure it twice at once: CMA-ES's candidate runs instead, and the
    ledger says why."""
    ran, under_way = {**START, "MATRIX_LR": 0.05}, {**START, "MATRIX_LR": 0.07}
    baseline = replace(fake_record(0, START, 2.5), kind="baseline", method="baseline", commit="a" * 40)
    records = [baseline, replace(fake_record(1, ran, 2.4), commit="b" * 40)]
    (tmp_path / "state").mkdir()
    settings = RunSettings(name="c", method="centaur", model="openai/test-model", llm_ratio=1.0, llm_warmup=0,
                           llm_timeout=LLM_TIMEOUT, llm_retries=0)
    with ScriptedLLMServer() as server:
        server.script(json.dumps(ran), json.dumps(under_way), json.dumps({**ran, "MATRIX_LR": 0.06}))
        centaur = make_method(replace(settings, api_base=server.api_base), SPACE, tmp_path)
        for record in records:
            centaur.observe(record)
        in_flight = {2: Proposal("trial 2", config=under_way)}
        again, twice, fresh = (centaur.propose(Context(3, records, records[1], "", SPACE, in_flight=in_flight))
                               for _ in range(3))
    assert again.meta["source"] == "cmaes-fallback" and again.config != ran
    assert again.meta["llm_error"] == "answer rejected: the configuration repeats trial 1, which ran already"
    assert twice.meta["source"] == "cmaes-fallback" and twice.config != under_way
    assert twice.meta["llm_error"] == "answer rejected: the configuration repeats trial 2, which is under way"
    assert fresh.meta["source"] == "llm" and fresh.config["MATRIX_LR"] == 0.06


@pytest.mark.slow  # arena child processes, seconds each
def test_centaur_run_end_to_end(tmp_path, cache_root, stdlib_dataset):
    runs = tmp_path / "runs"
    with ScriptedLLMServer() as server:
        server.script(json.dumps({**START, "WARMDOWN_RATIO": 0.6}), Fault.http(500), "{not json",
                      json.dumps({**START, "EMBEDDING_LR": 0.3}))
        proc = fake_arena_run(runs, cache_root, "--name", "centaur", *llm_args(server, "centaur"),
                         "--llm-warmup", "1", "--llm-ratio", "0.75", "--llm-retries", "1", *FAST)
        assert proc.returncode == 0, proc.stderr[-3000:]
    records = check_run_consistent(runs / "centaur", 6)
    sources = [r["proposal_meta"].get("source") for r in records[1:]]
    # warm-up 1, then trial i after warm-up is the LLM's when floor((i+1)*0.75) > floor(i*0.75): 1, 2, 3
    assert sources == ["cmaes", "cmaes", "llm", "cmaes-fallback", "llm"], sources
    assert records[3]["config"]["WARMDOWN_RATIO"] == 0.6 and records[5]["config"]["EMBEDDING_LR"] == 0.3
    assert (runs / "centaur" / "state" / "journal.pkl").exists()
    history = open_history(runs / "centaur")  # the audit shows why trial 4 fell back, not only the ledger
    assert "LLM fallback" in dict(trial_facts(history.trial(4)))
    assert "**LLM fallback**: answer rejected" in markdown_report(history, history.trials)
    assert "LLM fallback" in html_report(history, history.trials)
