"""What a replay says about a run and each of its trials, as plain text pairs every renderer shares."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from agent.ui.history import LlmCall, RunHistory, TrialView
from sandbox.outcome import FAILURES


@dataclass
class RunSummary:
    trials: int
    kept: int
    failures: dict[str, int]  # by kind, every kind (zero included)
    best_val_bpb: float | None
    best_trial: int | None


def summarize(run: RunHistory) -> RunSummary:
    counts = Counter(view.status for view in run.trials)
    best = run.best()
    return RunSummary(trials=len(run.trials), kept=sum(view.kept for view in run.trials),
                      failures={kind: counts.get(kind, 0) for kind in FAILURES},
                      best_val_bpb=best.val_bpb if best else None, best_trial=best.trial if best else None)


def summary_rows(summary: RunSummary) -> list[tuple[str, str]]:
    rows = [("trials", str(summary.trials)), ("kept", str(summary.kept))]
    rows.append(("failures", str(sum(summary.failures.values()))))
    rows += [(f"failures: {kind}", str(count)) for kind, count in summary.failures.items() if count]
    rows.append(("best val_bpb", f"{summary.best_val_bpb:.6f}" if summary.best_val_bpb is not None else "-"))
    rows.append(("best trial", str(summary.best_trial) if summary.best_trial is not None else "-"))
    return rows


def run_facts(run: RunHistory) -> list[tuple[str, str]]:
    facts = [("run", run.name), ("source", f"{run.source}: {run.path}"), ("method", run.method),
             ("model", run.model), ("seed", run.seed), ("budget", f"{run.budget:g} s" if run.budget else None),
             ("validation tokens", run.eval_tokens), ("dataset", run.dataset_fingerprint)]
    return [(label, str(value)) for label, value in facts if value is not None]


def outcome(view: TrialView) -> str:
    """keep / discard for a trial that ran, else its failure kind."""
    if view.status != "ok":
        return view.status
    if view.kind == "confirm":
        return "confirmation run"
    return "keep" if view.kept else "discard"


def _seconds(value: float | None) -> str | None:
    return f"{value:.1f} s" if value is not None else None


def trial_facts(view: TrialView) -> list[tuple[str, str]]:
    """Label/value pairs for one trial; what the source does not record is left out."""
    facts = [
        ("method", view.method), ("kind", view.kind), ("outcome", outcome(view)),
        ("reason", view.reason if view.status != "ok" else None),
        ("val_bpb", f"{view.val_bpb:.6f}" if view.val_bpb is not None else None),
        ("peak memory", f"{view.memory_gb:.2f} GB" if view.memory_gb is not None else None),
        ("training", _seconds(view.training_seconds)), ("train+eval wall", _seconds(view.wall_seconds)),
        ("proposal", _seconds(view.propose_seconds)), ("total", _seconds(view.total_seconds)),
        ("seed", view.seed), ("commit", view.commit), ("parent", view.parent),
    ]
    facts += [(f"rejected attempt {n}", reason) for n, reason in enumerate(view.rejected, 1)]
    facts.append(("LLM fallback", view.fallback))
    return [(label, str(value)) for label, value in facts if value not in (None, "")]


def call_title(number: int, call: LlmCall) -> str:
    tokens = f"{'about ' if call.usage_estimated else ''}{call.prompt_tokens:,} + {call.completion_tokens:,} tokens"
    return f"LLM call {number}: {call.purpose}, {call.model or 'model ?'}, {tokens}, ${call.cost_usd:.4f}"
