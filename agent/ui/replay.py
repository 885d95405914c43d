"""`arena replay RUN`: every trial of a recorded run in order, kept and failed, with its diff and LLM talk.

On a terminal it steps through the trials (n/enter, p, j N, q); otherwise it prints them and exits.
--export writes a Markdown or HTML audit report instead. Nothing in the run is written.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from pathlib import Path

from rich.console import Console

from agent.errors import ArenaError
from agent.paths import path_argument
from agent.ui import ParserT
from agent.ui.export import html_report, markdown_report
from agent.ui.history import RunHistory
from agent.ui.render import print_warnings, run_header, trial_renderable
from agent.ui.report import summarize
from agent.ui.sources import open_history

PROMPT = "n/enter next · p previous · j N jump · q quit > "
EXPORTERS = {"md": markdown_report, "html": html_report}


def add_parser(subparsers: argparse._SubParsersAction[ParserT]) -> None:
    p = subparsers.add_parser("replay", help="step through a recorded run trial by trial: diffs, outcomes, "
                              "metrics, LLM prompts and answers; or export it as a Markdown/HTML report")
    p.add_argument("run", type=Path, help="a run directory (runs/NAME), a git repository run by "
                   "autoresearch's protocol (with results.tsv), or a trials.jsonl file")
    p.add_argument("--trial", type=int, default=None, help="show only this trial (on a terminal: start there)")
    p.add_argument("--export", choices=sorted(EXPORTERS), default=None, help="write an audit report instead")
    p.add_argument("--out", type=path_argument, default=None, help="report file (default ./<run>-replay.<md|html>)")
    p.add_argument("--branch", default=None, help="autoresearch repository: the experiment branch "
                   "(default: the checked-out one)")
    p.set_defaults(func=cmd_replay)


def next_index(command: str, index: int, run: RunHistory) -> int | None:
    """Where a stepping command leads from trial position `index`; None quits. Raises ArenaError on nonsense."""
    words = command.strip().lower().split()
    if not words or words[0] in ("n", "next"):
        return min(index + 1, len(run.trials) - 1)
    if words[0] in ("p", "prev", "previous"):
        return max(index - 1, 0)
    if words[0] in ("q", "quit", "exit"):
        return None
    if words[0] in ("j", "jump") and len(words) == 2 and words[1].lstrip("-").isdigit():
        return run.trials.index(run.trial(int(words[1])))
    raise ArenaError(f"'{command.strip()}' is not a command; {PROMPT[:-3]}")


def step_through(run: RunHistory, console: Console, index: int) -> None:
    show = True
    while True:
        if show:
            console.print(trial_renderable(run.trials[index]))
        try:
            command = input(f"[trial {run.trials[index].trial}, {index + 1} of {len(run.trials)}] {PROMPT}")
        except (EOFError, KeyboardInterrupt):
            console.print()
            return
        try:
            target = next_index(command, index, run)
        except ArenaError as e:
            console.print(str(e), style="red", markup=False)
            show = False
            continue
        if target is None:
            return
        show = target != index
        if not show:
            last = len(run.trials) - 1
            where = "the last trial" if index == last else "the first trial" if index == 0 else "that trial"
            console.print(f"(already at {where}; q quits)", markup=False)
        index = target


def cmd_replay(args: argparse.Namespace) -> int:
    if args.out is not None and args.export is None:
        raise ArenaError("--out names the report file; add --export md or --export html")
    run = open_history(args.run, args.branch)
    print_warnings(run.warnings)
    if not run.trials:
        raise ArenaError(f"{run.name} has no trials recorded yet; replay it once its first trial is done")
    trials = [run.trial(args.trial)] if args.trial is not None else run.trials
    if args.export:
        out = args.out or Path(f"{run.name.replace('/', '_').replace(':', '_')}-replay.{args.export}")
        report = EXPORTERS[args.export](run, trials)
        try:  # opened without waiting: a FIFO no process reads fails (ENXIO) instead of blocking for ever
            fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NONBLOCK, 0o644)
            os.set_blocking(fd, True)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(report)
        except OSError as e:
            why = "it is a FIFO no process reads" if e.errno == errno.ENXIO else e.strerror
            raise ArenaError(f"cannot write {out}: {why}; choose another --out") from None
        print(out)
        return 0
    console = Console(highlight=False, soft_wrap=True)  # diff lines stay whole when piped
    console.print(run_header(run, summarize(run)))
    if sys.stdin.isatty() and sys.stdout.isatty():
        step_through(run, console, run.trials.index(trials[0]))
    else:
        for view in trials:
            console.print(trial_renderable(view))
    return 0
