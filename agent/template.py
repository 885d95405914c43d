"""The training template shipped with the package: where it is and which files are the harness."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from sandbox.phases import harness_hash as hash_files

HARNESS_FILES = ("prepare.py", "harness.py", "exported.py")  # read-only: always from here, never from a trial
EDITABLE_FILE = "train.py"


def template_dir() -> Path:
    return Path(str(files("train_template")))


def harness_hash(directory: Path | None = None) -> str:
    """One digest over the harness files, recorded with every result."""
    return hash_files(directory or template_dir(), HARNESS_FILES)
