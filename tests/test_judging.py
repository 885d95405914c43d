"""Keep decisions (the noise margin, confirmation runs, failures that never win) and the sandbox's
verdict on a trial."""

from __future__ import annotations

import json

import pytest

from agent.errors import ArenaError
from agent.judging import best_of, confirmation_decision, decide, judge, open_candidate
from agent.ledger import Ledger
from agent.record import Decision, TrialRecord
from sandbox.outcome import BudgetRule, PhaseRun, Status, phase_failure, reported_mfu, reported_rate, summary
from sandbox.outcome import judge as judge_trial
from sandbox.phases import read_reported
from sandbox.trial import HARNESS_LOG_BYTES, KEPT_CHARS, LOG_LIMIT_BYTES, PhaseOutput


def record(trial: int, value: float | None, **fields) -> TrialRecord:
    kind = "baseline" if trial == 0 else fields.pop("kind", "proposal")
    return TrialRecord(trial=trial, kind=kind, method=kind, description=f"trial {trial}",
                       status=Status.OK if value is not None else Status.CRASH, val_bpb=value, **fields)


def test_only_a_clear_improvement_is_kept():
    assert judge("proposal", 0.99, 1.00, 0.0, 0) == (True, False)
    assert judge("proposal", 1.00, 1.00, 0.0, 0) == (False, False)  # a tie does not advance the branch
    assert judge("proposal", 0.995, 1.00, 0.01, 0) == (False, False)  # within the noise margin
    assert judge("proposal", 0.98, 1.00, 0.01, 0) == (True, False)
    assert judge("proposal", None, 1.00, 0.0, 0) == (False, False)  # oom, crash, over_budget, ... never win


def test_with_confirmation_a_winner_is_only_a_candidate():
    assert judge("proposal", 0.9, 1.0, 0.0, 2) == (False, True)
    assert judge("confirm", 0.5, 1.0, 0.0, 2) == (False, False)  # confirmation runs decide via decide()


def test_baseline_is_kept_when_it_ran():
    assert judge("baseline", 3.2, None, 0.0, 0) == (True, False)
    assert judge("baseline", None, None, 0.0, 0) == (False, False)


def test_confirmation_mean_must_still_win():
    assert decide(3, [0.97, 0.98, 0.99], 1.0, 0.0) == Decision(3, [0.97, 0.98, 0.99], True, 0.98)
    assert decide(3, [0.90, 1.05, 1.06], 1.0, 0.0).kept is False  # one lucky seed is not enough
    assert decide(3, [0.97, 0.98, 0.99], 1.0, 0.05).kept is False  # the mean must clear the margin too
    assert decide(3, [0.90, None], 1.0, 0.0) == Decision(3, [0.90, None], False, None)


def test_a_candidate_is_open_until_its_confirmations_are_in():
    records = [record(0, 1.0, kept=True), record(1, 0.9, candidate=True)]
    assert open_candidate(records, 0) is None  # no confirmation asked for
    assert open_candidate(records, 2) == records[1]
    records.append(record(2, 0.95, kind="confirm", confirms=1))
    assert open_candidate(records, 2) == records[1]
    assert confirmation_decision(records, 0.92, 1, 2, 1.0, 0.0) == Decision(1, [0.9, 0.95, 0.92], True,
                                                                             (0.9 + 0.95 + 0.92) / 3)
    assert confirmation_decision(records[:2], 0.95, 1, 2, 1.0, 0.0) is None  # one more run due
    records.append(record(3, 0.92, kind="confirm", confirms=1))
    assert open_candidate(records, 2) is None


def test_best_follows_keeps_and_confirmed_candidates():
    records = [
        record(0, 3.0, kept=True),
        record(1, 2.0, candidate=True),
        record(2, 2.2, kind="confirm", confirms=1, decision=Decision(1, [2.0, 2.2], True, 2.1)),
        record(3, 2.5),
    ]
    assert best_of(records) == (1, 2.1)
    records.append(record(4, 2.0, kept=True))
    assert best_of(records) == (4, 2.0)


def test_records_round_trip_and_old_ledgers_still_read(tmp_path):
    full = record(1, 2.0, candidate=True, proposal_meta={"llm_error": "x"}, config={"DEPTH": 4})
    assert TrialRecord.from_json(json.loads(json.dumps(full.to_json()))) == full
    old = {"trial": 0, "kind": "baseline", "method": "baseline", "description": "baseline", "status": "ok",
           "val_bpb": 3.0, "kept": True, "no_longer_known": 1}  # fields added later are missing
    (tmp_path / "ledger.jsonl").write_text(json.dumps(old) + "\n")
    [baseline] = Ledger.read(tmp_path / "ledger.jsonl").records
    assert baseline.status is Status.OK and baseline.outside_seconds is None and baseline.repairs == []
    # nulls early versions wrote, and figures they copied from the trial's self-report unchecked
    early = {**old, "reason": None, "log_tail": None, "proposal_meta": None, "reported": None, "repairs": None,
             "steps": 1.5, "gpu": 3}
    (tmp_path / "ledger.jsonl").write_text(json.dumps(early) + "\n")
    [baseline] = Ledger.read(tmp_path / "ledger.jsonl").records
    assert (baseline.reason, baseline.reported, baseline.steps, baseline.gpu) == ("", {}, None, None)


def test_a_ledger_line_of_the_wrong_shape_is_one_line(tmp_path):
    line = {"trial": 0, "kind": "baseline", "method": "baseline", "description": "baseline", "status": "ok",
            "val_bpb": "abc"}  # what broke results.tsv, replay and compare with tracebacks
    (tmp_path / "ledger.jsonl").write_text(json.dumps(line) + "\n")
    with pytest.raises(ArenaError, match="trial 0 is not a trial record \\(its val_bpb is 'abc', not float"):
        Ledger.read(tmp_path / "ledger.jsonl")


# ---------------------------------------------------------------------------- the sandbox's verdict


def phase(lines: list[str], exit_code: int = 0, ready: float | None = 1.0, end: float = 40.0, code: int = 0,
          rss_kb: int = 500_000, gpu_bytes: int | None = None, **kwargs) -> PhaseRun:
    report = {"exit_code": code, "signal": None, "ready": ready, "end": end, "deadline": False, "max_rss_kb": rss_kb,
              "gpu_peak_bytes": gpu_bytes}
    return PhaseRun(exit_code=exit_code, timed_out=False, wall_seconds=end + 1,
                    lines=[*lines, "ARENA_PHASE " + json.dumps(report) + "\n"], **kwargs)


def test_a_report_is_trusted_only_as_the_last_line():
    """Docker's log reader can fall behind the container's end: what it has read by then may end in a report a
    trial printed, followed by more of its output. Only the supervisor's line, last of all, counts."""
    forged = phase(["step 1\n"])
    behind = PhaseRun(exit_code=0, timed_out=False, wall_seconds=41, lines=[*forged.lines, "flood\n", "\n"])
    assert forged.report is not None and behind.report is None
    assert phase_failure("train", behind)[0] is Status.CRASH


def evaluation(val_bpb: float = 2.0) -> PhaseRun:
    line = "ARENA_EVAL " + json.dumps({"val_bpb": val_bpb, "val_tokens": 10, "val_bytes": 30, "eval_tokens": 10,
                                       "num_params": 5, "dataset_fingerprint": "f", "eval_seconds": 1.0})
    return phase(["secret validation detail\n", line + "\n"], ready=None, end=3.0)


def test_the_allowance_follows_the_baseline_and_the_machine():
    assert BudgetRule(30, 30).allowance(1.0) == 30  # the baseline: the preset's cap
    rule = BudgetRule(30, 30, reference=(3.0, 1.0))
    assert rule.allowance(1.0) == 16.0           # 2 x 3 s + 10 s
    assert rule.allowance(0.5) == 16.0           # a faster start never shrinks it
    assert rule.allowance(1.5) == 24.0           # 1.5x slower machine, 1.5x the allowance
    assert rule.allowance(10.0) == 30            # never past the cap


def test_time_outside_the_budget_is_measured_not_reported():
    rule = BudgetRule(30, 30, reference=(3.0, 1.0))
    ok = judge_trial(phase(["step=0\n"], ready=1.0, end=46.0), evaluation(), rule, {"training_seconds": 1.0})
    assert ok.status is Status.OK and ok.result["work_seconds"] == 45.0 and ok.result["outside_seconds"] == 15.0
    assert ok.result["peak_memory_gb"] == 500_000 * 1024 / 1e9 and ok.result["reported"] == {"training_seconds": 1.0}
    late = judge_trial(phase(["step=0\n"], ready=1.0, end=48.0), evaluation(), rule, {})
    assert late.status is Status.OVER_BUDGET and "17.0 s past the 30 s budget; allowance 16.0 s" in late.reason
    assert late.val_bpb == 2.0  # measured, kept for the record, never a winner


def test_a_report_counts_only_from_a_supervisor_that_finished():
    forged = phase(["step=0\n"], exit_code=137)  # its supervisor was killed: the last report may be forged
    outcome = judge_trial(forged, evaluation(), BudgetRule(30, 30), {})
    assert outcome.status is Status.CRASH and "without its supervisor's report" in outcome.reason


def test_eval_output_never_reaches_the_log_tail():
    outcome = judge_trial(phase(["step=0 loss=1.0\n"]), evaluation(), BudgetRule(30, 30), {})
    assert "step=0" in outcome.log_tail and "secret validation detail" not in outcome.log_tail
    rejected = phase(["secret validation detail\n", "ARENA_REJECTED causality: the model sees the future\n"],
                     ready=None, code=5)
    outcome = judge_trial(phase(["step=0\n"]), rejected, BudgetRule(30, 30), {})
    assert outcome.status is Status.REJECTED and outcome.reason == "causality: the model sees the future"
    assert "secret" not in outcome.reason + outcome.log_tail
    crashed = judge_trial(phase(["step=0\n"]), phase(["secret validation detail\n"], ready=None, code=1),
                          BudgetRule(30, 30), {})
    assert crashed.status is Status.CRASH and crashed.reason == "eval phase exited with code 1"


def test_numbers_in_an_eval_verdict_are_masked():
    """A shape or a position in an eval-phase verdict may have been computed from validation tokens; names keep
    their digits."""
    rejected = phase(["ARENA_REJECTED operator: aten.conv2d got float32 shapes (0, 634, 558), 37x2048, -1.5e-05 "
                      "and nan\n"], ready=None, code=5)
    outcome = judge_trial(phase(["step=0\n"]), rejected, BudgetRule(30, 30), {})
    assert outcome.reason == "operator: aten.conv2d got float32 shapes (#, #, #), #x#, -#.#e-# and #"
    crashed = judge_trial(phase(["step=0\n"]), phase(["ARENA_DATA row 634 of 1032\n"], ready=None, code=1),
                          BudgetRule(30, 30), {})
    assert crashed.reason == "eval phase exited with code 1: ARENA_DATA row # of #"


def test_a_long_log_tail_is_bounded():
    outcome = judge_trial(phase(["x" * 10_000 + "\n"] * 200, code=1), None, BudgetRule(30, 30), {})
    assert outcome.status is Status.CRASH and len(outcome.log_tail) <= 8192
    assert all(len(line) <= 302 for line in outcome.log_tail.splitlines())


def test_nan_is_never_ok():
    outcome = judge_trial(phase(["step=0\n"]), evaluation(float("nan")), BudgetRule(30, 30), {})
    assert outcome.status is Status.NAN


def test_the_trusted_baseline_is_never_over_budget():
    rule = BudgetRule(30, 30)
    slow = phase(["step=0\n"], ready=1.0, end=120.0)  # a busy machine: 89 s outside a 30 s budget
    assert judge_trial(slow, evaluation(), rule, {}).status is Status.OVER_BUDGET
    outcome = judge_trial(slow, evaluation(), rule, {}, trusted=True)
    assert outcome.status is Status.OK and outcome.result["outside_seconds"] == 89.0  # the measure for the rest


def test_words_about_memory_in_the_log_do_not_make_a_trial_oom():
    """Only a phase that failed is read for out-of-memory errors: a trial that prints them (or catches one and
    goes on) and exits cleanly is judged on what it did."""
    said = ["note: torch.OutOfMemoryError: CUDA out of memory, caught and retried smaller\n"]
    assert judge_trial(phase(said), evaluation(), BudgetRule(30, 30), {}).status is Status.OK
    assert judge_trial(phase(said, code=1), None, BudgetRule(30, 30), {}).status is Status.OOM


@pytest.mark.parametrize("message", [
    "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB",
    "RuntimeError: CUDA error: out of memory",  # the driver's, outside the caching allocator
    "RuntimeError: Triton Error [CUDA]: out of memory",  # loading a compiled kernel
    "RuntimeError: cuDNN error: CUDNN_STATUS_ALLOC_FAILED",
    "RuntimeError: CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`",
    "MemoryError",
])
def test_every_way_of_running_out_of_memory_is_oom(message):
    assert judge_trial(phase([message + "\n"], code=1), None, BudgetRule(30, 30), {}).status is Status.OOM
    other = phase(["RuntimeError: Triton Error [CUDA]: invalid argument\n"], code=1)
    assert judge_trial(other, None, BudgetRule(30, 30), {}).status is Status.CRASH


def test_peak_memory_is_that_of_the_device_the_preset_trains_on():
    rule, host = BudgetRule(30, 30), 500_000 * 1024 / 1e9
    both = phase(["step=0\n"], gpu_bytes=40_000_000_000)
    assert judge_trial(both, evaluation(), rule, {}, on_gpu=True).result["peak_memory_gb"] == 40.0
    cpu = judge_trial(both, evaluation(), rule, {}).result  # a CPU preset beside GPUs that others use
    assert cpu["peak_memory_gb"] == host and cpu["gpu_memory_gb"] == 40.0
    # GPUs the supervisor could not read: no peak, rather than the host's, which the memory model would learn
    unread = judge_trial(phase(["step=0\n"]), evaluation(), rule, {}, on_gpu=True)
    assert unread.status is Status.OK and unread.result["peak_memory_gb"] is None
    assert unread.result["host_memory_gb"] == host and "peak_mem_mb:      n/a" in summary(unread)


def test_what_a_trial_reports_is_kept_only_when_arena_can_compute_with_it(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "train_stats.json").write_text('{"timed_tokens": 1' + "0" * 400 + ', "training_seconds": 2.0, '
                                          '"steps": true, "mfu": NaN, "peak_flops": Infinity, "label": "ok", '
                                          '"flops_per_token": 6e6}')
    reported = read_reported(out)
    assert reported == {"training_seconds": 2.0, "label": "ok", "flops_per_token": 6e6}
    outcome = judge_trial(phase(["step=0\n"]), evaluation(), BudgetRule(30, 30), reported)
    assert summary(outcome)  # the rates it shows are computed from these without an error


def test_control_characters_a_trial_prints_or_reports_never_reach_a_terminal(tmp_path):
    """An escape sequence could draw a fake result line, retitle the window or write to the clipboard wherever
    trial output is shown (terminal, live view, replay) or passed on (the ledger's reason, an LLM prompt)."""
    logged: list[str] = []
    output = PhaseOutput(logged.append)
    output("\x1b[2K\rok: val_bpb 0.100000\x1b]52;c;cHduZWQ=\x07\x9b31m\ttab kept\n")
    assert logged == list(output.lines) == ["\ufffd[2K\ufffdok: val_bpb 0.100000\ufffd]52;c;cHduZWQ=\ufffd\ufffd31m"
                                            "\ttab kept\n"]
    output("train\u2028ok: val_bpb 0.1 \u202eevil\n")  # a line break to Unicode, a change of direction
    assert logged[-1] == "train\ufffdok: val_bpb 0.1 \ufffdevil\n"
    (tmp_path / "train_stats.json").write_text('{"device_name": "\\u001b]0;pwned\\u0007H100", "steps": 3}')
    assert read_reported(tmp_path) == {"device_name": "\ufffd]0;pwned\ufffdH100", "steps": 3}


def test_a_phase_output_keeps_a_bounded_tail_and_log():
    logged: list[str] = []
    output = PhaseOutput(logged.append)
    for _ in range(40):
        output("x" * (1 << 20) + "\n")  # 40 MB of output: past the log's limit
    for _ in range(3000):
        output("ARENA_FORGED " + "y" * 1000 + "\n")  # harness-like lines pass the cut, up to their own limit
    output("ARENA_PHASE {}\n")
    assert sum(map(len, logged)) < LOG_LIMIT_BYTES + HARNESS_LOG_BYTES + (2 << 20)
    assert sum(map(len, output.lines)) <= KEPT_CHARS and output.lines[-1] == "ARENA_PHASE {}\n"


def test_mfu_is_counted_against_the_gpus_own_peak():
    """An H100 PCIe or NVL has less than the SXM part's 989.5 TFLOP/s the harness takes for every H100: arena
    knows each by its name; a GPU it does not know keeps the harness's figure, and a CPU has no MFU."""
    rate = {"timed_tokens": 1_000_000, "training_seconds": 1.0, "flops_per_token": 1e8}  # 1e14 FLOP/s
    for name, percent in (("NVIDIA H100 PCIe", 100 / 7.56), ("NVIDIA H100 NVL", 100 / 8.35),
                          ("NVIDIA H100 80GB HBM3", 100 / 9.895), ("NVIDIA A10", 80.0),
                          ("NVIDIA A100-SXM4-80GB", 100 / 3.12), ("NVIDIA H200 NVL", 100 / 8.35),
                          ("NVIDIA H200", 100 / 9.895), ("NVIDIA L40", 100 / 1.81), ("NVIDIA L40S", 100 / 3.62),
                          ("NVIDIA L4", 100 / 1.21)):
        assert reported_mfu({**rate, "device_name": name, "peak_flops": 989.5e12}) == pytest.approx(percent), name
    assert reported_mfu({**rate, "device_name": "NVIDIA RTX PRO 6000", "peak_flops": 500e12}) == pytest.approx(20.0)
    assert reported_mfu({**rate, "device_name": "cpu", "peak_flops": None}) is None


def test_a_report_whose_rate_is_not_finite_gives_none():
    """Reported figures are bounded (sandbox.phases.plain), yet 2**53 tokens in 5e-324 s is a rate of inf, which
    the ledger would write as Infinity, not JSON: no rate and no MFU instead."""
    report = {"timed_tokens": 2**53, "training_seconds": 5e-324, "flops_per_token": 1e8, "device_name": "NVIDIA H100"}
    assert reported_rate(report) is None and reported_mfu(report) is None
    huge = {**report, "training_seconds": 1e-290, "flops_per_token": 2**53}
    assert reported_rate(huge) is not None and reported_mfu(huge) is None  # the rate is finite, its MFU is not
