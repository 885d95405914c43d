"""The run's ledger: one JSON line per trial, appended and fsynced; plus autoresearch's results.tsv.

A trial counts as done exactly when its line is complete on disk. A kill during the write leaves a
torn last line, which `Ledger.open` cuts off, so that trial simply runs again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from agent.errors import ArenaError

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


def read_appended_jsonl(path: Path, what: str, cut_torn: bool) -> list[dict]:
    """The records of a JSON-lines file that is only ever appended to, one fsynced line at a time.

    Every line is written with its newline, so a last piece without one is a write a kill cut short:
    it is left out (and cut from the file when `cut_torn`, so the next append starts on a fresh line).
    Damage anywhere else is not ours to repair.
    """
    data = path.read_bytes()
    *lines, torn = data.split(b"\n")
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            raise ArenaError(f"{path} line {number} is not valid JSON; {what} was edited or damaged — "
                             "restore it from a backup") from None
    if torn and cut_torn:
        with open(path, "r+b") as f:
            f.truncate(len(data) - len(torn))
            os.fsync(f.fileno())
    return records


class Ledger:
    def __init__(self, path: Path, records: list[dict]):
        self.path = path
        self.records = records

    @classmethod
    def read(cls, path: Path) -> "Ledger":
        """The ledger's complete lines, changing nothing on disk (a torn last line is left for repair())."""
        records = read_appended_jsonl(path, "the ledger", cut_torn=False) if path.exists() else []
        for expected, record in enumerate(records):
            if record.get("trial") != expected:
                raise ArenaError(f"{path} holds trial {record.get('trial')} where trial {expected} belongs; "
                                 "the ledger is damaged — restore it from a backup")
        return cls(path, records)

    def repair(self) -> None:
        """Cut a torn final line left by a kill mid-write, so the next append starts a line of its own."""
        if self.path.exists():
            read_appended_jsonl(self.path, "the ledger", cut_torn=True)
        else:
            self.path.touch()

    @classmethod
    def open(cls, path: Path) -> "Ledger":
        """Load the ledger and repair it: for a run whose every check has passed."""
        ledger = cls.read(path)
        ledger.repair()
        return ledger

    def append(self, record: dict) -> None:
        if record["trial"] != len(self.records):
            raise ValueError(f"ledger expects trial {len(self.records)}, got {record['trial']}")
        line = json.dumps(record, sort_keys=True) + "\n"
        with open(self.path, "a") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        self.records.append(record)

    def __len__(self) -> int:
        return len(self.records)


def results_tsv(records: list[dict]) -> str:
    """autoresearch's results.tsv: commit, val_bpb, memory_gb, status (keep/discard/crash), description."""
    rows = [RESULTS_HEADER]
    for r in records:
        ok = r["status"] == "ok"
        status = "keep" if r["kept"] else ("discard" if ok else "crash")
        description = r["description"].replace("\t", " ").replace("\n", " ")
        if not ok:
            description = f"[{r['status']}] {description}"
        rows.append(f"{(r['commit'] or '0000000')[:7]}\t{(r['val_bpb'] or 0.0):.6f}\t"
                    f"{(r['peak_memory_gb'] or 0.0):.1f}\t{status}\t{description}\n")
    return "".join(rows)
