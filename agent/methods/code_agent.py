"""The code-editing agent: reads program.md, the best train.py and recent trials; answers with a diff."""

from __future__ import annotations

from pathlib import Path

from agent.llm import LLMError, extract_diff
from agent.methods.base import Context, Proposal
from agent.methods.llm_base import client_for, task_facts
from agent.methods.prompts import outcome_line
from agent.space import SearchSpace
from agent.template import template_dir

LOG_TAIL_LINES = 15  # per failed trial: enough for a traceback's last frames


def program_text(facts: dict[str, str], best_val_bpb: float | None) -> str:
    text = (template_dir() / "program.md").read_text()
    values = {**facts, "best_val_bpb": "not measured yet" if best_val_bpb is None else f"{best_val_bpb:.6f}"}
    for key, value in values.items():
        text = text.replace("{" + key + "}", value)
    return text


def recent_trials(records: list[dict], last_n: int) -> str:
    lines = []
    for r in records[-last_n:]:
        lines.append(f"trial {r['trial']}: {r['description']} -> {outcome_line(r)}")
        if r["status"] not in ("ok", "invalid_patch") and r.get("log_tail"):
            tail = "\n".join(r["log_tail"].splitlines()[-LOG_TAIL_LINES:])
            lines.append("  last log lines:\n" + "\n".join("    " + line for line in tail.splitlines()))
    return "\n".join(lines) or "(none yet)"


class CodeAgent:
    name = "code"
    fixed_space = False

    def __init__(self, space: SearchSpace, settings, run_dir: Path | None):
        self.settings = settings
        self.client = client_for(settings, run_dir, self.name)
        self.facts = task_facts(settings)
        self.conversation: list[dict] = []

    def check_ready(self) -> None:
        self.client.check_reachable()

    def prompt(self, ctx: Context) -> list[dict]:
        user = "\n\n".join([
            "The current best train.py:\n```python\n" + ctx.best_source + "```",
            f"Recent trials (most recent last):\n{recent_trials(ctx.records, self.settings.last_n)}",
            "Propose ONE change. First line: a short description of the idea. Then the unified diff against "
            "the train.py above, in a ```diff block.",
        ])
        return [{"role": "system", "content": program_text(self.facts, ctx.best.get("val_bpb"))},
                {"role": "user", "content": user}]

    def propose(self, ctx: Context) -> Proposal:
        return self.ask(self.prompt(ctx), ctx.trial, "propose")

    def repair(self, proposal: Proposal, reason: str, trial: int) -> Proposal:
        note = (f"Your diff was rejected: {reason}\nSend a corrected description and diff against the same "
                "train.py as before.")
        return self.ask(self.conversation + [{"role": "user", "content": note}], trial, "repair")

    def ask(self, messages: list[dict], trial: int, purpose: str) -> Proposal:
        try:
            reply = self.client.complete(messages, purpose=purpose, trial=trial)
        except LLMError as e:
            self.conversation = messages
            return Proposal("code: no answer", meta={"invalid": f"LLM call failed: {e}"})
        self.conversation = messages + [{"role": "assistant", "content": reply.text}]
        try:
            description, diff = extract_diff(reply.text)
        except ValueError as e:
            return Proposal("code: unusable answer", meta={"invalid": f"answer rejected: {e}", "answer": reply.text})
        return Proposal(description, diff=diff)

    def observe(self, record: dict) -> None:
        pass  # the ledger is the memory: recent trials are shown afresh at each proposal

    def state(self) -> object:
        return {"conversation": self.conversation}

    def restore(self, state: object) -> None:
        self.conversation = state["conversation"]
