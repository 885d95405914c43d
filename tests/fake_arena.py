"""`python -m tests.fake_arena run ...`: the real `arena` command (arguments, checks, locking, the loop, its
crash points, final status) whose trials train nothing (tests.fake_runs.FakeBackend). For subprocess tests
about the loop itself, where a real trial would only add minutes: kill -9 at each of the loop's writes, LLM
methods against a scripted server, run rules. Real training is tested by the tests that use `arena`."""

from __future__ import annotations

import os
import sys
import time

import agent.cli
import agent.loop
from agent.cli import main
from tests.fake_runs import FakeBackend

HOLD_ENV = "ARENA_FAKE_HOLD"  # seconds each trial after this process's first takes: trials a test finds under way
calls = []


def hold() -> None:
    calls.append(None)
    if len(calls) > 1:
        time.sleep(float(os.environ.get(HOLD_ENV, "0")))


def patch_backend() -> None:
    """Only when run as a program: a test importing HOLD_ENV must not make its own process's runs fake."""
    agent.loop.make_backend = lambda settings, preset, space: FakeBackend(isolation=settings.isolation, gate=hold)
    # cli imports make_backend from agent.loop when a run starts: a name bound in agent.cli at import time would
    # escape the patch above, and these "fake" runs would train for real, slowly, and still pass
    assert not hasattr(agent.cli, "make_backend"), "agent.cli binds make_backend itself; patch it there too"


if __name__ == "__main__":
    patch_backend()
    sys.exit(main())
