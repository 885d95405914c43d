"""Code changes that models write instead of a unified diff, turned into the new train.py: search/replace
blocks (`<<<<<<< SEARCH`, `=======`, `>>>>>>> REPLACE`, as aider asks for them) and a whole new file in a
code block. Small local models often answer so; the code agent then sends the diff arena makes from them
down the same path as any other (apply, check, commit)."""

from __future__ import annotations

import re

_SEARCH_LINE = re.compile(r"<{5,9} ?SEARCH")
_DIVIDER_LINE = re.compile(r"={5,9}[ \t]*\n")
_REPLACE_LINE = re.compile(r">{5,9} ?REPLACE")
_SEARCH_START = re.compile(r"^<{5,9} ?SEARCH", re.MULTILINE)
_CODE_BLOCK = re.compile(r"^```[ \t]*(?:python|py)?[ \t]*\n(.*?)^```", re.DOTALL | re.MULTILINE)
WHOLE_FILE_MARKERS = ("def train(ctx", "ARENA CONSTANTS BEGIN", "ARENA CONSTANTS END")
# A line that stands for code left out ("# ... rest unchanged ...", "...", "# (existing code)"): a model that
# writes the whole file, or a replacement, in short; applied as written it deletes that code.
_ELISION = re.compile(
    r"^(#\s*)?(\.\.\.|…)"                                                   # "...", "# ... rest unchanged ..."
    r"|^#\s*(?:[(\[]\s*)?(unchanged|omitted|same as (before|above)|existing code)\b"  # "# (unchanged)"
    r"|^#.*\b(existing code|code (above|below))\b"
    r"|^#\s*(?:[(\[]\s*)?(the\s+)?(rest|remainder)\s+of\b.*\b(unchanged|omitted|as before|the same|follows)\b",
    re.IGNORECASE)  # (no two runs of blanks around an optional bracket: quadratic on a line of blanks)


def edited_source(answer: str, source: str) -> tuple[str, int] | None:
    """The train.py an answer's search/replace blocks or whole-file code block make of `source`, and where in
    the answer the first of them starts (the prose before it describes the change); None when the answer
    holds neither. Raises ValueError, saying which block, when a search text is not in train.py."""
    blocks = search_replace_blocks(answer)
    if len(_SEARCH_START.findall(answer)) > len(blocks):  # a block left open: the answer was cut off
        raise ValueError("a search/replace block is not complete (cut off?): each needs '<<<<<<< SEARCH', the lines "
                         "as they are, '=======', the new lines and '>>>>>>> REPLACE'")
    if blocks:
        return replaced(source, [(search, replacement) for search, replacement, _ in blocks]), blocks[0][2]
    files = [block for block in _CODE_BLOCK.finditer(answer) if all(mark in block[1] for mark in WHOLE_FILE_MARKERS)]
    return (files[-1][1], files[-1].start()) if files else None


def search_replace_blocks(answer: str) -> list[tuple[str, str, int]]:
    """Each complete block's search text, replacement and where it starts in `answer`: read line by line, in
    one pass (a regular expression with two lazy groups backtracks cubically on a hostile answer). A block's
    search text ends at its first divider line, its replacement at the first REPLACE line after that."""
    blocks: list[tuple[str, str, int]] = []
    at, start = 0, 0
    part: list[str] | None = None  # the lines of the block's search text, then of its replacement
    search = ""
    reading_search = False
    pieces = answer.split("\n")  # on newlines only, as the blocks are written (splitlines also splits on \f, \x1c...)
    for line in [piece + "\n" for piece in pieces[:-1]] + pieces[-1:]:
        if part is None:
            if _SEARCH_LINE.match(line):
                part, reading_search, start = [], True, at
        elif reading_search and _DIVIDER_LINE.fullmatch(line):
            search, part, reading_search = "".join(part), [], False
        elif not reading_search and _REPLACE_LINE.match(line):
            blocks.append((search, "".join(part), start))
            part = None
        else:
            part.append(line)
        at += len(line)
    return blocks


def replaced(source: str, blocks: list[tuple[str, str]]) -> str:
    """`source` with each block's search text replaced, in order; the text must be there, exactly or with
    only trailing spaces differing, and once."""
    for number, (search, replacement) in enumerate(blocks, 1):
        if not search.strip():
            raise ValueError(f"search/replace block {number} searches for nothing; copy the lines to change")
        found = _find(source, search)
        if found is None:
            first = search.strip().splitlines()[0][:80]
            raise ValueError(f"the SEARCH text of block {number} (starting {first!r}) is not in train.py, or is "
                             "there more than once; copy the lines exactly, with enough of them to be unique")
        start, end = found
        if not source[start:end].endswith("\n"):  # matched without its newline: so is the replacement
            replacement = replacement.removesuffix("\n")
        source = source[:start] + replacement + source[end:]
    return source


def _find(source: str, search: str) -> tuple[int, int] | None:
    """Where `search` is in `source`, once, from the start of a line (its indentation may be left out):
    exactly; else without its last newline (a line's start, its comment left out); else line by line with
    trailing spaces ignored."""
    for text in (search, search.removesuffix("\n")):
        starts = _from_line_starts(source, text) if text else []
        if len(starts) == 1:
            return starts[0], starts[0] + len(text)
    wanted = [line.rstrip() for line in search.splitlines()]
    lines = source.splitlines(keepends=True)
    starts = [i for i in range(len(lines) - len(wanted) + 1)
              if [line.rstrip() for line in lines[i:i + len(wanted)]] == wanted]
    if len(starts) != 1:
        return None
    begin = sum(len(line) for line in lines[:starts[0]])
    return begin, begin + sum(len(line) for line in lines[starts[0]:starts[0] + len(wanted)])


def _from_line_starts(source: str, text: str) -> list[int]:
    """Where `text` is in `source` with only blanks before it on its line; two places at most."""
    found: list[int] = []
    at = source.find(text)
    while at >= 0 and len(found) < 2:
        if not source[source.rfind("\n", 0, at) + 1:at].strip():
            found.append(at)
        at = source.find(text, at + 1)
    return found


def elided_line(diff: str, source: str) -> str | None:
    """The first line the diff adds that stands for code left out, unless `source` has it already."""
    present = {line.strip() for line in source.splitlines()}
    for line in diff.splitlines():
        if line.startswith("+") and not line.startswith("+++"):
            text = line[1:].strip()
            if _ELISION.search(text) and text not in present:
                return text
    return None
