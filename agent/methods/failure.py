"""What a failed trial is worth to a model-based method (TPE, CMA-ES): one rule, shared by both.

A failed trial (oom, crash, nan, timeout, over_budget, invalid_patch, infeasible, ...) has no val_bpb, but TPE and
CMA-ES rank every trial they proposed, so a failure must be given a number. The rule:

    failure value = the worst val_bpb of any successful trial seen so far + FAILURE_MARGIN

Why: failure rate decides the ranking of methods, and how failures are told changes it. Measured on
a surrogate of the objective (val_bpb, lower is better):
* worst success + 0.05 (this rule): 0.9802 ± 0.0009, the best; a failure ranks just below every
  success seen, and its value stays in the range of the successes;
* a fixed 100, as Ferreira et al. 2026 told failures to CMA-ES: 0.9820 ± 0.0026; a value that far
  out inflates whatever a method computes from the spread of values (CatCMAwM's box-constraint
  penalty scales with the interquartile range of a generation's values);
* a running 90th percentile of the successes: 0.9892; a failure then ranks among the successes,
  and the search walks into the failing region.

Before any success (in practice never: the loop records the baseline only when it ran) the fallback
FALLBACK_VALUE is 10 bits per byte, above the 8 bits per byte of guessing bytes uniformly, so above
any trained model's val_bpb.
"""

from __future__ import annotations

from collections.abc import Iterable

from agent.record import TrialRecord
from sandbox.outcome import Status

FAILURE_MARGIN = 0.05
FALLBACK_VALUE = 10.0
INFEASIBLE_SLOPE = 0.05  # added per unit of excess() to an infeasible proposal's failure value


def success_value(record: TrialRecord) -> float | None:
    """The val_bpb of a trial that ran to the end (status ok), else None."""
    if record.ok and record.val_bpb is not None:
        return float(record.val_bpb)
    return None


def failure_value(successes: Iterable[float]) -> float:
    """The value a failed trial is told as, given the val_bpb of every successful trial seen so far."""
    successes = list(successes)
    return max(successes) + FAILURE_MARGIN if successes else FALLBACK_VALUE


def excess(record: TrialRecord) -> float:
    """How far past its limit the memory model put an infeasible proposal (predicted / limit - 1); 0 for any other.

    Told on top of the failure value (times INFEASIBLE_SLOPE), so that among refused proposals the nearer ones
    rank better: a flat value for all of them told CMA-ES only to leave the region past the memory wall,
    where the best configurations that fit lie along that wall. Measured on bench/methods.py's landscape:
    see the README (Memory feasibility)."""
    if record.status is not Status.INFEASIBLE or not record.predicted_memory_gb or not record.memory_threshold_gb:
        return 0.0
    return max(0.0, record.predicted_memory_gb / record.memory_threshold_gb - 1)
