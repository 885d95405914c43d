"""A run's history as a list of trials, read without writing anything.

This module holds the shared model (RunHistory, TrialView, LlmCall) and the reader of arena run
directories; imports.py reads the foreign formats and sources.py picks the reader for a path.
Reading never writes, so it is safe on a run that is still going: a half-written last line of a
JSON-lines file is skipped with a warning, never cut off as `arena run` would on resume.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import git

from agent import jsonl
from agent.errors import ArenaError
from agent.ledger import parse_records
from agent.presets import get_preset
from agent.record import TrialRecord
from agent.ui.run_files import StoredSettings, read_run_info
from sandbox.outcome import Status

LOG_TAIL_LINES = 30


@dataclass
class LlmCall:
    """One model call from llm.jsonl: the prompt it was sent and what came back."""
    trial: int | None
    purpose: str
    model: str | None
    messages: list[dict[str, str]]  # {"role": ..., "content": text}
    response: str
    error: str | None
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    usage_estimated: bool = False  # the server sent no token counts: arena's estimate


@dataclass
class TrialView:
    trial: int
    method: str
    kind: str                # baseline | proposal | confirm
    description: str
    status: str              # a Status value: ok or one of FAILURES
    reason: str = ""
    val_bpb: float | None = None
    memory_gb: float | None = None
    training_seconds: float | None = None
    wall_seconds: float | None = None     # train + eval phases: the time the accelerator was held
    total_seconds: float | None = None    # everything the trial cost, proposal included
    propose_seconds: float | None = None
    kept: bool = False
    commit: str | None = None
    parent: str | None = None
    diff: str = ""
    diff_note: str = ""      # what the diff is, or why there is none
    config: dict[str, Any] | None = None
    seed: int | None = None
    llm_calls: list[LlmCall] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)  # why each attempt before a repair was refused
    fallback: str = ""       # Centaur: why the LLM's turn fell back to CMA-ES's candidate
    log_tail: str = ""

    @property
    def score(self) -> float | None:
        """The val_bpb this trial found, if it counts as a search result (confirmation re-runs do not)."""
        return self.val_bpb if self.status == "ok" and self.kind != "confirm" else None


@dataclass
class RunHistory:
    name: str
    source: str              # arena | autoresearch | paper
    path: Path
    method: str
    model: str | None = None
    seed: int | None = None
    budget: float | None = None          # training seconds per trial; None when the source does not say
    eval_tokens: int | None = None
    dataset_fingerprint: str | None = None
    isolation: str | None = None         # how its trials were confined: bwrap, docker, or none (unisolated)
    device: str = "cuda"                 # what trained: "cpu" for arena's cpu preset; autoresearch and the paper: GPUs
    trials: list[TrialView] = field(default_factory=list)
    llm_calls: list[LlmCall] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def group(self) -> str:
        """What compare ranks: the method, and the model for LLM methods."""
        return f"{self.method} ({self.model})" if self.model else self.method

    def trial_range(self) -> str:
        if not self.trials:
            return "none recorded yet"
        return f"{self.trials[0].trial}-{self.trials[-1].trial}"

    def trial(self, number: int) -> TrialView:
        for view in self.trials:
            if view.trial == number:
                return view
        raise ArenaError(f"{self.name} has no trial {number}; its trials are {self.trial_range()}")

    def best(self) -> TrialView | None:
        scored = [(view.score, view) for view in self.trials if view.score is not None]
        return min(scored, key=lambda pair: pair[0])[1] if scored else None


def read_jsonl(path: Path, warnings: list[str]) -> list[dict[str, Any]]:
    """The records of a JSON-lines file, maybe still being written: a torn last line is skipped with a warning."""
    return jsonl.read_jsonl(path, "the file", warnings=warnings)


def _text(content: object) -> str:
    """Message content as text: a string, or the text parts of a multi-part message."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(part.get("text", "") if isinstance(part, dict) else str(part) for part in content)
    return json.dumps(content, indent=2)


def read_llm_calls(path: Path, warnings: list[str]) -> list[LlmCall]:
    if not path.exists():
        return []
    calls = []
    for record in read_jsonl(path, warnings):
        messages = [{"role": str(m.get("role", "?")), "content": _text(m.get("content"))}
                    for m in record.get("messages") or [] if isinstance(m, dict)]
        calls.append(LlmCall(trial=record.get("trial"), purpose=str(record.get("purpose") or "call"),
                             model=record.get("model"), messages=messages, response=_text(record.get("response")),
                             error=record.get("error"), prompt_tokens=int(record.get("prompt_tokens") or 0),
                             completion_tokens=int(record.get("completion_tokens") or 0),
                             cost_usd=float(record.get("cost_usd") or 0.0),
                             usage_estimated=record.get("usage_estimated") is True))
    return calls


def git_diff(repo: git.Repo, parent: str | None, commit: str) -> str | None:
    """The change a commit made against `parent` (its own first parent when None); None when git cannot say."""
    try:
        if parent:
            return str(repo.git.diff(parent, commit, strip_newline_in_stdout=False))
        if repo.commit(commit).parents:
            return str(repo.git.diff(f"{commit}^", commit, strip_newline_in_stdout=False))
        return str(repo.git.show("--format=", commit, strip_newline_in_stdout=False))  # a root commit: all added
    except (git.GitCommandError, ValueError):
        return None


def _open_repo(path: Path) -> git.Repo | None:
    try:
        return git.Repo(path)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        return None


def _record_diff(record: TrialRecord, repo: git.Repo | None) -> tuple[str, str]:
    """(diff, note): the ledger's diff, or one computed from git when the ledger lacks it."""
    diff = record.diff
    if diff is None and record.commit and repo is not None:
        diff = git_diff(repo, record.parent, record.commit)
    if record.kind == "baseline":
        return diff or "", "the baseline: train.py as the run started"
    if record.kind == "confirm":
        return "", f"a re-run of trial {record.confirms}'s commit with seed {record.seed}"
    if record.status is Status.INVALID_PATCH:
        return diff or "", "the proposed diff; it was rejected before anything ran, so there is no commit"
    if record.status is Status.INFEASIBLE:
        return diff or "", "the proposed change; predicted not to fit in memory, it was not run or committed"
    if diff is None:
        return "", "diff not recorded and its commit is not in the run's repository"
    return diff, "" if diff else "no change to train.py"


def _log_tail(run_dir: Path, trial: int) -> str:
    path = run_dir / "logs" / f"trial-{trial:05d}.log"
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:])
    except OSError:
        return ""


def _arena_trial(record: TrialRecord, repo: git.Repo | None, run_dir: Path, calls: list[LlmCall]) -> TrialView:
    diff, note = _record_diff(record, repo)
    return TrialView(
        trial=record.trial, method=record.method, kind=record.kind, description=record.description,
        status=record.status.value, reason=record.reason, val_bpb=record.val_bpb, memory_gb=record.peak_memory_gb,
        training_seconds=record.training_seconds, wall_seconds=record.train_wall_seconds + record.eval_wall_seconds,
        total_seconds=record.total_seconds, propose_seconds=record.propose_seconds, kept=record.kept,
        commit=record.commit, parent=record.parent, diff=diff, diff_note=note, config=record.config,
        seed=record.seed, llm_calls=[c for c in calls if c.trial == record.trial],
        rejected=[attempt.reason for attempt in record.repairs],
        fallback=str(record.proposal_meta.get("llm_error") or ""),
        log_tail=record.log_tail or _log_tail(run_dir, record.trial))


def _limits(settings: StoredSettings) -> tuple[float | None, int | None, str]:
    """The budget, validation tokens and device a run's trials had: its overrides, else its preset's."""
    try:
        preset = get_preset(settings.preset or "cpu", time_budget=settings.budget, eval_tokens=settings.eval_tokens)
    except ArenaError:  # a preset this version does not know: only what the run recorded
        return settings.budget, settings.eval_tokens, "cuda"
    return preset.time_budget, preset.eval_tokens, preset.device


def _isolation(settings: StoredSettings, records: list[TrialRecord]) -> str:
    """"none" when any trial ran unisolated (as every local trial did before runs recorded an isolation);
    else how the run's trials were confined."""
    if settings.backend == "docker":
        return "docker"
    if "none" in {r.isolation for r in records}:
        return "none"
    return settings.isolation or "none"


def load_arena_run(run_dir: Path) -> RunHistory:
    info = read_run_info(run_dir)
    settings = info.settings
    warnings: list[str] = []
    ledger = run_dir / "ledger.jsonl"
    records = parse_records(read_jsonl(ledger, warnings), ledger) if ledger.exists() else []
    calls = read_llm_calls(run_dir / "llm.jsonl", warnings)
    repo = _open_repo(run_dir / "repo")  # without it the ledger's own diffs still show
    if repo is None:
        warnings.append(f"{run_dir / 'repo'} is missing or not a git repository; showing the ledger's diffs only")
    budget, eval_tokens, device = _limits(settings)
    return RunHistory(name=settings.name or run_dir.name, source="arena", path=run_dir,
                      method=settings.method or "?", model=settings.model,
                      seed=settings.seed, budget=budget, eval_tokens=eval_tokens, device=device,
                      dataset_fingerprint=info.dataset_fingerprint, isolation=_isolation(settings, records),
                      trials=[_arena_trial(r, repo, run_dir, calls) for r in records], llm_calls=calls,
                      warnings=warnings)
