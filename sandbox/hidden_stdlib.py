"""The standard library's test suites: hidden from every sandbox, so validation text may come from them.

The default corpus is the running Python's standard library, and a trial needs a Python to run, so a
sandbox holds a standard library too. A trial that could read the validation documents there could train
on them. Only documents inside a test suite go to validation (agent/corpus.py), and every sandbox
covers each test suite with an empty directory: no Python needs its tests to run.

Run as a script (the Docker backend runs it inside its image), it prints the test suites of the
interpreter that runs it, one directory per line. Standard library only: it runs in any image.
"""

from __future__ import annotations

import glob
import os
import sys
import sysconfig
from collections.abc import Iterable
from pathlib import Path

TEST_SUITE_NAMES = frozenset({"test", "tests", "idle_test"})
PACKAGE_DIRS = frozenset({"site-packages", "dist-packages"})  # third-party code, not the standard library
SYSTEM_PREFIXES = ("/usr", "/usr/local")


def in_test_suite(relative: str) -> bool:
    """Whether a path relative to a standard library root lies in one of its test suites."""
    return not TEST_SUITE_NAMES.isdisjoint(Path(relative).parts[:-1])


def stdlib_roots(prefixes: Iterable[str | Path]) -> list[Path]:
    """Every standard library under the given installation prefixes (lib/python3.X, lib64/python3.X)."""
    roots = set()
    for prefix in prefixes:
        for pattern in ("lib/python3*", "lib64/python3*"):
            roots |= {Path(p).resolve() for p in glob.glob(os.path.join(str(prefix), pattern)) if os.path.isdir(p)}
    return sorted(roots)


def find_test_suites(roots: Iterable[Path]) -> list[Path]:
    """The top directory of each test suite under `roots`."""
    found = []
    for root in roots:
        for dirpath, dirnames, _ in os.walk(root):
            for name in sorted(dirnames):
                if name in TEST_SUITE_NAMES:
                    found.append(Path(dirpath) / name)
            dirnames[:] = sorted(d for d in dirnames if d not in TEST_SUITE_NAMES and d not in PACKAGE_DIRS)
    return found


def own_test_suites() -> list[Path]:
    """The test suites this interpreter's sandbox would show: its own standard library's and the system's."""
    prefixes = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, *SYSTEM_PREFIXES}
    roots = set(stdlib_roots(prefixes)) | {Path(sysconfig.get_paths()["stdlib"]).resolve()}
    return find_test_suites(sorted(roots))


if __name__ == "__main__":
    for directory in own_test_suites():
        print(directory)
