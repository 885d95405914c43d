"""Audit reports of a run: Markdown and self-contained HTML, everything in full (no clipping)."""

from __future__ import annotations

import html
import re
from collections.abc import Sequence

from agent.ui.history import LlmCall, RunHistory, TrialView
from agent.ui.report import (
    call_title,
    outcome,
    run_facts,
    summarize,
    summary_rows,
    trial_facts,
)


def _bpb(view: TrialView) -> str:
    return f"{view.val_bpb:.6f}" if view.val_bpb is not None else "-"


# ---------------------------------------------------------------------------- Markdown

def _fence(text: str, info: str = "") -> str:
    """A code block whose fence is longer than any backtick run inside, so no content can close it."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    ticks = "`" * max(3, longest + 1)
    return f"{ticks}{info}\n{text.rstrip(chr(10))}\n{ticks}\n"


def _cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _md_table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _md_call(number: int, call: LlmCall) -> str:
    parts = [f"#### {call_title(number, call)}\n"]
    for message in call.messages:
        parts += [f"**{message['role']}**\n", _fence(message["content"], "text")]
    parts += ["**answer**\n", _fence(call.response or "(empty)", "text")]
    if call.error:
        parts.append(f"**error**: {_cell(call.error)}\n")
    return "\n".join(parts)


def _md_trial(view: TrialView) -> str:
    parts = [f"## Trial {view.trial}: {_cell(view.description)}\n"]
    parts.append("\n".join(f"- **{label}**: {_cell(value)}" for label, value in trial_facts(view)) + "\n")
    if view.diff_note:
        parts.append(f"*{_cell(view.diff_note)}*\n")
    if view.diff:
        parts.append(_fence(view.diff, "diff"))
    parts += [_md_call(number, call) for number, call in enumerate(view.llm_calls, 1)]
    if view.status != "ok" and view.log_tail:
        parts += ["### Log tail\n", _fence(view.log_tail, "text")]
    return "\n".join(parts)


def markdown_report(run: RunHistory, trials: list[TrialView]) -> str:
    parts = [f"# Replay of {_cell(run.name)}\n",
             "\n".join(f"- **{label}**: {_cell(value)}" for label, value in run_facts(run)) + "\n",
             "## Summary\n", _md_table(("", "value"), summary_rows(summarize(run))),
             "## Trials\n", _md_table(("trial", "method", "outcome", "val_bpb", "description"),
                                      [(str(v.trial), v.method, outcome(v), _bpb(v), v.description) for v in trials])]
    parts += [_md_trial(view) for view in trials]
    return "\n".join(parts)


# ---------------------------------------------------------------------------- HTML

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1em; }
td, th { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: left; vertical-align: top; }
pre { background: #f6f8fa; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
.add { color: #116329; background: #dafbe1; } .del { color: #82071e; background: #ffebe9; }
.hunk { color: #0550ae; } .meta { font-weight: bold; }
.keep { color: #116329; font-weight: bold; } .discard { color: #9a6700; } .fail { color: #cf222e; font-weight: bold; }
section { border-top: 2px solid #ddd; margin-top: 2em; } .note { font-style: italic; color: #555; }
"""
DIFF_CLASSES = {"+": "add", "-": "del", "@": "hunk"}  # by a diff line's first character


def _diff_html(diff: str) -> str:
    lines = []
    for line in diff.splitlines():
        css = "meta" if line.startswith(("+++", "---")) else DIFF_CLASSES.get(line[:1], "")
        text = html.escape(line)
        lines.append(f'<span class="{css}">{text}</span>' if css else text)
    return '<pre class="diff">' + "\n".join(lines) + "</pre>"


def _html_table(rows: Sequence[tuple[str, ...]], header: tuple[str, ...] | None = None) -> str:
    head = "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>" if header else ""
    body = "".join("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table>{head}{body}</table>"


def _outcome_css(view: TrialView) -> str:
    result = outcome(view)
    return result if result in ("keep", "discard") else ("" if view.status == "ok" else "fail")


def _html_trial(view: TrialView) -> str:
    parts = [f'<section id="trial-{view.trial}"><h2>Trial {view.trial}: {html.escape(view.description)}</h2>',
             f'<p class="{_outcome_css(view)}">{html.escape(outcome(view))}</p>', _html_table(trial_facts(view))]
    if view.diff_note:
        parts.append(f'<p class="note">{html.escape(view.diff_note)}</p>')
    if view.diff:
        parts.append(_diff_html(view.diff))
    for number, call in enumerate(view.llm_calls, 1):
        parts.append(f"<h3>{html.escape(call_title(number, call))}</h3>")
        for message in call.messages:
            parts.append(f"<h4>{html.escape(message['role'])}</h4><pre>{html.escape(message['content'])}</pre>")
        parts.append(f"<h4>answer</h4><pre>{html.escape(call.response or '(empty)')}</pre>")
        if call.error:
            parts.append(f'<p class="fail">error: {html.escape(call.error)}</p>')
    if view.status != "ok" and view.log_tail:
        parts.append(f"<h3>Log tail</h3><pre>{html.escape(view.log_tail)}</pre>")
    return "\n".join(parts) + "</section>"


def html_report(run: RunHistory, trials: list[TrialView]) -> str:
    index = [(str(v.trial), v.method, outcome(v), _bpb(v), v.description) for v in trials]
    body = [f"<h1>Replay of {html.escape(run.name)}</h1>", _html_table(run_facts(run)),
            "<h2>Summary</h2>", _html_table(summary_rows(summarize(run)), ("", "value")),
            "<h2>Trials</h2>", _html_table(index, ("trial", "method", "outcome", "val_bpb", "description"))]
    body += [_html_trial(view) for view in trials]
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f"<title>Replay of {html.escape(run.name)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")
