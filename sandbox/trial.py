"""A trial as a sandbox sees it: a tree holding train.py, the data, and the fixed settings."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

from sandbox.outcome import Outcome

LogSink = Callable[[str], None]

EXPORT_GRACE_SECONDS = 60.0  # past budget + allowance: time to save the exported model before a hard kill


@dataclass(frozen=True)
class TrialSpec:
    tree: Path                # a directory with the trial's train.py
    data_dir: Path            # the prepared dataset
    harness_dir: Path         # where the pristine harness files come from (the template)
    harness_files: tuple[str, ...]
    config: dict              # run.json for the harness
    startup_allowance: float
    eval_timeout: float
    export_grace: float = EXPORT_GRACE_SECONDS  # tests shorten it to see a timeout in seconds

    @property
    def train_limit(self) -> float:
        return self.config["time_budget"] + self.startup_allowance

    @property
    def train_timeout(self) -> float:
        return self.train_limit + self.export_grace


class Backend(Protocol):
    def run(self, spec: TrialSpec, on_log: LogSink) -> Outcome:
        """Run both phases of one trial and classify what happened; never raises for trial failures."""
        ...


def stage_workdir(spec: TrialSpec, workdir: Path) -> None:
    """Lay out a fresh working directory: the trial's train.py beside pristine harness files."""
    workdir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(spec.tree / "train.py", workdir / "train.py")
    for name in spec.harness_files:
        shutil.copy2(spec.harness_dir / name, workdir / name)
    (workdir / "run.json").write_text(json.dumps(spec.config, indent=2) + "\n")
    (workdir / "out").mkdir(exist_ok=True)
