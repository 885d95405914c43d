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


class Ledger:
    def __init__(self, path: Path, records: list[dict]):
        self.path = path
        self.records = records

    @classmethod
    def open(cls, path: Path) -> "Ledger":
        """Load the ledger, dropping a torn final line left by a kill mid-write."""
        if not path.exists():
            path.touch()
            return cls(path, [])
        raw = path.read_bytes()
        lines = raw.split(b"\n")
        records, good_bytes = [], 0
        for index, line in enumerate(lines):
            if not line:
                good_bytes += 1 if index < len(lines) - 1 else 0
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                if index < len(lines) - 1:  # damage before the last line is not ours to repair
                    raise ArenaError(f"{path} line {index + 1} is not valid JSON; the ledger was edited or "
                                     "damaged — restore it from a backup") from None
                break
            good_bytes += len(line) + 1
        if good_bytes < len(raw):
            with open(path, "r+b") as f:
                f.truncate(good_bytes)
                os.fsync(f.fileno())
        for expected, record in enumerate(records):
            if record.get("trial") != expected:
                raise ArenaError(f"{path} holds trial {record.get('trial')} where trial {expected} belongs; "
                                 "the ledger is damaged — restore it from a backup")
        return cls(path, records)

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
