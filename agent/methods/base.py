"""What every search method is: it proposes, it observes, and its state survives a restart.

A method is one module with one class that satisfies `Method`; the capabilities only some methods have
are protocols of their own (`Repairable`, `ModelBacked`), checked with isinstance by the loop. What a
method may configure comes in the typed settings below, built from the run's settings in
`agent/methods/__init__.py`: a method never sees the rest of the run.

Exact resume is the loop's contract with a method (see agent/loop.py for the write order): after a
kill the loop restores the newest saved state (taken right after propose(), or after observe()) and
hands `observe` the records the ledger gained since; from there on every proposal must be the one an
uninterrupted run would have made. tests/test_method_conformance.py holds every method to this.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

from agent.constants import Value
from agent.llm import whole_characters
from agent.record import TrialRecord
from agent.space import SearchSpace
from sandbox.phases import printable

Config = dict[str, Value]


MAX_DESCRIPTION_CHARS = 200


@dataclass
class Proposal:
    """What to try next: a fixed-space method sets `config` (constants rendered into the block), a code
    agent sets `diff`; a method that could not make a usable proposal sets `invalid` to the reason (the
    loop records it as invalid_patch, after offering a Repairable method its repairs). The loop's own
    trials (the baseline, confirmation runs) set none of them."""
    description: str
    config: Config | None = None
    diff: str | None = None
    invalid: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)  # method-specific facts worth recording (e.g. LLM usage)

    def __post_init__(self) -> None:
        if sum(part is not None for part in (self.config, self.diff, self.invalid)) > 1:
            raise ValueError("a proposal is a config, a diff or an invalid answer: one of them at most")
        self.description = one_line(self.description)
        if len(self.description) > MAX_DESCRIPTION_CHARS:  # it goes into every later prompt and commit subject
            self.description = self.description[:MAX_DESCRIPTION_CHARS - 3] + "..."
        if self.diff is not None:  # a JSON answer may write a lone surrogate ("\\ud800"), which no file takes
            self.diff = whole_characters(self.diff)


def one_line(text: str) -> str:
    """A model's description as the one printable line it is shown as everywhere (the trial's report line, the
    commit subject, the next prompt, replay): blanks and line breaks as single spaces, control characters
    (NUL, which git refuses in a message; terminal escapes) replaced by U+FFFD, lone surrogates too."""
    return printable(" ".join(whole_characters(text).split()))


@dataclass(frozen=True)
class Context:
    """What a method may look at when it proposes trial number `trial`."""
    trial: int
    records: list[TrialRecord]  # the ledger so far, in the order trials finished
    best: TrialRecord           # the record of the current best trial
    parent_source: str          # train.py of the commit the proposal builds on: the best one, or with several
                                # workers a code agent's proposal may build on another of the best few
    space: SearchSpace
    parent: TrialRecord | None = None  # the record of that commit's trial, when it is not the best's
    in_flight: dict[int, Proposal] = field(default_factory=dict)  # other trials under way, results not in yet
    # The run's memory model on the best configuration, for prompts ("": feasibility is off); built only
    # when a method asks (about a hundred predictions, which only the LLM methods read).
    memory: Callable[[], str] = lambda: ""


StateT = TypeVar("StateT")


class Method(Protocol[StateT]):
    name: str
    fixed_space: bool  # True: may change only the constants block, within the space's bounds

    def propose(self, ctx: Context) -> Proposal:
        """Called once per new trial, before anything runs; with several workers, while the trials in
        ctx.in_flight are still running (their observe() comes later, in the order they finish)."""
        ...

    def observe(self, record: TrialRecord) -> None:
        """Called with the record of every trial once it is judged (the baseline and confirmation runs
        included), and again after a restart for the records its restored state had not seen."""
        ...

    def state(self) -> StateT:
        """A picklable snapshot; restore(state()) must reproduce every later proposal exactly."""
        ...

    def restore(self, state: StateT) -> None:
        ...


@runtime_checkable
class Repairable(Protocol):
    def repair(self, proposal: Proposal, reason: str, trial: int) -> Proposal:
        """Another try after `proposal` was refused for `reason` (bounded by the run's --repairs)."""
        ...


@runtime_checkable
class Paced(Protocol):
    def can_propose(self) -> bool:
        """Whether a proposal can be made before more trials under way are observed (CMA-ES cannot start a
        generation before the last is told); the loop waits for results while this is False."""
        ...


@runtime_checkable
class ModelBacked(Protocol):
    def check_ready(self) -> None:
        """Raise ArenaError, before any trial runs, when the model cannot be reached."""
        ...


@dataclass(frozen=True)
class TaskFacts:
    """The trial's limits in words, for prompts."""
    time_budget: float   # training seconds per trial
    device: str          # "one NVIDIA GPU" or "CPU cores"
    memory: str          # what bounds memory, and what happens past it


@dataclass(frozen=True)
class LLMSettings:
    """How an LLM method calls its model, and how much history its prompts show."""
    model: str
    api_base: str | None = None
    temperature: float = 0.7
    max_tokens: int = 4096
    timeout: float = 120.0
    retries: int = 3
    replay: Path | None = None  # an llm.jsonl whose answers replace the model's
    top_k: int = 5              # best trials shown
    last_n: int = 20            # most recent trials shown


@dataclass(frozen=True)
class CentaurSettings:
    seed: int
    ratio: float    # share of the proposals after warm-up that go to the LLM
    warmup: int     # proposals before the LLM is first asked
