"""Rich renderables of a run and its trials, for replay on a terminal."""

from __future__ import annotations

from rich import box
from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.rule import Rule
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text

from agent.ui.history import RunHistory, TrialView
from agent.ui.report import (
    RunSummary,
    call_title,
    outcome,
    run_facts,
    summary_rows,
    trial_facts,
)

MESSAGE_LINES = 60  # a prompt can hold all of train.py: a terminal shows its head, exports keep everything
OUTCOME_STYLES = {"keep": "bold green", "discard": "yellow", "confirmation run": "cyan"}


def print_warnings(warnings: list[str]) -> None:
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    for warning in warnings:
        err.print(Text(f"warning: {warning}", style="yellow"))


def run_header(run: RunHistory, summary: RunSummary) -> RenderableType:
    table = Table(show_header=False, box=box.SIMPLE)
    for label, value in run_facts(run) + summary_rows(summary):
        table.add_row(Text(label, style="bold"), Text(value))
    return Panel(table, title=Text(f"replay of {run.name}"), expand=False)


def _clip(text: str, lines: int = MESSAGE_LINES) -> str:
    rows = text.splitlines()
    if len(rows) <= lines:
        return text
    return "\n".join(rows[:lines]) + f"\n… {len(rows) - lines} more lines (arena replay --export md shows all)"


def _llm_panels(view: TrialView) -> list[RenderableType]:
    panels: list[RenderableType] = []
    for number, call in enumerate(view.llm_calls, 1):
        body: list[RenderableType] = []
        for message in call.messages:
            body += [Text(f"{message['role']}:", style="bold cyan"), Text(_clip(message["content"]))]
        body += [Text("answer:", style="bold green"), Text(_clip(call.response) or "(empty)")]
        if call.error:
            body.append(Text(f"error: {call.error}", style="red"))
        panels.append(Panel(Group(*body), title=Text(call_title(number, call)), title_align="left"))
    return panels


def trial_renderable(view: TrialView) -> RenderableType:
    result = outcome(view)
    style = OUTCOME_STYLES.get(result, "bold red")
    parts: list[RenderableType] = [Rule(Text(f"trial {view.trial}"), style=style, align="left"),
                                   Text(view.description, style="bold")]
    facts = Table.grid(padding=(0, 2))
    for label, value in trial_facts(view):
        facts.add_row(Text(label, style="bold"), Text(value, style=style if label == "outcome" else ""))
    parts.append(facts)
    if view.diff_note:
        parts.append(Text(view.diff_note, style="italic"))
    if view.diff:
        parts.append(Syntax(view.diff, "diff", theme="ansi_dark", background_color="default"))
    parts += _llm_panels(view)
    if view.status != "ok" and view.log_tail:
        parts.append(Panel(Text(view.log_tail), title="log tail", title_align="left"))
    return Group(*parts)
