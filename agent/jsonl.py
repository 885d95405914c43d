"""The one reader of JSON-lines files: the ledger, the LLM log, and the foreign histories compare reads.

arena appends each line whole, newline included, and fsyncs it; so a last piece without a newline is a
write that a kill cut short (or one still under way). Damage anywhere else is not ours to repair.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from agent.errors import ArenaError

JsonObject = dict[str, Any]


def split_complete(data: bytes) -> tuple[list[bytes], bytes]:
    """The newline-terminated lines of `data`, and the piece after the last newline."""
    *lines, rest = data.split(b"\n")
    return lines, rest


def parse_line(line: bytes) -> JsonObject | None:
    """One line as a JSON object; None when it is not one."""
    try:
        value = json.loads(line)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def parse_lines(lines: list[bytes], path: Path, what: str) -> list[JsonObject]:
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except (ValueError, RecursionError):
            problem = "is not valid JSON"
        else:
            if isinstance(value, dict):
                records.append(value)
                continue
            problem = "is not a JSON object"
        raise ArenaError(f"{path} line {number} {problem}; {what} was edited or damaged — restore it from a "
                         "backup (or check that this is the right file)")
    return records


def read_jsonl(path: Path, what: str, *, cut_torn: bool = False,
               warnings: list[str] | None = None) -> list[JsonObject]:
    """The records of a JSON-lines file.

    arena's own files (no `warnings`): a last piece without a newline is left out, and cut from the file
    when `cut_torn` so that the next append starts a line of its own. Files from elsewhere (`warnings`
    given): a last line without a newline counts when it parses, and is skipped with a warning when not.
    """
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ArenaError(f"cannot read {path}: {e.strerror}") from None
    lines, torn = split_complete(data)
    records = parse_lines(lines, path, what)
    if torn.strip() and warnings is not None:
        last = parse_line(torn)
        if last is not None:
            records.append(last)
        else:
            warnings.append(f"{path}: ignoring a half-written last line ({len(torn)} bytes)")
    if torn and cut_torn:
        with open(path, "r+b") as f:
            f.truncate(len(data) - len(torn))
            os.fsync(f.fileno())
    return records


class JsonlFollower:
    """The complete lines appended to a file since the last poll, for a reader that watches it grow.
    Never writes; a damaged line is skipped (it is the writer's business); a replaced or shrunk file
    is read again from the start, and `generation` counts how often that happened."""

    def __init__(self, path: Path):
        self.path = path
        self.records: list[JsonObject] = []
        self.generation = 0
        self._offset = 0
        self._inode: int | None = None

    def poll(self) -> list[JsonObject]:
        try:
            stat = os.stat(self.path)
        except OSError:
            return self.records
        if stat.st_ino != self._inode or stat.st_size < self._offset:
            self.records, self._offset, self._inode = [], 0, stat.st_ino
            self.generation += 1
        if stat.st_size == self._offset:
            return self.records
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                chunk = f.read(stat.st_size - self._offset)
        except OSError:
            return self.records
        lines, torn = split_complete(chunk)
        self.records.extend(record for record in map(parse_line, lines) if record is not None)
        self._offset += len(chunk) - len(torn)
        return self.records
