"""An LLM that proposes the constants from the history alone (no optimizer state), as JSON."""

from __future__ import annotations

from pathlib import Path

from agent.llm import LLMError, extract_json
from agent.methods.base import Context, Proposal
from agent.methods.llm_base import client_for, task_facts
from agent.methods.prompts import (describe_space, format_config, history_section, json_answer_rules,
                                   task_section)
from agent.space import SearchSpace


def parse_config(text: str, space: SearchSpace) -> dict:
    """The JSON object in an answer, restricted to the space; raises ValueError saying what is wrong."""
    config = extract_json(text)
    unknown = sorted(set(config) - set(space))
    if unknown:
        raise ValueError(f"unknown keys {', '.join(unknown)}; use only {', '.join(space)}")
    missing = [name for name in space if name not in config]
    if missing:
        raise ValueError(f"missing keys {', '.join(missing)}")
    return config


class LLMFixedSpace:
    name = "llm"
    fixed_space = True

    def __init__(self, space: SearchSpace, settings, run_dir: Path | None):
        self.space = space
        self.settings = settings
        self.client = client_for(settings, run_dir, self.name)
        self.facts = task_facts(settings)
        self.conversation: list[dict] = []  # the last proposal's exchange, for repairs

    def check_ready(self) -> None:
        self.client.check_reachable()

    def prompt(self, ctx: Context) -> list[dict]:
        s = self.settings
        text = "\n\n".join([
            task_section(self.facts["device"], float(self.facts["time_budget"]), self.facts["memory"]),
            "Search space:\n" + describe_space(self.space),
            f"Current best (trial {ctx.best['trial']}, val_bpb {ctx.best['val_bpb']:.6f}): "
            + format_config(ctx.best["config"]),
            history_section(ctx.records, s.top_k, s.last_n),
            "Propose the next configuration to try: one that you expect to beat the best without failing. "
            + json_answer_rules(self.space),
        ])
        return [{"role": "system", "content": "You are an expert in tuning the training of small transformers."},
                {"role": "user", "content": text}]

    def propose(self, ctx: Context) -> Proposal:
        return self.ask(self.prompt(ctx), ctx.trial, "propose")

    def repair(self, proposal: Proposal, reason: str, trial: int) -> Proposal:
        messages = self.conversation + [{"role": "user", "content": f"That answer was rejected: {reason}. "
                                         + json_answer_rules(self.space)}]
        return self.ask(messages, trial, "repair")

    def ask(self, messages: list[dict], trial: int, purpose: str) -> Proposal:
        try:
            reply = self.client.complete(messages, purpose=purpose, trial=trial)
        except LLMError as e:
            self.conversation = messages
            return Proposal("llm: no answer", meta={"invalid": f"LLM call failed: {e}"})
        self.conversation = messages + [{"role": "assistant", "content": reply.text}]
        try:
            config = parse_config(reply.text, self.space)
        except ValueError as e:
            return Proposal("llm: unusable answer", meta={"invalid": f"answer rejected: {e}", "answer": reply.text})
        return Proposal(f"llm: {format_config(config)}", config=config, meta={"answer": reply.text})

    def observe(self, record: dict) -> None:
        pass  # everything it needs is in the ledger, shown afresh at each proposal

    def state(self) -> object:
        return {"conversation": self.conversation}

    def restore(self, state: object) -> None:
        self.conversation = state["conversation"]
