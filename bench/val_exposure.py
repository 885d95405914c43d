"""How much of the default corpus's validation text a trial can read anyway, on this machine.

    python bench/val_exposure.py [--val-fraction 0.1] [--min-chars 40] [--top 10] [--roots DIR ...]

The stdlib corpus validates only on the standard library's test suites, which every sandbox hides (README,
Isolation); a third-party package's edited copy of some of those tests is not hidden. This takes the distinct
lines of at least --min-chars characters (stripped) of the validation documents and counts those that occur in a
.py file under --roots outside every hidden test suite, and of those the ones no training document holds (a line
a training document holds is trained on anyway). --roots default to what a bwrap sandbox shows: /usr, the system
directories that are not links, and this Python's installation. Prints the shares and the files with the most
such lines.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.corpus import split, stdlib_documents  # noqa: E402
from sandbox.bwrap import shown_trees  # noqa: E402
from sandbox.hidden_stdlib import NOT_FILES, find_test_suites, stdlib_copies  # noqa: E402


def long_lines(text: str, min_chars: int) -> set[str]:
    return {stripped for line in text.splitlines() if len(stripped := line.strip()) >= min_chars}


def readable_sources(roots: list[Path]):
    """Every .py file under `roots` that is not in a hidden test suite, with its text."""
    skipped = {str(path) for path in find_test_suites(stdlib_copies(roots))} | set(NOT_FILES)
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if os.path.join(dirpath, d) not in skipped]
            for name in filenames:
                if name.endswith(".py"):
                    path = os.path.join(dirpath, name)
                    try:
                        with open(path, encoding="utf-8", errors="replace") as f:
                            yield path, f.read()
                    except OSError:  # unreadable here, so unreadable to a trial too
                        continue


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--val-fraction", type=float, default=0.1, help="as arena prepare's (default 0.1)")
    parser.add_argument("--min-chars", type=int, default=40, help="shortest line counted, stripped (default 40)")
    parser.add_argument("--top", type=int, default=10, help="files listed (default 10)")
    parser.add_argument("--roots", type=Path, nargs="+", help="trees to search (default: what bwrap shows)")
    args = parser.parse_args(argv)
    train, val = split(stdlib_documents(), args.val_fraction)
    val_lines = set().union(*(long_lines(doc.text, args.min_chars) for doc in val))
    train_lines = set().union(*(long_lines(doc.text, args.min_chars) for doc in train))
    if not val_lines:
        sys.exit(f"val_exposure.py: error: no validation line has {args.min_chars} characters; lower --min-chars")
    roots = args.roots or shown_trees(sys.executable)
    readable: set[str] = set()
    per_file: Counter[str] = Counter()
    for path, text in readable_sources(roots):
        found = long_lines(text, args.min_chars) & val_lines
        readable |= found
        per_file[path] = len(found - train_lines)
    unseen = readable - train_lines
    total = len(val_lines)
    print(f"validation: {len(val)} documents, {total:,} distinct lines of {args.min_chars}+ characters")
    for label, lines in (("also in a training document", val_lines & train_lines),
                         ("in a file a trial can read", readable),
                         ("in such a file and no training document", unseen)):
        print(f"  {label + ':':42s} {len(lines):7,} ({len(lines) / total:.1%})")
    print("searched: " + ", ".join(map(str, roots)))
    for path, count in per_file.most_common(args.top):
        if count:
            print(f"{count:7,}  {path}")


if __name__ == "__main__":
    main()
