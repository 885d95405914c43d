"""Keep or revert: every decision over scores, as pure functions of the ledger.

A proposal is kept when it beats the best by more than the noise margin. With confirmation runs
(`--confirm N`) it first becomes a candidate, is re-run with N other seeds, and is kept only if its
mean over all of them still wins. The best trial is never stored: it is replayed from the decisions
recorded in the ledger, so it survives any crash.
"""

from __future__ import annotations

from agent.record import Decision, Kind, TrialRecord


def judge(kind: Kind, value: float | None, best_value: float | None, margin: float,
          confirm: int) -> tuple[bool, bool]:
    """(kept, candidate): only an ok trial better than the best by more than `margin` wins; with
    confirmation runs it first becomes a candidate. The baseline is kept whenever it ran."""
    if kind == "baseline":
        return value is not None, False
    better = kind == "proposal" and value is not None and (best_value is None or value < best_value - margin)
    return (better and not confirm), (better and bool(confirm))


def decide(candidate: int, values: list[float | None], best_value: float | None, margin: float) -> Decision:
    """A failed confirmation run sinks the candidate; otherwise the mean must beat the best by the margin."""
    scores = [v for v in values if v is not None]
    if len(scores) < len(values):
        return Decision(candidate, values, kept=False, mean_val_bpb=None)
    mean = sum(scores) / len(scores)
    return Decision(candidate, values, kept=best_value is None or mean < best_value - margin, mean_val_bpb=mean)


def confirmations(records: list[TrialRecord], candidate: int) -> list[TrialRecord]:
    return [r for r in records if r.confirms == candidate]


def open_candidate(records: list[TrialRecord], confirm: int, running: list[int] | None = None) -> TrialRecord | None:
    """The oldest would-be best still owed some of its `confirm` confirmation runs; `running` holds the
    candidate of each confirmation run under way (with several workers, they run side by side)."""
    if confirm == 0:
        return None
    running = running or []
    for record in records:
        if record.candidate and len(confirmations(records, record.trial)) + running.count(record.trial) < confirm:
            return record
    return None


def confirmation_decision(records: list[TrialRecord], value: float | None, candidate: int, confirm: int,
                          best_value: float | None, margin: float) -> Decision | None:
    """The decision a confirmation run scoring `value` brings, or None while more runs are due."""
    first = next(r.val_bpb for r in records if r.trial == candidate)
    runs = [first, *(r.val_bpb for r in confirmations(records, candidate)), value]
    if len(runs) < confirm + 1:
        return None
    return decide(candidate, runs, best_value, margin)


def best_of(records: list[TrialRecord]) -> tuple[int, float | None]:
    """The trial number and score of the current best, replaying the keep decisions in the ledger."""
    best_trial, best_value = 0, None
    for record in records:
        if record.kept:
            best_trial, best_value = record.trial, record.val_bpb
        elif record.decision is not None and record.decision.kept:
            best_trial, best_value = record.decision.trial, record.decision.mean_val_bpb
    return best_trial, best_value
