"""What the loop writes for its readers, as typed values: run.json and state/status.json.

Both are arena's own files, but a reader may meet one written by another version of arena, or a damaged
copy: a field that is absent or not of its type reads as None, never as an error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from agent.errors import ArenaError
from agent.jsonl import JsonObject


def _str(raw: JsonObject, key: str) -> str | None:
    value = raw.get(key)
    return value if isinstance(value, str) else None


def _int(raw: JsonObject, key: str) -> int | None:
    value = raw.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _float(raw: JsonObject, key: str) -> float | None:
    value = raw.get(key)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _str_list(raw: JsonObject, key: str) -> list[str] | None:
    value = raw.get(key)
    return value if isinstance(value, list) and all(isinstance(item, str) for item in value) else None


@dataclass(frozen=True)
class StoredSettings:
    """The settings a run was started with (RunSettings, as run.json holds them): what the views show."""
    name: str | None = None
    method: str | None = None
    model: str | None = None
    seed: int | None = None
    preset: str | None = None
    budget: float | None = None
    eval_tokens: int | None = None
    backend: str | None = None
    isolation: str | None = None
    gpus: list[str] | None = None

    @classmethod
    def from_json(cls, raw: JsonObject) -> StoredSettings:
        return cls(name=_str(raw, "name"), method=_str(raw, "method"), model=_str(raw, "model"),
                   seed=_int(raw, "seed"), preset=_str(raw, "preset"), budget=_float(raw, "budget"),
                   eval_tokens=_int(raw, "eval_tokens"), backend=_str(raw, "backend"),
                   isolation=_str(raw, "isolation"), gpus=_str_list(raw, "gpus"))


@dataclass(frozen=True)
class WorkerStatus:
    """One worker in status.json: where it runs trials, and the trial it runs now (if any)."""
    worker: int
    device: str
    phase: str
    trial: int | None = None
    description: str | None = None
    started: float | None = None

    @classmethod
    def from_json(cls, raw: JsonObject, index: int) -> WorkerStatus:
        worker = _int(raw, "worker")
        return cls(worker=index if worker is None else worker, device=_str(raw, "device") or "-",
                   phase=_str(raw, "phase") or "idle", trial=_int(raw, "trial"), description=_str(raw, "description"),
                   started=_float(raw, "started"))


@dataclass(frozen=True)
class StopLimits:
    """The --trials and --hours of the arena working on a run, as status.json says them (for `arena watch`)."""
    trials: int | None = None
    hours: float | None = None


@dataclass(frozen=True)
class RunStatus:
    """state/status.json (Run.set_status): what the loop is doing now, and which process on which host says so."""
    phase: str | None = None
    trial: int | None = None
    time: float | None = None      # when it was written
    started: float | None = None   # when the current trial began (its proposal made)
    reason: str | None = None      # why the run ended (done, stopped, failed)
    description: str | None = None
    method: str | None = None
    diff: str | None = None
    pid: int | None = None
    host: str | None = None
    workers: tuple[WorkerStatus, ...] = ()  # with several workers: each one's trial
    stop: StopLimits | None = None  # when the writing arena stops

    @classmethod
    def from_json(cls, raw: JsonObject) -> RunStatus:
        listed = raw.get("workers")
        workers = tuple(WorkerStatus.from_json(w, i) for i, w in enumerate(listed) if isinstance(w, dict)) \
            if isinstance(listed, list) else ()
        limits = raw.get("stop")
        stop = StopLimits(_int(limits, "trials"), _float(limits, "hours")) if isinstance(limits, dict) and limits \
            else None
        return cls(phase=_str(raw, "phase"), trial=_int(raw, "trial"), time=_float(raw, "time"),
                   started=_float(raw, "started"), reason=_str(raw, "reason"), description=_str(raw, "description"),
                   method=_str(raw, "method"), diff=_str(raw, "diff"), pid=_int(raw, "pid"), host=_str(raw, "host"),
                   workers=workers, stop=stop)


@dataclass(frozen=True)
class StoredRun:
    """run.json as the views read it: the run's settings and the dataset its trials were measured on. (What
    `arena run` writes there is agent/run.py's RunInfo; this reader also takes runs of older versions.)"""
    settings: StoredSettings
    dataset_fingerprint: str | None

    @classmethod
    def from_json(cls, raw: JsonObject) -> StoredRun:
        settings = raw.get("settings")
        return cls(StoredSettings.from_json(settings if isinstance(settings, dict) else {}),
                   _str(raw, "dataset_fingerprint"))


def read_run_info(run_dir: Path) -> StoredRun:
    """run.json of a run directory, for every view; anything else is the user's mistake, told in one line."""
    if not run_dir.is_dir():
        raise ArenaError(f"no run directory {run_dir}; pass a run's name (and --runs-dir) or its directory")
    try:
        info = json.loads((run_dir / "run.json").read_text())
    except FileNotFoundError:
        raise ArenaError(f"{run_dir} is not a run (no run.json); pass a directory made by `arena run`") from None
    except (OSError, ValueError) as e:
        raise ArenaError(f"cannot read {run_dir / 'run.json'} ({e}); is {run_dir} a run made by `arena run`?") from None
    if not isinstance(info, dict) or not isinstance(info.get("settings"), dict):
        raise ArenaError(f"{run_dir / 'run.json'} holds no run settings; pass a directory made by `arena run`")
    return StoredRun.from_json(info)
