"""The training template shipped with the package: where it is and which files are the harness."""

from __future__ import annotations

import hashlib
from importlib.resources import files
from pathlib import Path

HARNESS_FILES = ("prepare.py", "harness.py")  # read-only: always taken from here, never from a trial
EDITABLE_FILE = "train.py"


def template_dir() -> Path:
    return Path(str(files("train_template")))


def harness_hash(directory: Path | None = None) -> str:
    """One digest over the harness files, recorded with every result."""
    directory = directory or template_dir()
    digest = hashlib.sha256()
    for name in HARNESS_FILES:
        digest.update(name.encode() + b"\0" + (directory / name).read_bytes())
    return digest.hexdigest()[:16]
