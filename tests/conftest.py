"""Shared fixtures, built once per test session: the real dataset (the default offline corpus), a real
Docker engine and trial image, a real random-search run of BASE trials (slow tests only), and its twin made
by the real loop on a backend that trains nothing, which the tests of reading, refusing, interrupting and
resuming a run copy."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent.dataset_build import build_dataset
from agent.ledger import Ledger
from tests import docker_env
from tests.fake_runs import fake_run
from tests.run_helpers import BASE, FAST, NEXT, ROOT, arena_run, fake_arena_run

pytest_plugins = ["tests.llm_server"]  # its `llm_server` fixture, for every test module

CPU_VOCAB = 2048  # the cpu preset's vocabulary
DATASET_STAGE = re.compile(r"^dataset: .+ \(\d+ s into the build\)$")  # agent/datasets.py StageLines


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory) -> Path:
    """The dataset cache shared by the session; ARENA_TEST_CACHE reuses one across sessions."""
    shared = os.environ.get("ARENA_TEST_CACHE")
    return Path(shared) if shared else tmp_path_factory.mktemp("arena-cache")


@pytest.fixture(scope="session")
def stdlib_dataset(cache_root) -> Path:
    return build_dataset("stdlib", cache_root, vocab_size=CPU_VOCAB)


def run_arena(*args: str, cache: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """The real `arena` command in a child process, as a user runs it."""
    env = {**os.environ, "ARENA_CACHE": str(cache)}
    return subprocess.run([sys.executable, "-m", "agent.cli", *args], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=ROOT)


def import_file(name: str, path: Path):
    """The Python file at `path` imported as module `name` (a train.py, a bench script: files outside packages)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    """Assert the command failed with exactly one 'error:' line and no traceback; return that line.

    Progress lines of a dataset stage ('dataset: read corpus (2 s into the build)', printed off a terminal by a
    stage that took a second or more, which on a busy machine even reading a cached corpus can) are not part of
    it."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not DATASET_STAGE.match(line)]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


@pytest.fixture(scope="session")
def docker_client():
    """A real Docker engine, started here when none answers; ARENA_SKIP_DOCKER=1 skips its tests."""
    if os.environ.get("ARENA_SKIP_DOCKER") == "1":
        pytest.skip("ARENA_SKIP_DOCKER=1")
    try:
        return docker_env.ensure_engine()
    except docker_env.EngineUnavailable as e:
        pytest.fail(f"no Docker engine for the Docker tests: {e}", pytrace=False)


@pytest.fixture(scope="session")
def trial_image(docker_client) -> str:
    try:
        return docker_env.ensure_test_image()
    except docker_env.EngineUnavailable as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture(scope="session")
def base_run(tmp_path_factory, cache_root, stdlib_dataset) -> Path:
    """A real random-search run of BASE trials, for the tests that need real trials in a run: what it records,
    a kill in mid-training, a second arena on a running run, the live view of a finished run."""
    runs = tmp_path_factory.mktemp("runs")
    proc = arena_run(runs, cache_root, "--name", "base", "--trials", str(BASE), *FAST)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "the causality probes cut at 16 of the 255 positions" in proc.stderr  # FAST evaluates 16 rows
    return runs / "base"


@pytest.fixture(scope="session")
def fake_base_run(tmp_path_factory, cache_root, stdlib_dataset) -> Path:
    """base_run's twin without the training: the same name, settings and trial count, in seconds. Tests that
    copy a run to refuse or read it use this one."""
    return fake_run(tmp_path_factory.mktemp("fake-runs"), cache_root, "base", BASE)


@pytest.fixture(scope="session")
def fake_straight_run(fake_base_run, tmp_path_factory, cache_root) -> list[dict]:
    """fake_base_run continued by one trial without interruption, as ledger JSON lines: what every run
    interrupted and resumed at that trial must match."""
    runs = tmp_path_factory.mktemp("fake-straight")
    shutil.copytree(fake_base_run, runs / "base")
    assert fake_arena_run(runs, cache_root, "--name", "base", "--trials", NEXT).returncode == 0
    return [record.to_json() for record in Ledger.read(runs / "base" / "ledger.jsonl").records]
