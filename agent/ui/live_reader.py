"""Reading a run directory for the live view: cheap, read-only, tolerant of half-written files.

Append-only JSONL files are read from where the last read stopped, logs and the LLM stream only
from their last few KB; nothing here writes into the run directory or takes a lock.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from agent.errors import ArenaError
from agent.jsonl import JsonlFollower, JsonObject
from agent.judging import best_of
from agent.presets import Preset, get_preset
from agent.record import TrialRecord
from agent.ui.run_files import RunStatus, StoredSettings, WorkerStatus, read_run_info

LOG_LINES = 3               # training log lines kept for the current-trial panel
TAIL_BYTES = 16 * 1024      # enough for the last step line, the eval marker and a screenful of stream
STREAM_SLACK_S = 1.0        # file times on some file systems are coarser than time.time()
STEP_FIELD = re.compile(r"(\w+)=(\S+)")
FINAL_PHASES = ("done", "stopped", "failed")


def read_json(path: Path) -> JsonObject | None:
    """A small JSON file the loop replaces atomically; None when absent or unreadable."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


class LedgerFollower:
    """The ledger's records as it grows; a line that is not a trial record is skipped (the loop's business)."""

    def __init__(self, path: Path):
        self.lines = JsonlFollower(path)
        self.records: list[TrialRecord] = []
        self._read = 0                 # lines of self.lines.records already converted
        self._generation = 0

    @property
    def generation(self) -> int:
        return self.lines.generation

    def poll(self) -> list[TrialRecord]:
        raw = self.lines.poll()
        if self.lines.generation != self._generation:
            self.records, self._read, self._generation = [], 0, self.lines.generation
        for line in raw[self._read:]:
            with contextlib.suppress(ValueError):
                self.records.append(TrialRecord.from_json(line))
        self._read = len(raw)
        return self.records


def read_tail(path: Path, max_bytes: int = TAIL_BYTES) -> tuple[str, bool]:
    """The last `max_bytes` of a file as text ('' when absent), and whether the start was cut off."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            start = max(0, size - max_bytes)
            f.seek(start)
            data = f.read(max_bytes)
    except OSError:
        return "", False
    return data.decode("utf-8", errors="replace"), start > 0


class FileTail:
    """The tail of one file at a time (the path may change), re-read only when the file changed."""

    def __init__(self) -> None:
        self._key: tuple[Path, int, int] | None = None
        self._tail: tuple[str, bool] = ("", False)

    def get(self, path: Path) -> tuple[str, bool, float | None]:
        """(text, cut, mtime); mtime None when the file does not exist."""
        try:
            stat = os.stat(path)
        except OSError:
            return "", False, None
        key = (path, stat.st_size, stat.st_mtime_ns)
        if key != self._key:
            self._key, self._tail = key, read_tail(path)
        return *self._tail, stat.st_mtime


@dataclass
class Training:
    """What the log of the running trial says: its last step line, the phase, its last lines."""
    step: dict[str, float] = field(default_factory=dict)
    evaluating: bool = False
    lines: list[str] = field(default_factory=list)
    written: float | None = None  # when the log last grew


def parse_step(line: str) -> dict[str, float]:
    """The fields of a harness progress line `step=12 loss=3.4 progress=0.41 tok_per_s=9123 ...`."""
    fields: dict[str, float] = {}
    for key, value in STEP_FIELD.findall(line):
        try:
            fields[key] = float(value)
        except ValueError:
            continue
    return fields


def parse_log(text: str, cut: bool, written: float | None = None) -> Training:
    if cut:
        text = text.partition("\n")[2]  # the seek landed inside a line
    attempt = text.rfind("=== trial ")
    if attempt >= 0:
        text = text[attempt:]  # a resumed trial appends to its log; only the latest attempt counts
    lines = text.splitlines()
    step = next((parse_step(line) for line in reversed(lines) if line.startswith("step=")), {})
    return Training(step=step, evaluating="=== eval phase" in text,
                    lines=[line for line in lines if line.strip()][-LOG_LINES:], written=written)


@dataclass
class Snapshot:
    """Everything one frame shows, read from the run directory at `now`."""
    name: str
    settings: StoredSettings
    preset: Preset | None  # None when the run names a preset this arena does not know
    records: list[TrialRecord]
    best_curve: list[float | None]
    status: RunStatus      # all None before the loop's first status
    trial_started: float | None
    training: Training | None
    stream: str | None  # the LLM answer streaming for the proposal being made, if one is
    llm_calls: list[JsonObject]  # the lines of llm.jsonl
    now: float
    writer_alive: bool | None = None  # whether the arena that wrote status.json still runs; None: cannot tell
    workers: tuple[tuple[WorkerStatus, Training | None], ...] = ()  # several workers: each with its trial's log

    @property
    def final(self) -> bool:
        """The run's last status: done, stopped or failed (with the reason in status.reason)."""
        return self.phase in FINAL_PHASES

    @property
    def phase(self) -> str:
        phase = self.status.phase or "starting"
        if phase == "running" and self.training is not None and self.training.evaluating:
            return "evaluating"
        return phase

    @property
    def trial(self) -> int:
        return self.status.trial if self.status.trial is not None else len(self.records)

    @property
    def elapsed(self) -> float:
        return max(0.0, self.now - self.trial_started) if self.trial_started is not None else 0.0


class RunReader:
    """Reads a run directory into snapshots; keeps only cheap incremental state between reads."""

    def __init__(self, run_dir: Path):
        self.dir = run_dir
        self.settings = read_run_info(run_dir).settings
        self.preset = preset_of(self.settings)
        self.ledger = LedgerFollower(run_dir / "ledger.jsonl")
        self.llm_log = JsonlFollower(run_dir / "llm.jsonl")
        self.log_tail = FileTail()
        self.stream_tail = FileTail()
        self._curve: list[float | None] = []
        self._curve_generation = -1
        self._proposing: tuple[int | None, float] | None = None  # (trial, when its proposal began), if seen
        self.worker_tails: dict[int, FileTail] = {}

    def snapshot(self) -> Snapshot:
        records = self.ledger.poll()
        status = RunStatus.from_json(read_json(self.dir / "state" / "status.json") or {})
        phase = status.phase
        training = self._training(status) if phase == "running" else None
        alive = writer_alive(status)
        return Snapshot(name=self.settings.name or self.dir.name, settings=self.settings,
                        preset=self.preset, records=records, best_curve=self._best_curve(records),
                        status=status, trial_started=self._trial_started(status), training=training,
                        stream=self._stream(status) if phase == "proposing" else None,
                        llm_calls=self.llm_log.poll(), now=time.time(), writer_alive=alive,
                        workers=self._workers(status) if phase not in FINAL_PHASES and alive is not False else ())

    def _best_curve(self, records: list[TrialRecord]) -> list[float | None]:
        """The current best after each trial, extended only by the trials added since the last read."""
        if self.ledger.generation != self._curve_generation:
            self._curve, self._curve_generation = [], self.ledger.generation
        for end in range(len(self._curve) + 1, len(records) + 1):
            self._curve.append(best_of(records[:end])[1])
        return self._curve

    def _trial_started(self, status: RunStatus) -> float | None:
        """When the current trial began: its proposal if this reader saw it, else the sandbox start."""
        phase, trial = status.phase, status.trial
        if phase in (None, "idle", *FINAL_PHASES):
            return None
        if phase == "proposing" and (self._proposing is None or self._proposing[0] != trial):
            self._proposing = (trial, status.time if status.time is not None else time.time())
        if self._proposing is not None and self._proposing[0] == trial:
            return self._proposing[1]
        return status.started if status.started is not None else status.time

    def _training(self, status: RunStatus) -> Training:
        text, cut, written = self.log_tail.get(self.dir / "logs" / f"trial-{status.trial or 0:05d}.log")
        return parse_log(text, cut, written)

    def _workers(self, status: RunStatus) -> tuple[tuple[WorkerStatus, Training | None], ...]:
        """Each worker, with what its trial's log says, when the run has more than one."""
        if len(status.workers) < 2:
            return ()
        shown = []
        for worker in status.workers:
            training = None
            if worker.phase == "running" and worker.trial is not None:
                tail = self.worker_tails.setdefault(worker.worker, FileTail())
                training = parse_log(*tail.get(self.dir / "logs" / f"trial-{worker.trial:05d}.log"))
            shown.append((worker, training))
        return tuple(shown)

    def _stream(self, status: RunStatus) -> str | None:
        """The streamed answer, when written during this proposal (an older one belongs to an earlier trial)."""
        text, _, mtime = self.stream_tail.get(self.dir / "state" / "llm_stream.txt")
        if mtime is None or mtime < (status.time or 0.0) - STREAM_SLACK_S:
            return None
        return text


def writer_alive(status: RunStatus) -> bool | None:
    """Whether the process that wrote `status` still runs; None when it is elsewhere or unnamed."""
    pid = status.pid
    if pid is None or status.host != socket.gethostname():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it runs, as another user
    return True


def preset_of(settings: StoredSettings) -> Preset | None:
    """The run's preset with its --budget: the training seconds per trial and the device."""
    try:
        return get_preset(settings.preset or "cpu", time_budget=settings.budget)
    except ArenaError:
        return None


