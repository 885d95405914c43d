"""The run's ledger: one JSON line per trial, appended and fsynced; plus autoresearch's results.tsv.

A trial counts as done exactly when its line is complete on disk. A kill during the write leaves a
torn last line, which `Ledger.open` cuts off, so that trial simply runs again. Lines come in the order
trials finished: with several workers, trial 7 may finish (and be judged) before trial 6. The baseline,
trial 0, is always first, since every other trial is measured against it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from agent.errors import ArenaError
from agent.jsonl import JsonObject, read_jsonl
from agent.record import TrialRecord

RESULTS_HEADER = "commit\tval_bpb\tmemory_gb\tstatus\tdescription\n"


def fsync_write(path: Path, text: str) -> None:
    """Replace `path` atomically: write a sibling, fsync it, rename over, fsync the directory."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def parse_records(raw: list[JsonObject], path: Path) -> list[TrialRecord]:
    """The ledger's lines as records, the baseline first and no trial twice; anything else is damage, told in
    one line."""
    records: list[TrialRecord] = []
    seen: set[int] = set()
    for index, line in enumerate(raw):
        trial = line.get("trial")
        if not isinstance(trial, int) or isinstance(trial, bool) or trial in seen or (trial == 0) != (index == 0):
            what = ("not a trial number" if not isinstance(trial, int) or isinstance(trial, bool)
                    else "the baseline, trial 0, belongs there" if index == 0
                    else "a trial recorded twice, or the baseline again")
            raise ArenaError(f"{path} holds trial {trial!r} on line {index + 1} ({what}); the ledger is damaged — "
                             "restore it from a backup")
        try:
            records.append(TrialRecord.from_json(line))
        except ValueError as e:
            raise ArenaError(f"{path}: trial {trial} is not a trial record ({e}); "
                             "restore it from a backup") from None
        seen.add(trial)
    return records


class Ledger:
    def __init__(self, path: Path, records: list[TrialRecord]):
        self.path = path
        self.records = records  # in the order they were recorded
        self._by_trial = {record.trial: record for record in records}

    @property
    def trials(self) -> set[int]:
        return set(self._by_trial)

    def get(self, trial: int) -> TrialRecord:
        return self._by_trial[trial]

    @classmethod
    def read(cls, path: Path) -> Ledger:
        """The ledger's complete lines, changing nothing on disk (a torn last line is left for repair())."""
        raw = read_jsonl(path, "the ledger") if path.exists() else []
        return cls(path, parse_records(raw, path))

    def repair(self) -> None:
        """Cut a torn final line left by a kill mid-write, so the next append starts a line of its own."""
        if self.path.exists():
            read_jsonl(self.path, "the ledger", cut_torn=True)
        else:
            self.path.touch()

    @classmethod
    def open(cls, path: Path) -> Ledger:
        """Load the ledger and repair it: for a run whose every check has passed."""
        ledger = cls.read(path)
        ledger.repair()
        return ledger

    def append(self, record: TrialRecord) -> None:
        if record.trial in self._by_trial or (record.trial == 0) != (not self.records):
            raise ValueError(f"trial {record.trial} cannot be recorded after trials {sorted(self._by_trial)}")
        # keys as the record orders them, not sorted: a config keeps the constants block's order, so a resumed run,
        # which reads the records back, prompts an LLM with what an uninterrupted one would
        line = json.dumps(record.to_json()) + "\n"
        with open(self.path, "a") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        self.records.append(record)
        self._by_trial[record.trial] = record

    def __len__(self) -> int:
        return len(self.records)


def results_tsv(records: list[TrialRecord]) -> str:
    """autoresearch's results.tsv: commit, val_bpb, memory_gb, status (keep/discard/crash), description."""
    rows = [RESULTS_HEADER]
    for r in records:
        status = "keep" if r.kept else ("discard" if r.ok else "crash")
        description = r.description.replace("\t", " ").replace("\n", " ")
        if not r.ok:
            description = f"[{r.status.value}] {description}"
        rows.append(f"{(r.commit or '0000000')[:7]}\t{(r.val_bpb or 0.0):.6f}\t"
                    f"{(r.peak_memory_gb or 0.0):.1f}\t{status}\t{description}\n")
    return "".join(rows)
