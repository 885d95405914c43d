"""Resuming across harness versions: a run whose harness hash names the same trial code resumes, any other
harness is refused in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from agent.errors import ArenaError
from agent.ledger import Ledger
from agent.run import check_unchanged
from agent.template import (
    SAME_TRIAL_CODE,
    harness_hash,
    may_resume_with,
)
from tests.run_helpers import BASE, NEXT, check_run_consistent, fake_arena_run


def test_a_resume_accepts_only_the_same_trial_code(tmp_path: Path, monkeypatch) -> None:
    current = harness_hash()
    monkeypatch.setitem(SAME_TRIAL_CODE, "e" * 16, current)  # an earlier harness whose trial code is this one's
    info = {"settings": {"name": "old"}, "dataset_fingerprint": "f" * 16}
    for recorded in (current, "e" * 16):
        assert may_resume_with(recorded, current)
        check_unchanged({**info, "harness_hash": recorded}, "f" * 16, current)
    with pytest.raises(ArenaError, match="the harness .* changed since run 'old' started"):
        check_unchanged({**info, "harness_hash": "0" * 16}, "f" * 16, current)
    assert not may_resume_with("0" * 16, current)
    assert not may_resume_with(next(iter(SAME_TRIAL_CODE)), "0" * 16)  # an entry names one harness only


@pytest.mark.slow  # arena child processes, seconds each
def test_a_run_started_with_another_harness_is_refused_in_one_line(fake_base_run: Path, tmp_path: Path,
                                                                     cache_root: Path) -> None:
    runs = tmp_path / "runs"
    shutil.copytree(fake_base_run, runs / "base")
    info_path = runs / "base" / "run.json"
    info = json.loads(info_path.read_text())
    info_path.write_text(json.dumps({**info, "harness_hash": "0" * 16}, indent=2) + "\n")
    refused = fake_arena_run(runs, cache_root, "--name", "base", "--trials", NEXT)
    # the last line: on a loaded machine a dataset stage line may come first
    assert refused.returncode == 2 and "the harness (prepare.py/harness.py/exported.py/memory_check.py) changed" in (
        refused.stderr.splitlines()[-1])
    info_path.write_text(json.dumps(info, indent=2) + "\n")
    proc = fake_arena_run(runs, cache_root, "--name", "base", "--trials", NEXT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    check_run_consistent(runs / "base", BASE + 1)
    assert Ledger.read(runs / "base" / "ledger.jsonl").records[-1].harness_hash == harness_hash()
