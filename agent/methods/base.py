"""What every search method is: it proposes, it observes, and its state survives a restart."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from agent.record import TrialRecord
from agent.space import SearchSpace


@dataclass
class Proposal:
    """A fixed-space method sets `config` (constants to render into the block); a code agent sets `diff`."""
    description: str
    config: dict | None = None
    diff: str | None = None
    meta: dict = field(default_factory=dict)  # method-specific facts worth recording (e.g. LLM usage)


@dataclass
class Context:
    """What a method may look at when it proposes trial number `trial`."""
    trial: int
    records: list[TrialRecord]  # the ledger so far, oldest first
    best: TrialRecord         # the record of the current best trial
    best_source: str          # train.py of the current best commit
    space: SearchSpace


class Method(Protocol):
    name: str
    fixed_space: bool  # True: may change only the constants block, within the space's bounds

    def propose(self, ctx: Context) -> Proposal:
        """Called once per new trial, before anything runs."""
        ...

    def observe(self, record: TrialRecord) -> None:
        """Called with the ledger record of every trial this method proposed, once it is judged."""
        ...

    def state(self) -> object:
        """A picklable snapshot; restore(state()) must reproduce every later proposal exactly."""
        ...

    def restore(self, state: object) -> None:
        ...

    # Optional, for LLM methods:
    #   check_ready() -> None: raise ArenaError before any trial runs if the model cannot be reached.
    #   repair(proposal, reason, trial) -> Proposal: called when a proposal was rejected (bounded by --repairs).
    # A proposal that could not be made sets meta["invalid"] to the reason; it is recorded as invalid_patch.
