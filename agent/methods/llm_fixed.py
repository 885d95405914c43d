"""An LLM that proposes the constants from the history alone (no optimizer state), as JSON."""

from __future__ import annotations

import math
from pathlib import Path

from agent.constants import Value
from agent.llm import Message, extract_json
from agent.methods.base import Config, Context, LLMSettings, Proposal, TaskFacts
from agent.methods.llm_base import ConversationMethod
from agent.methods.prompts import (
    describe_space,
    format_config,
    history_section,
    json_answer_rules,
    task_section,
)
from agent.space import SearchSpace

MAX_INTEGER = 2**53  # beyond this an integer cannot even be compared with a float bound exactly


def parse_config(text: str, space: SearchSpace) -> Config:
    """The JSON object in an answer, restricted to the space; raises ValueError saying what is wrong."""
    answer = extract_json(text)
    unknown = sorted(set(answer) - set(space))
    if unknown:
        raise ValueError(f"unknown keys {', '.join(unknown)}; use only {', '.join(space)}")
    missing = [name for name in space if name not in answer]
    if missing:
        raise ValueError(f"missing keys {', '.join(missing)}")
    return {name: _constant_value(name, value) for name, value in answer.items()}


def _constant_value(name: str, value: object) -> Value:
    """`value` when a constant could hold it (a string, or a number of sane size); raises ValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"{name} must be a number or a string, not {type(value).__name__}")
    if isinstance(value, int) and abs(value) > MAX_INTEGER:
        raise ValueError(f"{name} = {str(value)[:12]}... is far out of any range")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, not {value}")
    return value


class LLMFixedSpace(ConversationMethod):
    name = "llm"
    fixed_space = True

    def __init__(self, space: SearchSpace, llm: LLMSettings, task: TaskFacts, run_dir: Path | None):
        super().__init__(llm, task, run_dir)
        self.space = space

    def prompt(self, ctx: Context) -> list[Message]:
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
        config = parse_config(text, self.space)
        return Proposal(f"llm: {format_config(config)}", config=config, meta={"answer": text})

    def repair_note(self, reason: str) -> str:
        return f"That answer was rejected: {reason}. " + json_answer_rules(self.space)
