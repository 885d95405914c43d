"""The live view of a run: one screen built from the run directory alone.

`arena run` shows it in-process (`live_view` around the loop) and `arena watch` shows it from another
process. Both only read what the loop writes — run.json, ledger.jsonl, state/status.json,
logs/trial-<n>.log, state/llm_stream.txt and llm.jsonl — so the view never writes into the run
directory and holds no lock the loop could wait on. Reads stay cheap: append-only JSONL files are read
from where the last read stopped, logs and the LLM stream only from their last few KB.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import queue
import select
import sys
import termios
import threading
import time
import tty
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from rich.cells import cell_len, set_cell_size
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text

from agent.jsonl import JsonObject
from agent.judging import best_of
from agent.record import TrialRecord, counted
from agent.ui import ParserT
from agent.ui.live_reader import LOG_LINES, RunReader, Snapshot, Training
from agent.ui.run_files import StopLimits
from sandbox.outcome import Status

if TYPE_CHECKING:
    from agent.loop import Reporter, StopRule

REFRESH_PER_SECOND = 4
RECENT_TRIALS = 10
LEADERS = 5
MIN_BODY_LINES, MAX_BODY_LINES = 6, 60
STALE_IDLE_S = 10.0         # idle for longer than this: the run has most likely ended
QUIET_S = 30.0              # a trial log silent for longer than this is worth pointing out
SPARK_LEVELS = "▁▂▃▄▅▆▇█"
PHASE_STYLES = {"proposing": "magenta", "applying": "cyan", "running": "yellow", "evaluating": "blue",
                "idle": "dim", "starting": "dim", "done": "green", "stopped": "yellow", "failed": "red"}
LIMIT_FAILURES = (Status.OOM, Status.TIMEOUT, Status.OVER_BUDGET, Status.INFEASIBLE)  # yellow; broken code: red

# ---------------------------------------------------------------- drawing a frame

def fmt_duration(seconds: float) -> str:
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def fmt_bpb(value: float | None) -> str:
    return f"{value:.6f}" if value is not None else "-"


def one_line(text: object) -> str:
    return " ".join(str(text or "").split())


def sparkline(values: list[float | None], width: int) -> str:
    """One block per trial, higher for a higher val_bpb (so improvements step down); with more trials
    than columns, each column shows the last value of its share of the trials."""
    if len(values) > width:
        values = [values[(column + 1) * len(values) // width - 1] for column in range(width)]
    known = [v for v in values if v is not None]
    if not known:
        return " " * len(values)
    low, high = min(known), max(known)
    top = len(SPARK_LEVELS) - 1
    return "".join(" " if v is None else SPARK_LEVELS[round((v - low) / (high - low) * top) if high > low else 0]
                   for v in values)


def verdict(record: TrialRecord) -> str:
    """Same words as the loop's report line."""
    if record.decision is not None:
        return f"{'kept' if record.decision.kept else 'rejected'} {record.decision.trial}"
    if record.kept:
        return "keep"
    return "candidate" if record.candidate else "discard"


def row_style(record: TrialRecord) -> str:
    if not record.ok:
        return "yellow" if record.status in LIMIT_FAILURES else "red"
    if record.kept:
        return "green"
    return "cyan" if record.candidate else ""


def device_of(snap: Snapshot) -> str:
    for record in reversed(snap.records):
        if record.gpu:
            return record.gpu
    gpus = snap.settings.gpus
    if gpus:
        return f"GPU {','.join(gpus)}"
    return snap.preset.device if snap.preset else "-"


def trial_seconds(records: list[TrialRecord]) -> float:
    return sum(r.total_seconds for r in records)


def eta(snap: Snapshot, used: float, stop_rule: StopRule | StopLimits | None) -> float | None:
    """Seconds left until the stop rule, from the mean time of the trials so far (several workers share them)."""
    done = counted(snap.records)
    if stop_rule is None or not done:
        return None
    mean = trial_seconds(snap.records) / done
    workers = max(1, len(snap.status.workers))
    left = []
    if stop_rule.trials is not None:
        left.append((stop_rule.trials - done) * mean / workers - snap.elapsed)
    if stop_rule.hours is not None:
        left.append((stop_rule.hours * 3600 - used) / workers)
    return max(0.0, min(left)) if left else None


def llm_totals(calls: list[JsonObject]) -> tuple[int, int, int, float]:
    def total(key: str) -> float:
        return sum(call.get(key) or 0 for call in calls)

    return len(calls), int(total("prompt_tokens")), int(total("completion_tokens")), float(total("cost_usd"))


def header_lines(snap: Snapshot, stop_rule: StopRule | StopLimits | None, width: int) -> list[Text]:
    """Who runs (name, method, model, backend, device, preset), how far along, the best so far, LLM spend.
    Without a stop rule of its own (`arena watch`), the one the run's arena wrote into status.json."""
    stop_rule = stop_rule or snap.status.stop
    s = snap.settings
    budget = f" · {snap.preset.time_budget:g} s/trial" if snap.preset else ""
    model = f"  model [bold]{escape(s.model)}[/]" if s.model else ""
    identity = (f"[bold]{escape(snap.name)}[/]  method [bold]{escape(str(s.method))}[/]{model}  backend "
                f"{escape(str(s.backend))}  device {escape(device_of(snap))}  preset "
                f"{escape(str(s.preset))}{budget}")
    used = trial_seconds(snap.records) + snap.elapsed
    done = counted(snap.records)  # the trials that ran, as --trials counts them
    refused = len(snap.records) - done
    trials = (f"trials [bold]{done}[/]" + (f"/{stop_rule.trials}" if stop_rule and stop_rule.trials else "")
              + (f" (+{refused} infeasible)" if refused else ""))
    hours = f"/{fmt_duration(stop_rule.hours * 3600)}" if stop_rule and stop_rule.hours else ""
    progress = f"{trials} · time {fmt_duration(used)}{hours}"
    if done:
        progress += f" · mean trial {fmt_duration(trial_seconds(snap.records) / done)}"
    left = eta(snap, used, stop_rule)
    if left is not None:
        progress += f" · ETA {fmt_duration(left)}"
    lines = [Text.from_markup(identity), Text.from_markup(progress)]
    if snap.records:
        best_trial, best_value = best_of(snap.records)
        prefix = f"best {fmt_bpb(best_value)} (trial {best_trial})  "
        curve = sparkline(snap.best_curve, max(8, width - 4 - len(prefix)))
        lines.append(Text.assemble(prefix, (curve, "green")))
    if snap.llm_calls or s.model:
        calls, prompt, completion, cost = llm_totals(snap.llm_calls)
        lines.append(Text(f"LLM {calls} calls · {prompt:,} prompt + {completion:,} completion tokens · ${cost:.4f}"))
    for line in lines:
        line.no_wrap, line.overflow = True, "ellipsis"
    return lines


def render_training(snap: Snapshot, training: Training) -> RenderableType:
    step = training.step
    rows: list[RenderableType] = []
    if step:
        budget = f" / {snap.preset.time_budget:g} s" if snap.preset else ""
        rows.append(Text(f"step {int(step.get('step', 0))}  loss {step.get('loss', float('nan')):.4f}  "
                         f"tok/s {step.get('tok_per_s', 0):,.0f}  mem {step.get('mem_gb', 0):.2f} GB  "
                         f"train {step.get('train_s', 0):.1f} s{budget}", style="bold"))
        progress = min(1.0, max(0.0, step.get("progress", 0.0)))
        bar = Table.grid(padding=(0, 1))
        bar.add_column(width=40)
        bar.add_column(width=5)
        bar.add_row(ProgressBar(total=1.0, completed=progress, width=40), f"{progress:.0%}")
        rows.append(bar)
    else:
        rows.append(Text("waiting for the first training step", style="dim"))
    rows.extend(Text(line, style="dim", no_wrap=True, overflow="ellipsis") for line in training.lines)
    return Group(*rows)


def tail_lines(console: Console, text: str, width: int, limit: int) -> Text:
    """The last `limit` screen lines of `text` wrapped to `width`: the newest part of a stream."""
    wrapped = Text(text.rstrip("\n")).wrap(console, max(10, width))
    return Text("\n").join(wrapped[-limit:])


def condense_diff(diff: str, limit: int) -> tuple[list[str], int]:
    """The lines of `diff` that fit `limit` lines, what changed first: the whole diff when it fits, else
    its hunks with less and less context (the file headers go first), else the changed lines alone, else
    the added ones (the new code), cut to fit. Returns the lines and how many were left out."""
    lines = diff.rstrip("\n").splitlines()
    if len(lines) <= limit:
        return lines, 0
    body = [line for line in lines if not line.startswith(("--- ", "+++ "))]
    changed = [i for i, line in enumerate(body) if line[:1] in "+-"]
    candidates = [[i for i, line in enumerate(body) if line.startswith("@@") or any(abs(i - c) <= context
                                                                                     for c in changed)]
                  for context in (3, 2, 1, 0)]
    candidates += [changed, [i for i in changed if body[i].startswith("+")]]
    room = max(1, limit - 1)  # a line for saying what was left out
    keep = next((kept for kept in candidates if len(kept) <= room), candidates[-1][:room])
    return [body[i] for i in keep], len(lines) - len(keep)


def diff_view(diff: str, limit: int) -> RenderableType:
    lines, left_out = condense_diff(diff, limit)
    shown = Syntax("\n".join(lines), "diff", theme="ansi_dark", background_color="default")
    if not left_out:
        return shown
    return Group(shown, Text(f"… {left_out} more lines (headers and context)", style="dim"))


def render_current(snap: Snapshot, console: Console, width: int, body_lines: int) -> Panel:
    phase = snap.phase
    style = PHASE_STYLES.get(phase, "")
    if snap.final:
        return Panel(Text(one_line(snap.status.reason) or phase, style=style), border_style=style,
                     title=f"[{style}]run {phase}[/]", title_align="left")
    if snap.writer_alive is False:
        return Panel(Text(f"arena (pid {snap.status.pid}) is gone: the run stopped during trial {snap.trial} ({phase}) "
                          "without saying why (killed?); run the same `arena run` command to resume it", style="red"),
                     title="[red]arena is gone[/]", title_align="left", border_style="red")
    title = f"trial {snap.trial} · [{style}]{phase}[/]"
    if snap.trial_started is not None:
        title += f" · {fmt_duration(snap.elapsed)}"
    written = snap.training.written if snap.training else None
    if written is not None:  # quiet since the later of the last output and this attempt's start (a resumed
        quiet = snap.now - max(written, snap.trial_started or 0.0)  # trial's log holds the killed one's)
        if quiet > QUIET_S:
            title += f" · [yellow]no output for {fmt_duration(quiet)}[/]"
    rows: list[RenderableType] = []
    description = snap.status.description
    if description:
        rows.append(Text(one_line(description), style="bold", no_wrap=True, overflow="ellipsis"))
    if phase == "proposing":
        rows.append(render_proposing(snap, console, width, body_lines))
    elif phase == "applying":
        rows.append(Text("applying the proposal to train.py", style="dim"))
    elif phase in ("running", "evaluating"):
        if snap.status.diff:
            rows.append(diff_view(snap.status.diff, body_lines))
        if snap.training is not None:
            rows.append(render_training(snap, snap.training))
    else:
        rows.append(render_idle(snap))
    return Panel(Group(*rows), title=title, title_align="left", border_style=style or "white")


def render_proposing(snap: Snapshot, console: Console, width: int, body_lines: int) -> RenderableType:
    method = snap.status.method or snap.settings.method
    if snap.stream is None:
        return Text(f"{method} is proposing trial {snap.trial}", style="dim")
    if not snap.stream.strip():
        return Text(f"{method} asked the model; waiting for its first token", style="dim")
    return Group(Text(f"{method}: the model's answer, streaming", style="magenta"),
                 tail_lines(console, snap.stream, width - 4, body_lines))


def render_idle(snap: Snapshot) -> Text:
    if snap.status.time is None:  # no status.json yet: the loop writes the time into every status
        return Text("the run has not started a trial yet", style="dim")
    age = snap.now - snap.status.time
    if snap.writer_alive is None and age > STALE_IDLE_S:  # an arena elsewhere, or a status from before pids
        return Text(f"no trial running for {fmt_duration(age)}: the run has finished or was stopped", style="dim")
    return Text(f"between trials; trial {snap.trial} comes next", style="dim")


def fit(text: str, width: int) -> str:
    """`text` cut (with an ellipsis) or padded to exactly `width` cells."""
    if cell_len(text) > width:
        return set_cell_size(text, max(0, width - 1)) + "…"
    return set_cell_size(text, width)


# The two tables are drawn as plain lines of text: a rich Table measures every cell on every frame,
# which costs a 2-core CPU run noticeable training time at 4 frames a second.
RECENT_HEADER = f"{'#':>4}  {'method':<9}  {'status':<13}  {'val_bpb':>8}  {'verdict':<10}  {'time':>5}  description"
LEADER_HEADER = f"{'rank':>4}  {'trial':>5}  {'val_bpb':>8}  {'vs baseline':>11}  method"
LEADER_WIDTH = len(LEADER_HEADER) + 4
SIDE_BY_SIDE_WIDTH = 110  # narrower screens show the leaderboard below the recent trials


def recent_lines(records: list[TrialRecord]) -> list[tuple[str, str]]:
    """(line, style) for the last trials: number, method, status, val_bpb, verdict, time, description."""
    lines = [(f"recent trials (last {RECENT_TRIALS})", "bold"), (RECENT_HEADER, "bold")]
    for r in records[-RECENT_TRIALS:]:
        lines.append((f"{r.trial:>4}  {fit(r.method, 9)}  {fit(r.status.value, 13)}  "
                      f"{fmt_bpb(r.val_bpb):>8}  {fit(verdict(r), 10)}  "
                      f"{fmt_duration(r.total_seconds):>5}  {one_line(r.description)}",
                      row_style(r)))
    return lines


def leader_lines(records: list[TrialRecord]) -> list[tuple[str, str]]:
    """(line, style) for the best trials by val_bpb, with their change against the baseline."""
    scored = sorted(((r.val_bpb, r) for r in records if r.ok and r.val_bpb is not None),
                    key=lambda pair: (pair[0], pair[1].trial))
    baseline = records[0].val_bpb if records else None
    lines = [(f"leaderboard (top {LEADERS}; lower val_bpb is better)", "bold"), (LEADER_HEADER, "bold")]
    for rank, (value, r) in enumerate(scored[:LEADERS], start=1):
        change = f"{(value / baseline - 1) * 100:+.2f}%" if baseline else "-"
        lines.append((f"{rank:>4}  {r.trial:>5}  {fmt_bpb(value):>8}  {change:>11}  {r.method}",
                      "green" if rank == 1 else ""))
    return lines


def side_by_side(left: list[tuple[str, str]], right: list[tuple[str, str]], width: int) -> Text:
    """Two lists of styled lines as two columns, each line cut to its column; the right one (the
    leaderboard) takes what it needs, the left one (with the descriptions) the rest."""
    left_width = width - 2 - LEADER_WIDTH
    rows = []
    for index in range(max(len(left), len(right))):
        (l_text, l_style), (r_text, r_style) = [(side[index] if index < len(side) else ("", ""))
                                                for side in (left, right)]
        rows.append(Text.assemble((fit(l_text, left_width), l_style), "  ",
                                  (fit(r_text, LEADER_WIDTH).rstrip(), r_style)))
    return Text("\n").join(rows)


def stacked(lines: list[tuple[str, str]], width: int) -> Text:
    return Text("\n").join(Text(fit(text, width).rstrip(), style) for text, style in lines)


def worker_lines(snap: Snapshot, width: int) -> list[Text]:
    """A line per worker: where it runs, its trial, how far that trial got, what it tries."""
    lines = []
    for worker, training in snap.workers:
        head = f"w{worker.worker} {fit(worker.device, 10)} "
        if worker.phase != "running" or worker.trial is None:
            lines.append(Text(head + "idle", style="dim", no_wrap=True))
            continue
        elapsed = fmt_duration(max(0.0, snap.now - worker.started)) if worker.started is not None else "-"
        step = training.step if training is not None else {}
        if training is not None and training.evaluating:
            where = "evaluating"
        elif step:
            where = f"step {int(step.get('step', 0))} {min(1.0, step.get('progress', 0.0)):>4.0%} " \
                    f"loss {step.get('loss', float('nan')):.3f}"
        else:
            where = "starting"
        text = f"{head}trial {worker.trial:<4} {elapsed:>6}  {fit(where, 30)}  {one_line(worker.description or '')}"
        lines.append(Text(fit(text, max(20, width - 4)), no_wrap=True, overflow="ellipsis"))
    return lines


def render_frame(snap: Snapshot, console: Console, stop_rule: StopRule | None = None,
                 footer: str | None = None) -> RenderableType:
    """The whole screen for a console of the given size; the diff or stream gets the spare height."""
    width, height = console.size
    header = header_lines(snap, stop_rule, width)
    recent, leaders = recent_lines(snap.records), leader_lines(snap.records)
    if width >= SIDE_BY_SIDE_WIDTH:
        tables = side_by_side(recent, leaders, width)
    else:
        tables = stacked([*recent, ("", ""), *leaders], width)
    workers = worker_lines(snap, width)
    # borders, the header, the workers, the trial's description, label and training lines, the tables
    fixed = (2 + len(header) + (2 + len(workers) if workers else 0) + 2 + 2 + 2 + LOG_LINES + len(tables.split())
             + (1 if footer else 0))
    body_lines = min(MAX_BODY_LINES, max(MIN_BODY_LINES, height - fixed))
    parts: list[RenderableType] = [Panel(Group(*header), title="arena", title_align="left", border_style="blue")]
    if workers:
        parts.append(Panel(Group(*workers), title=f"{len(workers)} workers", title_align="left", border_style="blue"))
    parts += [render_current(snap, console, width, body_lines), tables]
    if footer:
        parts.append(Text(footer, style="dim"))
    return Group(*parts)


FrameKey = tuple[object, ...]


def frame_key(snap: Snapshot, console: Console, generation: int) -> FrameKey:
    """What a frame shows, at the resolution it shows it (whole seconds): an equal key, an equal frame."""
    return (console.size, generation, len(snap.records), snap.status, snap.training, snap.workers, snap.stream,
            len(snap.llm_calls), int(snap.now))


class RunView:
    """A run directory and what to draw from it; `frame` never raises, so a display problem never
    reaches the loop it runs beside."""

    def __init__(self, run_dir: Path, stop_rule: StopRule | None = None, footer: str | None = None):
        self.reader = RunReader(run_dir)
        self.stop_rule = stop_rule
        self.footer = footer
        self._last_key: FrameKey | None = None

    def frame(self, console: Console, only_if_changed: bool = False) -> RenderableType | None:
        """The current frame; with only_if_changed, None when it would equal the last one."""
        try:
            snap = self.reader.snapshot()
            key = frame_key(snap, console, self.reader.ledger.generation)
            if only_if_changed and key == self._last_key:
                return None
            self._last_key = key
            return render_frame(snap, console, self.stop_rule, self.footer)
        except Exception as e:  # noqa: BLE001 — whatever went wrong is shown on screen; it must not stop the run
            return Text(f"live view: cannot draw {self.reader.dir}: {type(e).__name__}: {e}", style="red")


# ---------------------------------------------------------------- running the display

def _drive(live: Live, view: RunView, lines: queue.SimpleQueue[str], stop: threading.Event) -> None:
    """The display thread: REFRESH_PER_SECOND times a second, print the queued report lines above the
    view and redraw it if anything it shows changed; one last round after `stop`, so the final lines
    and state stay on screen. Live's own refresh thread is not used: it would read the run directory
    under the console's lock, which report lines printed from the loop would then wait on. A resized
    terminal is cleared first: the old frame, rewrapped to the new width, would leave fragments behind."""
    size = live.console.size
    while True:
        stopping = stop.is_set()
        while not lines.empty():
            live.console.print(lines.get(), markup=False, highlight=False)
        if live.console.size != size:
            size = live.console.size
            live.console.clear()
        frame = view.frame(live.console, only_if_changed=True)
        if frame is not None:
            live.update(frame, refresh=True)
        if stopping:
            return
        stop.wait(1 / REFRESH_PER_SECOND)


@contextlib.contextmanager
def live_view(run_dir: Path, stop_rule: StopRule | None = None, console: Console | None = None,
              footer: str | None = None) -> Iterator[Reporter]:
    """Show the live view of `run_dir` while the body runs; yields report(line), which prints a line
    above the view. report only queues the line, so the caller never waits on the screen."""
    view = RunView(run_dir, stop_rule, footer)
    lines: queue.SimpleQueue[str] = queue.SimpleQueue()
    stop = threading.Event()
    with Live(console=console or Console(), auto_refresh=False) as live:
        thread = threading.Thread(target=_drive, args=(live, view, lines, stop), name="arena-live", daemon=True)
        thread.start()
        try:
            yield lines.put
        finally:
            stop.set()
            thread.join()


# ---------------------------------------------------------------- arena watch

def resolve_run_dir(run: str, runs_dir: Path) -> Path:
    """A run's name under `runs_dir`, or else a path to a run directory."""
    named = runs_dir / run
    return named if named.exists() or not Path(run).exists() else Path(run)


WATCH_FOOTER = "arena watch · read-only · press q (or Ctrl-C) to quit"


def wait_for_quit() -> None:
    """Until the user presses q (stdin a terminal, read key by key) or Ctrl-C; without a terminal, Ctrl-C."""
    if not sys.stdin.isatty():
        while True:
            time.sleep(3600)
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)  # keys arrive one at a time, unechoed; Ctrl-C still interrupts
        while True:
            readable, _, _ = select.select([fd], [], [], 0.25)
            if readable and os.read(fd, 1).lower() == b"q":
                return
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def watch(run_dir: Path, once: bool = False, console: Console | None = None) -> int:
    console = console or Console()
    if once or not console.is_terminal:  # a live view redraws in place: on a pipe or a file it would show nothing
        console.print(RunView(run_dir).frame(console))
        return 0
    with live_view(run_dir, console=console, footer=WATCH_FOOTER), contextlib.suppress(KeyboardInterrupt):
        wait_for_quit()  # Ctrl-C leaves the view too
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    return watch(resolve_run_dir(args.run, args.runs_dir), once=args.once)


def add_parser(subparsers: argparse._SubParsersAction[ParserT]) -> ParserT:
    """Register `arena watch` on the CLI's subparsers."""
    p = subparsers.add_parser("watch", help="show the live view of a run, e.g. one running in another terminal "
                              "(read-only)")
    p.add_argument("run", help="the run's name under --runs-dir, or the path of a run directory")
    p.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where runs live (default ./runs)")
    p.add_argument("--once", action="store_true", help="print one frame and exit")
    p.set_defaults(func=cmd_watch)
    return p
