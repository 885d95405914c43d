"""The standard library's test suites: hidden from every sandbox, so validation text may come from them.

The default corpus is the running Python's standard library, and a trial needs a Python to run, so a
sandbox holds a standard library too, often several (a conda installation's environments and package
cache, an application's bundled Python). A trial that could read the validation documents in any of them
could train on them. Only documents inside a test suite go to validation (agent/corpus.py), and every
sandbox covers the test suites of every standard library it holds with an empty directory: no Python
needs its tests to run.

Run as a script (the Docker backend runs it inside its image), it prints the test suites of every
standard library in the image, one directory per line. Standard library only: it runs in any image.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

TEST_SUITE_NAMES = frozenset({"test", "tests", "idle_test"})
PACKAGE_DIRS = frozenset({"site-packages", "dist-packages"})  # third-party code, not the standard library
STDLIB_MARKERS = frozenset({"os.py", "abc.py"})  # what every standard library's top directory holds
NOT_FILES = ("/proc", "/sys", "/dev")  # kernel views, not files an image ships


def in_test_suite(relative: str) -> bool:
    """Whether a path relative to a standard library root lies in one of its test suites."""
    return not TEST_SUITE_NAMES.isdisjoint(Path(relative).parts[:-1])


def stdlib_copies(trees: Iterable[str | Path]) -> list[Path]:
    """Every standard library under `trees`: each directory that holds os.py and abc.py (CPython's, PyPy's
    lib-python, a conda package's, one bundled by an application)."""
    found = set()
    for tree in trees:
        for dirpath, dirnames, filenames in os.walk(tree):
            if STDLIB_MARKERS.issubset(filenames):
                found.add(Path(dirpath))
            dirnames[:] = [d for d in dirnames if os.path.join(dirpath, d) not in NOT_FILES]
    return sorted(found)


def find_test_suites(roots: Iterable[Path]) -> list[Path]:
    """The top directory of each test suite of the standard libraries at `roots`."""
    found = []
    for root in roots:
        for dirpath, dirnames, _ in os.walk(root):
            for name in sorted(dirnames):
                if name in TEST_SUITE_NAMES:
                    found.append(Path(dirpath) / name)
            dirnames[:] = sorted(d for d in dirnames if d not in TEST_SUITE_NAMES and d not in PACKAGE_DIRS)
    return found


if __name__ == "__main__":
    for directory in find_test_suites(stdlib_copies(["/"])):
        print(directory)
