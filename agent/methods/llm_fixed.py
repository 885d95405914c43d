"""An LLM that proposes the constants from the history alone (no optimizer state), as JSON."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

from agent.constants import Value
from agent.llm import Message, json_objects
from agent.methods.base import Config, Context, LLMSettings, Proposal, TaskFacts
from agent.methods.llm_base import ConversationMethod, ConversationState
from agent.methods.prompts import (
    describe_space,
    format_config,
    history_section,
    json_answer_rules,
    task_section,
)
from agent.space import Param, SearchSpace

MAX_INTEGER = 2**53  # beyond this an integer cannot even be compared with a float bound exactly


PROSE_KEYS = {"reasoning", "reason", "rationale", "explanation", "description", "thoughts", "thinking", "notes",
              "comment", "why"}  # what models put beside the constants, not a constant


def parse_config(text: str, space: SearchSpace, best: Config | None = None) -> Config:
    """The configuration in an answer, restricted to the space; raises ValueError saying what is wrong.

    Of several objects (a proposal nested in another, or the best configuration echoed before it) the first
    that names every constant and differs from `best` is taken, else the first naming any. Names may be in
    any case; constants it leaves out keep `best`'s values; a whole-number float or a numeric string is
    taken as the number a numeric constant needs."""
    objects = [_named(answer, space) for answer in json_objects(text)]
    relevant = [answer for answer in objects if set(answer) & set(space)]
    differs = [answer for answer in relevant if best is None
               or any(best.get(k) != _as_kind(space[k], v) for k, v in answer.items() if k in space)]
    order = ([a for a in differs if set(space) <= set(a)] + differs + [a for a in relevant if set(space) <= set(a)]
             + relevant + objects)
    answer = order[0]
    unknown = sorted(set(answer) - set(space))
    if unknown:
        raise ValueError(f"unknown keys {', '.join(unknown)}; use only {', '.join(space)}")
    missing = [name for name in space if name not in answer]
    if missing and best is None:
        raise ValueError(f"missing keys {', '.join(missing)}")
    taken = {name: _constant_value(name, _as_kind(space[name], value)) for name, value in answer.items()}
    return {name: taken[name] if name in taken else best[name] for name in space} if best else taken


def _named(answer: dict[str, object], space: SearchSpace) -> dict[str, object]:
    """`answer` with its keys spelled as the space's constants, the prose beside them left out."""
    names = {name.lower(): name for name in space}
    return {names.get(key.lower(), key): value for key, value in answer.items() if key.lower() not in PROSE_KEYS}


def _as_kind(param: Param, value: object) -> object:
    """A number written as a numeric constant's kind needs it: 4.0 for an integer, "0.04" as a string."""
    if param.kind == "categorical":
        return value
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = float(value.strip().replace("_", ""))
    if param.kind in ("int", "pow2") and isinstance(value, float) and value.is_integer() and abs(value) <= MAX_INTEGER:
        return int(value)
    return value


def _constant_value(name: str, value: object) -> Value:
    """`value` when a constant could hold it (a string, or a number of sane size); raises ValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"{name} must be a number or a string, not {type(value).__name__}")
    if isinstance(value, int) and abs(value) > MAX_INTEGER:
        raise ValueError(f"{name} = {str(value)[:12]}... is far out of any range")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, not {value}")
    return value


class LLMFixedState(ConversationState):
    best: Config


class LLMFixedSpace(ConversationMethod):
    name = "llm"
    fixed_space = True

    def __init__(self, space: SearchSpace, llm: LLMSettings, task: TaskFacts, run_dir: Path | None):
        super().__init__(llm, task, run_dir)
        self.space = space
        self.best: Config = {}  # the best configuration the current trial's prompt showed: an answer builds on it

    def prompt(self, ctx: Context) -> list[Message]:
        self.best = dict(ctx.best.config or {})
        text = "\n\n".join([
            task_section(self.task),
            "Search space:\n" + describe_space(self.space),
            f"Current best (trial {ctx.best.trial}, val_bpb {ctx.best.val_bpb:.6f}): "
            + format_config(ctx.best.config),
            history_section(ctx.records, self.llm.top_k, self.llm.last_n, in_flight=ctx.in_flight),
            *([memory] if (memory := ctx.memory()) else []),
            "Propose the next configuration to try: one that you expect to beat the best without failing. "
            + json_answer_rules(self.space),
        ])
        return [{"role": "system", "content": "You are an expert in tuning the training of small transformers."},
                {"role": "user", "content": text}]

    def parse(self, text: str) -> Proposal:
        config = parse_config(text, self.space, self.best or None)
        return Proposal(f"llm: {format_config(config)}", config=config, meta={"answer": text})

    def repair_note(self, reason: str) -> str:
        return f"That answer was rejected: {reason}. " + json_answer_rules(self.space)

    def state(self) -> LLMFixedState:
        return {**super().state(), "best": self.best}

    def restore(self, state: ConversationState) -> None:
        super().restore(state)
        best = state.get("best")
        self.best = dict(best) if isinstance(best, dict) else {}  # a journal from before it was kept
