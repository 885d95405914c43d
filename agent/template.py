"""The training template shipped with the package: where it is and which files are the harness."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from sandbox.phases import harness_hash as hash_files

# read-only: always from here, never from a trial
HARNESS_FILES = ("prepare.py", "harness.py", "exported.py", "memory_check.py")
EDITABLE_FILE = "train.py"

# A run records the hash of the harness it started with, and a resume with another harness is refused:
# its later trials would be scored by other code than its earlier ones. An entry here maps the hash of an
# earlier harness to the current one when only code that no trial runs left the harness files, and every
# line a trial runs (loader, clock, metric, export, eval) is byte-for-byte the same: such a run's trials
# are scored as before, so it may go on (its new ledger lines record the hash they ran with).
# An entry comes with a test that rebuilds it from git history and checks that claim (tests/test_harness_hash.py
# had one until its entry went, when the eval phase's causality probes began to cut at every position); once
# the harness changes again, an entry's target is stale and the entry goes.
SAME_TRIAL_CODE: dict[str, str] = {}


def template_dir() -> Path:
    return Path(str(files("train_template")))


def harness_hash(directory: Path | None = None) -> str:
    """One digest over the harness files, recorded with every result."""
    return hash_files(directory or template_dir(), HARNESS_FILES)


def may_resume_with(recorded: str, current: str) -> bool:
    """Whether a run that recorded harness hash `recorded` may run trials with the harness hashed `current`."""
    return recorded == current or SAME_TRIAL_CODE.get(recorded) == current
