"""What happened to a trial: one status out of a fixed set, judged only on what was measured outside it."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TypedDict, cast

from sandbox.supervisor import FULL_FRACTION, MAX_FILES

RESULT_PREFIX = "ARENA_EVAL "
PHASE_PREFIX = "ARENA_PHASE "
REJECTED_PREFIX = "ARENA_REJECTED "
EXIT_DIVERGED = 3   # harness.py: the loss diverged (NaN or exploding)
EXIT_CONTRACT = 4   # harness.py: the model broke the contract (not a module, not exportable)
EXIT_REJECTED = 5   # harness.py: the exported model failed a check of the eval phase
# Digits in an eval-phase verdict, unless a name holds them (float32, conv2d; "x" counts as a separator: 37x2048),
# and the words of a non-finite number: what may have been computed from validation tokens
NUMBER = re.compile(r"(?<![A-WYZa-wyz_\d])\d+|(?<![\w.])(nan|inf)(?!\w)", re.IGNORECASE)
# what a failed train phase prints when memory ran out: PyTorch's caching allocator and the host's, and on the
# GPU also what fails outside that allocator (the driver, Triton's launcher, cuBLAS' and cuDNN's workspaces)
OOM_PATTERNS = re.compile(r"CUDA out of memory|OutOfMemoryError|MemoryError|CUBLAS_STATUS_ALLOC_FAILED|"
                          r"CUDNN_STATUS_ALLOC_FAILED|CUDA error: out of memory|\[CUDA\]: out of memory|"
                          r"Cannot allocate memory|HIP out of memory")
LOG_TAIL_LINES = 60
LOG_TAIL_LINE_CHARS = 300
LOG_TAIL_BYTES = 8192
# The allowance for time outside the budget (start-up, compile warm-up, export), once the baseline has
# measured its own: ALLOWANCE_MARGIN times the baseline's, plus ALLOWANCE_FLOOR seconds, stretched by
# how much slower the machine is now than then (measured on the harness's own start-up, before any trial
# code runs), and never more than the preset's cap.
ALLOWANCE_MARGIN = 2.0
ALLOWANCE_FLOOR = 10.0


class Status(StrEnum):  # str(status) and f-strings give the value: "ok", "oom", ...
    OK = "ok"
    OOM = "oom"
    CRASH = "crash"
    NAN = "nan"
    TIMEOUT = "timeout"
    OVER_BUDGET = "over_budget"
    REJECTED = "rejected"
    INVALID_PATCH = "invalid_patch"
    LOST = "lost"  # the machine running it was lost (a Ray node or worker died, also on its retry)
    INFEASIBLE = "infeasible"  # not run: the memory model predicted it would not fit (agent/feasibility.py)


NOT_RUN: tuple[Status, ...] = (Status.INVALID_PATCH, Status.INFEASIBLE)  # refused before a sandbox started
# What another tool's error message names, for trials arena reads but did not run (the paper's runner wrote
# "GPU out-of-memory" and "Timeout after 300.0s"): the words of OOM_PATTERNS and a few plainer ones; anything
# else is a crash.
NAMED_FAILURES = ((re.compile(rf"{OOM_PATTERNS.pattern}|out[ -]of[ -]memory|\boom\b", re.IGNORECASE), Status.OOM),
                  (re.compile(r"timeout|timed out", re.IGNORECASE), Status.TIMEOUT),
                  (re.compile(r"\bnan\b|non-finite", re.IGNORECASE), Status.NAN))


def failure_named(error: str | None) -> Status:
    """The failure an error message of another tool's trial record names; a crash when it names none."""
    return next((status for pattern, status in NAMED_FAILURES if pattern.search(error or "")), Status.CRASH)


FAILURES: tuple[Status, ...] = tuple(status for status in Status if status is not Status.OK)  # in report order


@dataclass(frozen=True)
class BudgetRule:
    """How long a train phase may take: the budget plus an allowance for the work outside it."""
    budget: float
    cap: float                                  # the preset's start-up allowance: the most any trial gets
    reference: tuple[float, float] | None = None  # the baseline's (seconds outside the budget, start-up seconds)

    def allowance(self, ready_seconds: float) -> float:
        if self.reference is None:
            return self.cap
        outside, startup = self.reference
        slowdown = max(1.0, ready_seconds / max(startup, 0.1))
        return min(self.cap, (ALLOWANCE_MARGIN * max(outside, 0.0) + ALLOWANCE_FLOOR) * slowdown)


@dataclass(frozen=True)
class PhaseReport:
    """The supervisor's account of a phase: exit status, times since its start, the largest process."""
    exit_code: int | None
    signal: int | None
    ready: float | None
    end: float | None
    deadline: bool
    max_rss_kb: int
    gpu_peak_bytes: int | None = None
    memory_exceeded: bool = False  # the supervisor ended it past the phase's memory limit
    disk: str | None = None  # the supervisor ended it: "exceeded" its share of the disk, or the disk was "full"
    failed_to_start: str | None = None  # why the supervisor could not start the harness (the sandbox's fault)
    stopped: bool = False  # a process of the phase stopped the supervisor; it ended the phase once continued

    @classmethod
    def parse(cls, line: str) -> PhaseReport | None:
        try:
            raw = json.loads(line[len(PHASE_PREFIX):])
            return cls(raw["exit_code"], raw["signal"], raw["ready"], raw["end"], bool(raw["deadline"]),
                       int(raw["max_rss_kb"]), raw.get("gpu_peak_bytes"), bool(raw.get("memory_exceeded")),
                       raw.get("disk") if raw.get("disk") in ("exceeded", "full") else None,
                       raw["failed_to_start"] if isinstance(raw.get("failed_to_start"), str) else None,
                       raw.get("stopped") is True)
        except (ValueError, KeyError, TypeError):
            return None


@dataclass
class PhaseRun:
    """How one phase ended, as seen from outside it."""
    exit_code: int | None     # of the sandbox process or container: 0 when the supervisor finished its work
    timed_out: bool           # killed by the backend's own outer deadline
    wall_seconds: float
    lines: list[str] = field(default_factory=list)
    oom_killed: bool = False  # the container engine or kernel killed it for memory
    supervisor_stopped: bool = False  # the backend found its supervisor stopped (SIGSTOP) and ended it

    @property
    def report(self) -> PhaseReport | None:
        """The supervisor's line, trusted only as the very last of the output (the trial may print look-alikes
        before it, and a reader that fell behind the sandbox's end has not reached it) and only when the
        supervisor itself exited cleanly."""
        if self.exit_code != 0:
            return None
        last = next((line for line in reversed(self.lines) if line.strip()), None)
        return PhaseReport.parse(last) if last is not None and last.startswith(PHASE_PREFIX) else None

    @property
    def succeeded(self) -> bool:
        """Whether what ran in the phase exited 0, by its supervisor's report, and nothing killed it for memory."""
        report = self.report
        return report is not None and report.exit_code == 0 and not self.oom_killed

    @property
    def over_memory(self) -> bool:
        """Whether the phase went over its memory limit: its supervisor stopped it, or the kernel or engine."""
        report = self.report
        return self.oom_killed or (report is not None and report.memory_exceeded)

    def last_line(self, prefix: str = "") -> str | None:
        return next((line.strip() for line in reversed(self.lines)
                     if line.strip() and line.startswith(prefix) and not line.startswith(PHASE_PREFIX)), None)


Reported = dict[str, int | float | str | None]  # what the trial says of itself (phases.read_reported)


class EvalResult(TypedDict):
    """The eval phase's one ARENA_EVAL line, printed by the harness."""
    val_bpb: float
    val_tokens: int
    val_bytes: int
    eval_tokens: int
    num_params: int
    dataset_fingerprint: str
    eval_seconds: float


EVAL_FIELDS: dict[str, type | tuple[type, ...]] = {
    "val_bpb": (int, float), "val_tokens": int, "val_bytes": int, "eval_tokens": int, "num_params": int,
    "dataset_fingerprint": str, "eval_seconds": (int, float)}


class Measured(TypedDict):
    """Time and memory of the train phase, as its supervisor measured them (seconds, gigabytes)."""
    work_seconds: float
    outside_seconds: float
    ready_seconds: float
    allowance_seconds: float
    peak_memory_gb: float | None  # the device's: the GPUs' on a GPU preset (None where they could not be read)
    host_memory_gb: float
    gpu_memory_gb: float | None


class TrialResult(EvalResult, Measured):
    """A scored trial: the eval phase's result, what was measured, and what the trial reported."""
    reported: Reported


@dataclass
class Outcome:
    status: Status
    reason: str
    result: TrialResult | None = None
    log_tail: str = ""
    train_wall_seconds: float = 0.0
    eval_wall_seconds: float = 0.0

    @property
    def val_bpb(self) -> float | None:
        return self.result["val_bpb"] if self.result else None


def tail(lines: list[str]) -> str:
    """The end of the train phase's output, bounded in lines and bytes: what a code agent may be shown."""
    kept = [line if len(line) <= LOG_TAIL_LINE_CHARS else line[:LOG_TAIL_LINE_CHARS] + "…\n"
            for line in lines if not line.startswith(PHASE_PREFIX) and line.strip()][-LOG_TAIL_LINES:]
    text = "".join(kept)
    return text[-LOG_TAIL_BYTES:]


def parse_result(lines: list[str]) -> EvalResult | None:
    """The last ARENA_EVAL line, when it holds every field of an EvalResult with its type."""
    for line in reversed(lines):
        if line.startswith(RESULT_PREFIX):
            try:
                result = json.loads(line[len(RESULT_PREFIX):])
            except (ValueError, RecursionError):
                return None
            if isinstance(result, dict) and all(isinstance(result.get(key), kind) for key, kind in EVAL_FIELDS.items()):
                return cast(EvalResult, result)  # its fields were checked just above
            return None
    return None


def without_numbers(verdict: str) -> str:
    """An eval-phase verdict with its numbers masked: a shape or a position there may have been computed
    from validation tokens (an exported graph can make any of them a tensor's size), and the reason goes
    to the ledger and into the next prompt. Numbers inside names (float32, conv2d) stay."""
    return NUMBER.sub("#", verdict)


def phase_failure(phase: str, run: PhaseRun) -> tuple[Status, str] | None:
    """Why a phase failed, or None when it exited cleanly. Eval-phase reasons carry no output of the
    phase beyond the harness's own verdict lines, numbers masked, so nothing measured on validation data
    leaks out."""
    report = run.report
    if run.supervisor_stopped or (report is not None and report.stopped):
        return Status.CRASH, (f"{phase} phase stopped its supervisor (SIGSTOP), which watches its memory and disk, "
                              "and was ended")
    if report is not None and report.memory_exceeded:
        return Status.OOM, f"{phase} phase went over the trial's memory limit and was stopped at once"
    if report is not None and report.disk == "exceeded":
        return Status.CRASH, (f"{phase} phase wrote more than half the disk space free at its start (or more "
                              f"than {MAX_FILES:,} files, or files where they cannot be counted) and was stopped "
                              "at once")
    if report is not None and report.disk == "full":
        return Status.CRASH, (f"{phase} phase was stopped: the disk holding its output was nearly full (under "
                              f"1/{FULL_FRACTION} of its free space or free inodes at the start)")
    if run.oom_killed:  # the kernel's kill at the limit of the phase's own cgroup (Docker's or arena's)
        return Status.OOM, f"{phase} phase went over the trial's memory limit and the kernel killed it"
    failed = report is None or report.exit_code != 0 or report.signal is not None
    if phase == "train" and failed and OOM_PATTERNS.search("".join(run.lines[-200:])):
        return Status.OOM, f"{phase} phase ran out of memory"
    if run.timed_out or (report is not None and report.deadline):
        return Status.TIMEOUT, f"{phase} phase killed after {run.wall_seconds:.0f} s"
    if report is None:
        return Status.CRASH, (f"{phase} phase ended without its supervisor's report (sandbox exit code "
                              f"{run.exit_code}): the sandbox itself failed or was killed")
    if report.signal is not None:
        return Status.CRASH, f"{phase} phase was killed by signal {report.signal}"
    if report.exit_code == 0:
        return None
    if phase == "eval":
        if report.exit_code == EXIT_REJECTED:
            verdict = run.last_line(REJECTED_PREFIX) or "rejected"
            return Status.REJECTED, without_numbers(verdict.removeprefix(REJECTED_PREFIX))[:300]
        last = run.last_line("ARENA_")
        detail = f": {without_numbers(last)[:300]}" if last else ""
        return Status.CRASH, f"eval phase exited with code {report.exit_code}{detail}"
    if report.exit_code == EXIT_DIVERGED:
        return Status.NAN, (run.last_line("ARENA_DIVERGED") or "loss diverged")[:300]
    last = (run.last_line("ARENA_CONTRACT") if report.exit_code == EXIT_CONTRACT else None) or run.last_line()
    return Status.CRASH, f"train phase exited with code {report.exit_code}: {(last or 'no output')[:300]}"


def measured(report: PhaseReport | None, rule: BudgetRule, on_gpu: bool) -> Measured | None:
    """Time and memory of the train phase, from its supervisor: nothing here comes from the trial.
    Peak memory is that of the device the preset trains on: on a GPU preset the GPUs' (None where the
    supervisor could not read them: the host's would teach the memory model the wrong device), else the
    host's. None when the harness never started trial code."""
    if report is None or report.ready is None or report.end is None:
        return None
    work = report.end - report.ready
    host = report.max_rss_kb * 1024 / 1e9
    gpu = report.gpu_peak_bytes / 1e9 if report.gpu_peak_bytes is not None else None
    return Measured(work_seconds=work, outside_seconds=work - rule.budget, ready_seconds=report.ready,
                    allowance_seconds=rule.allowance(report.ready), peak_memory_gb=gpu if on_gpu else host,
                    host_memory_gb=host, gpu_memory_gb=gpu)


def judge(train: PhaseRun, evaluation: PhaseRun | None, rule: BudgetRule, reported: Reported,
          missing: str = "evaluation did not run", trusted: bool = False, on_gpu: bool = False) -> Outcome:
    """Classify a trial from its two phases; `missing` says why there was no eval phase. A trusted
    trial (the unmodified template) is never over budget: what it needed is the measure for the rest.
    `on_gpu`: the trial trained on GPUs, whose memory is its peak."""
    def outcome(status: Status, reason: str, result: TrialResult | None = None) -> Outcome:
        return Outcome(status, reason, result, log_tail=tail(train.lines), train_wall_seconds=train.wall_seconds,
                       eval_wall_seconds=evaluation.wall_seconds if evaluation else 0.0)

    failure = phase_failure("train", train)
    if failure is not None:
        return outcome(*failure)
    measures = measured(train.report, rule, on_gpu)
    if measures is None:
        return outcome(Status.CRASH, "the harness never started trial code")
    if evaluation is None:
        return outcome(Status.CRASH, missing)
    failure = phase_failure("eval", evaluation)
    if failure is not None:
        return outcome(*failure)
    scored = parse_result(evaluation.lines)
    if scored is None:
        return outcome(Status.CRASH, "evaluation printed no result")
    result = TrialResult(**scored, **measures, reported=reported)
    if not math.isfinite(result["val_bpb"]):
        return outcome(Status.NAN, f"val_bpb is {result['val_bpb']}", result)
    if result["outside_seconds"] > result["allowance_seconds"] and not trusted:
        return outcome(Status.OVER_BUDGET, f"the train phase ran {result['work_seconds']:.1f} s of trial code, "
                       f"{result['outside_seconds']:.1f} s past the {rule.budget:g} s budget; "
                       f"allowance {result['allowance_seconds']:.1f} s", result)
    return outcome(Status.OK, f"val_bpb {result['val_bpb']:.6f}", result)


def reported_rate(reported: Reported) -> float | None:
    """Tokens per second while the trial's own clock ran, as the trial reported them (None where that makes no
    finite number: a report of 2**53 tokens in 5e-324 s would put Infinity, which is not JSON, in the ledger)."""
    seconds, tokens = reported.get("training_seconds"), reported.get("timed_tokens")
    if not (isinstance(tokens, (int, float)) and isinstance(seconds, (int, float)) and seconds > 0):
        return None
    return finite(tokens / seconds)


def finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


# Dense bf16 FLOP/s of each GPU, found by a part of its name (the more specific first: "H100 PCIe" before
# "H100", "A100" before "A10"). The harness reports a peak by a coarser table, which it cannot change without
# stopping recorded runs from resuming (it takes every H100 for the SXM part); this one decides the MFU arena
# records, the harness's only for a GPU missing here.
PEAK_BF16_FLOPS = (("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989.5e12), ("H800", 989.5e12),
                   ("H200 NVL", 835e12), ("H200", 989.5e12), ("B200", 2250e12), ("A100", 312e12), ("A800", 312e12),
                   ("L40S", 362e12), ("L40", 181e12), ("A10", 125e12), ("L4", 121e12), ("RTX 4090", 165e12),
                   ("RTX 3090", 71e12))


def peak_flops(device_name: object, reported_peak: object = None) -> float | None:
    """The GPU's dense bf16 peak in FLOP/s by its name, else what the harness reported, else None."""
    if isinstance(device_name, str):
        known = next((flops for part, flops in PEAK_BF16_FLOPS if part in device_name), None)
        if known is not None:
            return known
    if isinstance(reported_peak, (int, float)) and math.isfinite(reported_peak) and reported_peak > 0:
        return float(reported_peak)
    return None


def reported_mfu(reported: Reported) -> float | None:
    rate, flops = reported_rate(reported), reported.get("flops_per_token")
    peak = peak_flops(reported.get("device_name"), reported.get("peak_flops"))
    if rate is None or not isinstance(flops, (int, float)) or peak is None:
        return None
    return finite(100 * flops * rate / peak)


def summary(outcome: Outcome) -> str:
    """autoresearch's summary block: measured values first, then what the trial reported."""
    result = outcome.result
    reported: Reported = result["reported"] if result else {}

    def value(key: str) -> object:
        return result.get(key) if result else None

    def number(found: object, spec: str, scale: float = 1.0) -> str:
        return format(found * scale, spec) if isinstance(found, (int, float)) else "n/a"

    rows = [("val_bpb", number(value("val_bpb"), ".6f")),
            ("training_seconds", number(value("work_seconds"), ".1f")),
            ("outside_budget_s", number(value("outside_seconds"), ".1f")),
            ("allowance_s", number(value("allowance_seconds"), ".1f")),
            ("total_seconds", number(outcome.train_wall_seconds + outcome.eval_wall_seconds, ".1f")),
            ("peak_mem_mb", number(value("peak_memory_gb"), ".1f", 1e9 / 2**20)),
            ("mfu_percent", number(reported_mfu(reported), ".2f")),
            ("total_tokens_M", number(reported.get("tokens"), ".1f", 1e-6)),
            ("num_steps", number(reported.get("steps"), ".0f")),
            ("num_params_M", number(value("num_params"), ".1f", 1e-6)),
            ("depth", str(reported.get("depth", "n/a")))]
    return "\n".join(["---"] + [f"{name + ':':<18}{text}" for name, text in rows]) + "\n"
