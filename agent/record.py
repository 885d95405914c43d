"""One trial's record: the ledger line, and the shape every reader of a run agrees on.

The ledger, git notes, results.tsv, the methods, the prompts, the live view, replay and compare all
read and write `TrialRecord`. Ledgers written before a field existed still read: a missing field
takes its default, and keys this version does not know are ignored.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from agent.flags import fits, type_name
from sandbox.outcome import Status

Kind = Literal["baseline", "proposal", "confirm"]
KINDS: tuple[Kind, ...] = ("baseline", "proposal", "confirm")
# Figures early versions copied from what a trial said of itself, unchecked: one of the wrong type there is
# dropped (display only), not taken for damage
ONCE_SELF_REPORTED = ("steps", "gpu")
NOTE_FIELDS = ("trial", "status", "reason", "val_bpb", "peak_memory_gb", "training_seconds", "seed", "kept",
               "candidate")


@dataclass(frozen=True)
class Decision:
    """After a candidate's last confirmation run: whether its mean over every seed still wins."""
    trial: int                      # the candidate
    values: list[float | None]      # its val_bpb, then each confirmation run's (None: that run failed)
    kept: bool
    mean_val_bpb: float | None


@dataclass(frozen=True)
class Repair:
    """An attempt refused before the proposal that ran (or before the method gave up)."""
    description: str
    reason: str
    diff: str | None = None
    config: dict[str, Any] | None = None


@dataclass(frozen=True)
class TrialRecord:
    # what was tried
    trial: int
    kind: Kind
    method: str                          # the run's method for proposals; "baseline" or "confirm" otherwise
    description: str
    status: Status
    reason: str = ""
    parent: str | None = None            # the commit it built on (None for the baseline)
    commit: str | None = None            # None when no commit was made (the proposal was refused)
    seed: int = 0
    confirms: int | None = None          # a confirmation run: the candidate trial it re-runs
    diff: str | None = None              # None: not recorded (ledgers of early versions)
    diff_stats: dict[str, int] | None = None
    config: dict[str, Any] | None = None  # the constants block of the trial's train.py
    proposal_meta: dict[str, Any] = field(default_factory=dict)
    repairs: list[Repair] = field(default_factory=list)
    # the verdict
    val_bpb: float | None = None
    kept: bool = False
    candidate: bool = False              # a would-be best awaiting its confirmation runs
    decision: Decision | None = None     # on a candidate's last confirmation run
    # what it cost and measured
    peak_memory_gb: float | None = None
    predicted_memory_gb: float | None = None  # the memory model's estimate before it ran (--feasibility on)
    memory_threshold_gb: float | None = None  # the most the model let it need (infeasible above)
    training_seconds: float | None = None
    outside_seconds: float | None = None
    allowance_seconds: float | None = None
    ready_seconds: float | None = None
    num_params: int | None = None
    tokens_per_second: float | None = None
    mfu_percent: float | None = None
    steps: int | None = None
    gpu: str | None = None
    reported: dict[str, Any] = field(default_factory=dict)  # what train.py said of itself: never judged on
    train_wall_seconds: float = 0.0
    eval_wall_seconds: float = 0.0
    overhead_seconds: float = 0.0
    propose_seconds: float = 0.0
    total_seconds: float = 0.0
    log_tail: str = ""
    # where and under which rules
    host: str = ""
    started_at: str = ""
    harness_hash: str = ""
    dataset_fingerprint: str = ""
    isolation: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is Status.OK

    @property
    def score(self) -> float | None:
        """The val_bpb this trial found as a search result (confirmation re-runs find nothing new)."""
        return self.val_bpb if self.ok and self.kind != "confirm" else None

    def to_json(self) -> dict[str, Any]:
        raw = dataclasses.asdict(self)
        raw["status"] = self.status.value
        return raw

    def note(self) -> dict[str, Any]:
        """What the git note on the trial's commit says."""
        raw = self.to_json()
        return {name: raw[name] for name in NOTE_FIELDS}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> TrialRecord:
        """A record from its JSON form; raises ValueError (naming the field) when it is not one."""
        hints = typing.get_type_hints(cls)
        values = {name: value for name, value in raw.items() if name in hints}
        for name in ("proposal_meta", "reported"):  # null in ledgers of early versions
            values[name] = values.get(name) or {}
        for name in ("reason", "log_tail"):
            values[name] = values.get(name) or ""
        values["repairs"] = values.get("repairs") or []
        for name in ONCE_SELF_REPORTED:
            if not fits(hints[name], values.get(name)):
                values[name] = None
        for name, value in values.items():
            if not fits(hints[name], value):
                raise ValueError(f"its {name} is {value!r}, not {type_name(hints[name])}")
        try:
            values["status"] = Status(raw["status"])
            if values.get("kind") not in KINDS:
                raise ValueError(f"kind {values.get('kind')!r} is not one of {', '.join(KINDS)}")
            if values.get("decision") is not None:
                values["decision"] = Decision(**values["decision"])
            values["repairs"] = [Repair(**{k: v for k, v in r.items() if k in Repair.__dataclass_fields__})
                                 for r in values["repairs"]]
            return cls(**values)
        except KeyError as e:
            raise ValueError(f"a trial record needs {e}") from None
        except TypeError as e:  # a missing required field, or a decision/repair of the wrong shape
            raise ValueError(str(e)) from None


def counted(records: list[TrialRecord]) -> int:
    """The trials that count towards --trials: all but the infeasible ones, which ran nothing."""
    return sum(1 for r in records if r.status is not Status.INFEASIBLE)


def ran_in_search(record: TrialRecord) -> bool:
    """Whether a trial ran as a search result: not refused before running (no commit), no confirmation's re-run."""
    return record.commit is not None and record.kind != "confirm"


def has_constants(config: dict[str, Any] | None, wanted: dict[str, Any]) -> bool:
    """Whether a trial's constants (`config`) hold every one of `wanted`'s values."""
    return config is not None and bool(config) and all(config.get(name) == value for name, value in wanted.items())


def first_run_with(records: list[TrialRecord], config: dict[str, Any]) -> TrialRecord | None:
    """The first trial that ran as a search result with these constants (and any others)."""
    return next((r for r in records if ran_in_search(r) and has_constants(r.config, config)), None)
