"""The code-editing agent: reads program.md, the best train.py and recent trials; answers with a diff."""

from __future__ import annotations

from pathlib import Path

from agent.edits import edited_source, elided_line
from agent.llm import Message, answer_part, describe, extract_diff
from agent.methods.base import Context, LLMSettings, Proposal, TaskFacts
from agent.methods.llm_base import ConversationMethod, ConversationState
from agent.methods.prompts import in_flight_section, outcome_line
from agent.patches import make_diff
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


class CodeAgentState(ConversationState):
    source: str


class CodeAgent(ConversationMethod):
    name = "code"
    fixed_space = False

    def __init__(self, llm: LLMSettings, task: TaskFacts, run_dir: Path | None):
        super().__init__(llm, task, run_dir)
        self.source = ""  # the train.py the current trial's prompt showed, for answers that are not diffs

    def prompt(self, ctx: Context) -> list[Message]:
        self.source = ctx.parent_source
        parent = ctx.parent
        if parent is None or parent.trial == ctx.best.trial:
            heading = "The current best train.py:"
        else:  # several workers explore from the best few kept commits side by side
            heading = (f"The train.py of trial {parent.trial} (val_bpb {parent.val_bpb:.6f}), one of the best few "
                       "so far; other workers build on the others. Improve this one:")
        parts = [heading + "\n```python\n" + ctx.parent_source + "```",
                 f"Recent trials (most recent last):\n{recent_trials(ctx.records, self.llm.last_n)}"]
        running = in_flight_section(ctx.in_flight, with_configs=False)
        if running:
            parts.append(running)
        parts.append("Propose ONE change. First line: a short description of the idea. Then the unified diff "
                     "against the train.py above, in a ```diff block.")
        user = "\n\n".join(parts)
        return [{"role": "system", "content": program_text(self.task, ctx.best.val_bpb)},
                {"role": "user", "content": user}]

    def parse(self, text: str) -> Proposal:
        """A diff; or, from an answer with no diff, the diff of what its search/replace blocks or whole file
        make of the train.py shown."""
        try:
            description, diff = extract_diff(text)
        except ValueError as no_diff:
            answer = answer_part(text)
            found = edited_source(answer, self.source)
            if found is None:
                raise no_diff from None
            edited, start = found
            if edited == self.source:
                raise ValueError("the answer's train.py is the one it was shown; propose a change") from None
            diff = make_diff(self.source, edited)
            description = describe(answer[:start], "", diff)
        elided = elided_line(diff, self.source)
        if elided is not None:
            raise ValueError(f"the change leaves code out ({elided[:80]!r} stands for lines it would delete); "
                             "write out every line you change, and only those, in a unified diff")
        return Proposal(description, diff=diff)

    def state(self) -> CodeAgentState:
        return {**super().state(), "source": self.source}

    def restore(self, state: ConversationState) -> None:
        super().restore(state)
        self.source = str(state.get("source", ""))  # a journal from before answers other than diffs were read

    def repair_note(self, reason: str) -> str:
        return (f"Your diff was rejected: {reason}\n"
                "Send a corrected description and diff against the same train.py as before.")
