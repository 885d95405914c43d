"""The text LLM methods show a model: the space, the history, the failures, in the constants' own units."""

from __future__ import annotations

import json
from collections.abc import Mapping

from agent.constants import Value
from agent.methods.base import Proposal, TaskFacts
from agent.record import TrialRecord
from agent.space import SearchSpace
from sandbox.outcome import Status


def format_value(value: Value | None) -> str:
    return f"{value:.4g}" if isinstance(value, float) else json.dumps(value) if isinstance(value, str) else str(value)


def format_config(config: Mapping[str, Value] | None) -> str:
    if not config:
        return "(no config)"
    return ", ".join(f"{name}={format_value(value)}" for name, value in config.items())


def describe_space(space: SearchSpace) -> str:
    lines = []
    for param in space.values():
        if param.kind == "categorical":
            lines.append(f"- {param.name}: one of {', '.join(json.dumps(c) for c in param.choices)}")
        else:
            scale = "powers of two" if param.kind == "pow2" else ("log scale" if param.log else "linear")
            kind = "integer" if param.kind in ("int", "pow2") else "float"
            lines.append(f"- {param.name}: {kind} in [{format_value(param.low)}, {format_value(param.high)}], {scale}")
    return "\n".join(lines)


def outcome_line(record: TrialRecord) -> str:
    memory = f", peak memory {record.peak_memory_gb:.1f} GB" if record.peak_memory_gb else ""
    if record.ok:
        verdict = "kept" if record.kept else "discarded"
        return f"val_bpb {record.val_bpb:.6f} ({verdict}{memory})"
    return f"FAILED: {record.status} ({record.reason[:200]}{memory})"


def best_trials(records: list[TrialRecord], k: int) -> list[TrialRecord]:
    scored = [(r.val_bpb, r) for r in records if r.ok and r.val_bpb is not None]
    return [r for _, r in sorted(scored, key=lambda pair: pair[0])[:k]]


def in_flight_section(in_flight: Mapping[int, Proposal], with_configs: bool = True) -> str:
    """The trials other workers are running now, so that a proposal does not repeat one of them; empty when
    none is."""
    if not in_flight:
        return ""
    lines = ["Running now on other workers (results not in yet; propose something different from these):"]
    for trial, proposal in sorted(in_flight.items()):
        what = format_config(proposal.config) if with_configs and proposal.config else proposal.description
        lines.append(f"trial {trial}: {what}")
    return "\n".join(lines)


def history_section(records: list[TrialRecord], top_k: int, last_n: int, with_configs: bool = True,
                    in_flight: Mapping[int, Proposal] | None = None) -> str:
    """The best k trials, the last n trials with outcomes, every configuration that failed, and the trials
    under way."""
    def line(r: TrialRecord) -> str:
        what = format_config(r.config) if with_configs else r.description
        return f"trial {r.trial}: {what} -> {outcome_line(r)}"

    parts = [f"Best {top_k} trials so far:"]
    parts += [line(r) for r in best_trials(records, top_k)] or ["(none yet)"]
    parts += ["", f"Last {last_n} trials:"]
    parts += [line(r) for r in records[-last_n:]]
    failures = [r for r in records if r.status in (Status.OOM, Status.OVER_BUDGET, Status.TIMEOUT) and r.config]
    if failures and with_configs:
        parts += ["", "Configurations that ran out of memory or time (avoid their neighbourhood):"]
        parts += [f"trial {r.trial}: {format_config(r.config)} -> {r.status}" for r in failures[-20:]]
    running = in_flight_section(in_flight or {}, with_configs)
    if running:
        parts += ["", running]
    return "\n".join(parts)


def task_section(task: TaskFacts) -> str:
    return (f"The script trains a small GPT language model from scratch for a fixed {task.time_budget:g} seconds "
            f"of wall-clock training on {task.device} (memory: {task.memory}), then a harness measures val_bpb "
            "(bits per byte on held-out text; lower is better). Failed trials (out of memory, crash, "
            "divergence, over budget) waste a whole trial: avoiding them matters more than anything else.")


def json_answer_rules(space: SearchSpace) -> str:
    names = ", ".join(space)
    return ("Answer with ONE JSON object and nothing else, mapping every one of these names to a value: "
            f"{names}. Integers must be integers, powers of two must be powers of two, every value inside "
            "its range.")
