"""The code-editing agent: reads program.md, the best train.py and recent trials; answers with a diff."""

from __future__ import annotations

from agent.llm import Message, extract_diff
from agent.methods.base import Context, Proposal, TaskFacts
from agent.methods.llm_base import ConversationMethod
from agent.methods.prompts import outcome_line
from agent.record import TrialRecord
from agent.template import template_dir
from sandbox.outcome import Status

LOG_TAIL_LINES = 15  # per failed trial: enough for a traceback's last frames


def program_text(task: TaskFacts, best_val_bpb: float | None) -> str:
    text = (template_dir() / "program.md").read_text()
    values = {"time_budget": f"{task.time_budget:g}", "device": task.device, "memory": task.memory,
              "best_val_bpb": "not measured yet" if best_val_bpb is None else f"{best_val_bpb:.6f}"}
    for key, value in values.items():
        text = text.replace("{" + key + "}", value)
    return text


def recent_trials(records: list[TrialRecord], last_n: int) -> str:
    lines = []
    for r in records[-last_n:]:
        lines.append(f"trial {r.trial}: {r.description} -> {outcome_line(r)}")
        if r.status not in (Status.OK, Status.INVALID_PATCH) and r.log_tail:
            tail = "\n".join(r.log_tail.splitlines()[-LOG_TAIL_LINES:])
            lines.append("  last log lines:\n" + "\n".join("    " + line for line in tail.splitlines()))
    return "\n".join(lines) or "(none yet)"


class CodeAgent(ConversationMethod):
    name = "code"
    fixed_space = False

    def prompt(self, ctx: Context) -> list[Message]:
        user = "\n\n".join([
            "The current best train.py:\n```python\n" + ctx.best_source + "```",
            f"Recent trials (most recent last):\n{recent_trials(ctx.records, self.llm.last_n)}",
            "Propose ONE change. First line: a short description of the idea. Then the unified diff against "
            "the train.py above, in a ```diff block.",
        ])
        return [{"role": "system", "content": program_text(self.task, ctx.best.val_bpb)},
                {"role": "user", "content": user}]

    def parse(self, text: str) -> Proposal:
        description, diff = extract_diff(text)
        return Proposal(description, diff=diff)

    def repair_note(self, reason: str) -> str:
        return (f"Your diff was rejected: {reason}\n"
                "Send a corrected description and diff against the same train.py as before.")
