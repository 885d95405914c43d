"""Resuming across harness versions: a run whose harness hash names the same trial code resumes, any other
harness is refused. The equivalence claimed in agent/template.py is rebuilt here from git history."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from agent.errors import ArenaError
from agent.ledger import Ledger
from agent.run import check_unchanged
from agent.template import (
    HARNESS_FILES,
    SAME_TRIAL_CODE,
    harness_hash,
    may_resume_with,
    template_dir,
)
from sandbox.phases import harness_hash as hash_files
from tests.run_helpers import BASE, NEXT, ROOT, check_run_consistent, fake_arena_run

BEFORE_SPLIT = "4ff3b28fc169a4f24858e08e13876d0d8de287ac"  # the last commit whose prepare.py also built datasets
TRIAL_CODE_NODES = (ast.FunctionDef, ast.ClassDef, ast.Assign, ast.AnnAssign, ast.If)


def old_harness(commit: str, dest: Path) -> Path:
    """The harness files as they were at `commit`, or a skip where this checkout has no such history."""
    dest.mkdir()
    for name in HARNESS_FILES:
        shown = subprocess.run(["git", "-C", str(ROOT), "show", f"{commit}:train_template/{name}"],
                               capture_output=True, check=False)
        if shown.returncode != 0:
            pytest.skip(f"no git history with commit {commit} here")
        (dest / name).write_bytes(shown.stdout)
    return dest


def top_level(source: str) -> tuple[set[str], set[tuple[str, str]]]:
    """The module's top-level statements as source text (docstring and imports aside), and what it imports."""
    tree = ast.parse(source)
    statements: set[str] = set()
    imported: set[tuple[str, str]] = set()
    for node in tree.body[1:]:  # body[0] is the docstring
        if isinstance(node, ast.ImportFrom):
            imported |= {(node.module or "", alias.name) for alias in node.names}
        elif isinstance(node, ast.Import):
            imported |= {(alias.name, "") for alias in node.names}
        else:
            assert isinstance(node, TRIAL_CODE_NODES), ast.dump(node)[:200]
            statements.add(ast.get_source_segment(source, node) or "")
    return statements, imported


def test_the_harness_before_the_split_ran_the_same_trial_code(tmp_path: Path) -> None:
    old = old_harness(BEFORE_SPLIT, tmp_path / "old")
    old_hash = hash_files(old, HARNESS_FILES)
    assert old_hash in SAME_TRIAL_CODE
    assert SAME_TRIAL_CODE[old_hash] == harness_hash(), (
        "the harness changed since the dataset builder left prepare.py: runs from before that can no longer "
        f"resume, so delete the entry for {old_hash} in agent/template.py and this test")
    for name in ("harness.py", "exported.py"):
        assert (old / name).read_bytes() == (template_dir() / name).read_bytes()
    old_statements, old_imports = top_level((old / "prepare.py").read_text())
    new_statements, new_imports = top_level((template_dir() / "prepare.py").read_text())
    assert new_statements <= old_statements  # every definition a trial uses, character for character
    assert new_imports <= old_imports
    assert "def evaluate_bpb(" in "".join(new_statements)


def test_a_resume_accepts_only_the_same_trial_code(tmp_path: Path) -> None:
    current = harness_hash()
    info = {"settings": {"name": "old"}, "dataset_fingerprint": "f" * 16}
    for recorded in (current, *[old for old, new in SAME_TRIAL_CODE.items() if new == current]):
        assert may_resume_with(recorded, current)
        check_unchanged(tmp_path, {**info, "harness_hash": recorded}, "f" * 16, current, 1)
    with pytest.raises(ArenaError, match="the harness .* changed since run 'old' started"):
        check_unchanged(tmp_path, {**info, "harness_hash": "0" * 16}, "f" * 16, current, 1)
    assert not may_resume_with("0" * 16, current)
    assert not may_resume_with(next(iter(SAME_TRIAL_CODE)), "0" * 16)  # an entry names one harness only


@pytest.mark.slow  # arena child processes, seconds each
def test_a_run_started_before_the_split_resumes_and_records_what_it_ran(fake_base_run: Path, tmp_path: Path,
                                                                          cache_root: Path) -> None:
    old_hash = next(old for old, new in SAME_TRIAL_CODE.items() if new == harness_hash())
    runs = tmp_path / "runs"
    shutil.copytree(fake_base_run, runs / "base")
    info_path = runs / "base" / "run.json"
    info = json.loads(info_path.read_text())
    info_path.write_text(json.dumps({**info, "harness_hash": "0" * 16}, indent=2) + "\n")
    refused = fake_arena_run(runs, cache_root, "--name", "base", "--trials", NEXT)
    # the last line: on a loaded machine a dataset stage line may come first
    assert refused.returncode == 2 and "the harness (prepare.py/harness.py/exported.py) changed" in (
        refused.stderr.splitlines()[-1])
    info_path.write_text(json.dumps({**info, "harness_hash": old_hash}, indent=2) + "\n")
    proc = fake_arena_run(runs, cache_root, "--name", "base", "--trials", NEXT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    check_run_consistent(runs / "base", BASE + 1)
    assert json.loads(info_path.read_text())["harness_hash"] == old_hash  # what the run started with stays
    assert Ledger.read(runs / "base" / "ledger.jsonl").records[-1].harness_hash == harness_hash()
