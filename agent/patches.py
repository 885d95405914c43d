"""Proposals as unified diffs against train.py: make them, apply them leniently, check the result.

Applying is as forgiving as good coding agents are with LLM-written diffs, and exact otherwise:

* The diff may sit in a ```diff fenced block and come with prose around it; several fenced blocks that
  hold diff lines are joined. CRLF line ends in the diff are read as LF. A diff of bare @@ hunks (no
  ---/+++ lines) is taken to be against train.py.
* The line counts in @@ headers are ignored: before unidiff parses the diff, every header is rewritten
  with the counts its body really has (a body ends at the first line that is not ' ', '+', '-', '\\',
  blank, or a line of the file, which is an unindented context line that lost its leading space; trailing
  empty lines are separators, a line ' ' is blank context). A header without numbers (`@@ ... @@`) counts
  as line 1.
  Blank lines inside a body are blank context lines whose leading space an editor stripped.
* Each hunk's old lines (context and removed) are looked for, in this order, until one way finds them:
  exactly; with whitespace differences ignored (runs of blanks, leading and trailing); and with blank
  lines ignored as well. Where a way finds several places, the one at the header's line (shifted by what
  earlier hunks added or removed; within NEAR_HEADER lines, and nearer than the others) wins, so an exact
  match at the stated line is always taken first; with none there the hunk is refused (models guess line
  numbers, so the nearest of two far places is a coin toss), as is a hunk that only adds lines.
* Context lines keep the file's text; when the match ignored whitespace and the file indents every
  matched line by the same extra amount, added lines are shifted by that amount too.
* Hunks apply in order to the file as earlier hunks left it, and may not match lines an earlier hunk
  added (so hunks never overlap).

Whatever cannot be applied or breaks a rule becomes an InvalidPatch carrying a one-line `.reason`,
recorded as an `invalid_patch` outcome of the trial (not a CLI error).
"""

from __future__ import annotations

import difflib
import math
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

from unidiff.constants import DEV_NULL, LINE_TYPE_NO_NEWLINE
from unidiff.errors import UnidiffParseError
from unidiff.patch import PatchSet

from agent.constants import (
    ConstantsError,
    Value,
    block_bounds,
    read_constants,
    render_constants,
)
from agent.space import SearchSpace, SpaceError
from agent.template import EDITABLE_FILE

NO_NEWLINE_MARKER = "\\ No newline at end of file"
_FENCED_BLOCK = re.compile(r"^```[^\n]*\n(.*?)^```", re.DOTALL | re.MULTILINE)
_DIFF_START = re.compile(r"^(diff --git |--- |@@|Binary files )", re.MULTILINE)
NEAR_HEADER = 10  # lines: how far from its header's line a hunk whose old lines occur in several places may be
_HUNK_HEADER = re.compile(r"^@@ -(\d+)(?:,\d+)? \+(\d+)(?:,\d+)? @@ ?(.*)$")


class InvalidPatch(Exception):
    """A proposal that cannot run; `reason` is one line an LLM can act on."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class PatchError(InvalidPatch):
    """The diff cannot be parsed, touches something other than train.py, or does not apply."""


class PatchRejected(InvalidPatch):
    """The patched train.py breaks a rule checked before anything runs."""


# ---------------------------------------------------------------------------- making diffs

def _split_lines(text: str) -> list[str]:
    """Lines with their '\\n' kept; only '\\n' ends a line (str.splitlines would also split on form feeds)."""
    lines = [line + "\n" for line in text.split("\n")]
    lines[-1] = lines[-1][:-1]
    return lines if lines[-1] else lines[:-1]


def make_diff(old: str, new: str, path: str = EDITABLE_FILE) -> str:
    """A unified diff from `old` to `new` with a/PATH and b/PATH headers; "" when they are equal."""
    if old == new:
        return ""
    out = []
    for line in difflib.unified_diff(_split_lines(old), _split_lines(new), f"a/{path}", f"b/{path}"):
        out.append(line if line.endswith("\n") else f"{line}\n{NO_NEWLINE_MARKER}\n")
    return "".join(out)


# ---------------------------------------------------------------------------- parsing

def _extract_diff(text: str, path: str) -> str:
    """The diff itself: the fenced blocks that hold diff lines, else everything from the first diff line."""
    blocks = [block for block in _FENCED_BLOCK.findall(text) if _DIFF_START.search(block)]
    if blocks:
        text = "".join(blocks)
    start = _DIFF_START.search(text)
    if start is None:
        raise PatchError(f"no unified diff found; write '--- a/{path}', '+++ b/{path}' and then '@@' hunks")
    text = text[start.start():]
    if text.startswith("@@"):
        text = f"--- a/{path}\n+++ b/{path}\n" + text
    return text


def _hunk_body_end(lines: list[str], start: int, file_lines: frozenset[str] = frozenset()) -> int:
    """Where the hunk body that starts at `start` ends: at the next header, or at a line that is neither a
    hunk line nor a line of the file (`file_lines`: an unindented context line whose leading space was lost)."""
    end = start
    while end < len(lines):
        line = lines[end]
        next_line = lines[end + 1] if end + 1 < len(lines) else ""
        if line.startswith(("@@", "diff --git ")) or (line.startswith("--- ") and next_line.startswith("+++ ")):
            break
        if line.strip() and line[0] not in " +-\\" and line not in file_lines:
            break
        end += 1
    return end


def _body_counts(body: list[str]) -> tuple[int, int]:
    """The old and the new lines a hunk's body has (a blank line is blank context)."""
    return (sum(1 for line in body if line == "" or line[0] in " -"),
            sum(1 for line in body if line == "" or line[0] in " +"))


def _recounted_header(header: str, body: list[str]) -> str:
    old, new = _body_counts(body)
    match = _HUNK_HEADER.match(header)
    source, target, section = match.groups() if match else ("1", "1", "")
    return f"@@ -{source},{old} +{target},{new} @@" + (f" {section}" if section else "")


def _recount_hunks(text: str, file_lines: frozenset[str] = frozenset()) -> tuple[str, list[str]]:
    """`text` with every @@ header's counts recomputed from its body, and the headers as written; a body line
    without its leading space that is a line of the file (`file_lines`) is context."""
    lines = text.split("\n")
    out: list[str] = []
    headers: list[str] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        if not line.startswith("@@"):
            if line.strip():  # blank lines between files carry nothing
                out.append(line)
            index += 1
            continue
        end = _hunk_body_end(lines, index + 1, file_lines)
        raw = [line if not line.strip() or line[0] in " +-\\" else " " + line for line in lines[index + 1:end]]
        while raw and not raw[-1].strip() and not raw[-1].startswith(" "):  # separators after the hunk; a blank
            raw.pop()                                                       # line written " " is blank context
        body = [text if text.strip() else "" for text in raw]  # any blank line inside: blank context
        headers.append(line.rstrip())
        out += [_recounted_header(line, body), *body]
        index = end
    return "\n".join(out) + "\n", headers


def ends_mid_hunk(diff_text: str) -> bool:
    """Whether the diff stops inside its last hunk: the body runs to the end of the text, ends on a removed
    line with none to add (a whole hunk ends on context, unless at the file's end; a hunk's lines to add come
    after those it removes) and falls short of both counts its header gives. What an answer cut off by the
    model's length limit looks like when the server did not say so (one cut after an added line cannot be
    told from a whole hunk with counts too high, which models often write)."""
    lines = diff_text.replace("\r\n", "\n").rstrip("\n").split("\n")
    start = max((i for i, line in enumerate(lines) if line.startswith("@@")), default=None)
    if start is None or _hunk_body_end(lines, start + 1) < len(lines):
        return False
    counts = re.match(r"^@@ -\d+,(\d+) \+\d+,(\d+) @@", lines[start])
    body = lines[start + 1:]
    if counts is None or not body or not body[-1].startswith("-") or any(line.startswith("+") for line in body):
        return False  # (with lines to add before, a whole hunk written + before - with its counts too high)
    old, new = _body_counts(body)
    return old < int(counts[1]) and new < int(counts[2])


def _parse(diff_text: str, path: str, original: str = "") -> tuple[PatchSet, list[str]]:
    if not diff_text.strip():
        raise PatchError(f"the diff is empty; propose at least one change to {path}")
    # lines of the file that start a line of a diff as no hunk line does (an unindented line: "def f():")
    file_lines = frozenset(line for line in original.split("\n") if line.strip() and line[0] not in " +-\\@")
    try:
        text, headers = _recount_hunks(_extract_diff(diff_text.replace("\r\n", "\n"), path), file_lines)
        return PatchSet(text), headers
    except UnidiffParseError as e:
        raise PatchError(f"the diff cannot be parsed ({' '.join(str(e).split())}); "
                         f"write a unified diff of {path}") from None
    except ValueError:  # int() refuses a number of thousands of digits (with advice that is not the model's)
        raise PatchError(f"the diff cannot be parsed (a hunk header holds a number of thousands of digits); "
                         f"write a unified diff of {path}") from None


def _same_file(name: str, path: str) -> bool:
    """Whether a diff header names `path`: as it is, under a/ or b/, or in a folder (train_template/train.py,
    the template's place in this repository, which models have seen)."""
    return name == path or name.endswith(f"/{path}")


def _check_files(patch: PatchSet, path: str) -> None:
    for patched in patch:
        source, target = (patched.source_file or "").strip('"'), (patched.target_file or "").strip('"')
        if patched.is_binary_file:
            raise PatchError(f"the diff holds a binary patch of {patched.path}; proposals are text edits of {path}")
        if source == DEV_NULL:
            raise PatchError(f"the diff creates the new file {target}; proposals may only edit {path}, "
                             f"so put new code inside it")
        if target == DEV_NULL:
            raise PatchError(f"the diff deletes {source}; proposals may only edit {path}")
        if _same_file(source, path) != _same_file(target, path):
            raise PatchError(f"the diff renames {source} to {target}; proposals may only edit {path} in place")
        if not _same_file(source, path):
            raise PatchError(f"the diff changes {patched.path}; proposals may change only {path} "
                             f"(the harness files are read-only)")
    if not any(len(patched) for patched in patch):
        raise PatchError(f"the diff has no @@ hunks; propose at least one change to {path}")


# ---------------------------------------------------------------------------- applying

@dataclass(frozen=True)
class _Hunk:
    number: int                      # 1-based, in diff order
    header: str                      # as the diff wrote it
    start: int                       # 0-based index where the header says the old lines begin
    ops: tuple[tuple[str, str], ...]  # (' ' | '-' | '+', line with its '\n' unless the file ends there)

    @property
    def old(self) -> list[str]:
        return [text for tag, text in self.ops if tag != "+"]


def _hunks(patch: PatchSet, headers: list[str]) -> list[_Hunk]:
    hunks = []
    for number, (hunk, header) in enumerate(zip((h for f in patch for h in f), headers, strict=False), start=1):
        ops: list[tuple[str, str]] = []
        for line in hunk:
            if line.line_type == LINE_TYPE_NO_NEWLINE and ops:
                ops[-1] = (ops[-1][0], ops[-1][1].removesuffix("\n"))
            elif line.line_type in (" ", "-", "+"):
                ops.append((line.line_type, line.value))
        # a pure insertion's header names the line it goes after; otherwise the first old line
        start = hunk.source_start if hunk.source_length == 0 else hunk.source_start - 1
        hunks.append(_Hunk(number, header, max(start, 0), tuple(ops)))
    return hunks


def _normalize(line: str) -> str:
    return " ".join(line.split())


def _exact(line: str) -> str:
    return line.rstrip("\r\n")


Alignment = Sequence[int | None]  # for each old line of a hunk, the index of the file line it matched


def _contiguous_matches(old: list[str], lines: list[str], key: Callable[[str], str]) -> list[list[int]]:
    want, have = [key(line) for line in old], [key(line) for line in lines]
    size = len(want)
    return [list(range(j, j + size)) for j in range(len(have) - size + 1) if have[j:j + size] == want]


def _matches_ignoring_blank_lines(old: list[str], lines: list[str]) -> list[Alignment]:
    wanted = [i for i, line in enumerate(old) if line.strip()]
    present = [j for j, line in enumerate(lines) if line.strip()]
    if not wanted:
        return []
    found: list[Alignment] = []
    for alignment in _contiguous_matches([old[i] for i in wanted], [lines[j] for j in present], _normalize):
        full: list[int | None] = [None] * len(old)
        for i, k in zip(wanted, alignment, strict=True):  # a match of the wanted lines: one index each
            full[i] = present[k]
        found.append(full)
    return found


_FINDERS: tuple[Callable[[list[str], list[str]], Sequence[Alignment]], ...] = (
    partial(_contiguous_matches, key=_exact),
    partial(_contiguous_matches, key=_normalize),
    _matches_ignoring_blank_lines,
)


def _first(alignment: Alignment) -> int:
    return next(j for j in alignment if j is not None)


def _place(hunk: _Hunk, lines: list[str], added: list[bool], expected: int, path: str, total: int) -> Alignment:
    """Where the hunk's old lines are: the first way that finds them; of several places, the one at the
    header's line (within NEAR_HEADER lines, and nearer than any other)."""
    blocked = False
    for finder in _FINDERS:
        found = finder(hunk.old, lines)
        free = [a for a in found if not any(added[j] for j in a if j is not None)]
        blocked = blocked or len(free) < len(found)
        if len(free) == 1:
            return free[0]
        if free:
            nearest, second = sorted(free, key=lambda a: abs(_first(a) - expected))[:2]
            distance = abs(_first(nearest) - expected)
            if distance <= NEAR_HEADER and distance < abs(_first(second) - expected):
                return nearest
            places = ", ".join(str(_first(a) + 1) for a in sorted(free, key=_first)[:5])
            raise PatchError(f"hunk {hunk.number} of {total} ({hunk.header}): its old lines are in {path} at lines "
                             f"{places}, and its header's line ({expected + 1}) does not say which; add unchanged "
                             "lines around the change that occur only at the place you mean")
    if blocked:
        raise PatchError(f"hunk {hunk.number} of {total} ({hunk.header}) matches {path} only where an earlier "
                         f"hunk added lines; hunks may not overlap, so merge them into one hunk")
    raise PatchError(_explain_mismatch(hunk, lines, expected, path, total))


def _show(line: str) -> str:
    text = _exact(line)
    return repr(text if len(text) <= 160 else text[:160] + "...")


def _closest_window(old: list[str], normalized: list[str], expected: int) -> tuple[int, float]:
    """The start of the len(old) file lines most similar to `old` (nearest `expected` on ties), and the ratio."""
    matcher = difflib.SequenceMatcher(None, b="\n".join(old))  # caches its analysis of `old`
    best, best_ratio = 0, -1.0
    starts = sorted(range(max(1, len(normalized) - len(old) + 1)), key=lambda j: abs(j - expected))
    for j in starts:
        matcher.set_seq1("\n".join(normalized[j:j + len(old)]))
        if matcher.real_quick_ratio() <= best_ratio or matcher.quick_ratio() <= best_ratio:
            continue  # both are upper bounds of ratio(), and much cheaper
        ratio = matcher.ratio()
        if ratio > best_ratio:
            best, best_ratio = j, ratio
    return best, best_ratio


def _explain_mismatch(hunk: _Hunk, lines: list[str], expected: int, path: str, total: int) -> str:
    """Which old line failed, and the lines of the file that come closest to the hunk."""
    where = f"hunk {hunk.number} of {total} ({hunk.header}) does not apply to {path}"
    if not lines:
        return f"{where}: {path} is empty"
    old = [_normalize(line) for line in hunk.old]
    normalized = [_normalize(line) for line in lines]
    best, ratio = _closest_window(old, normalized, expected)
    window = normalized[best:best + len(old)]
    i = next(i for i in range(len(old)) if i >= len(window) or window[i] != old[i])
    closest = f"line {best + i + 1} reads {_show(lines[best + i])}" if best + i < len(lines) else f"{path} ends"
    return (f"{where}: its old line {i + 1} (context or removed), {_show(hunk.old[i])}, is not where the rest "
            f"of the hunk fits; the closest lines are {path} lines {best + 1}-{min(best + len(old), len(lines))} "
            f"(similarity {math.floor(ratio * 100) / 100:.2f}), where {closest}; copy the hunk's context and "
            f"removed lines exactly from {path}")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" \t"))


def _indent_shift(old: list[str], lines: list[str], alignment: Alignment) -> int:
    """How much deeper the file indents the hunk's old lines, when that is one amount for all of them."""
    shifts = {_indent(lines[j]) - _indent(old[i]) for i, j in enumerate(alignment) if j is not None and old[i].strip()}
    return shifts.pop() if len(shifts) == 1 else 0


def _reindent(line: str, shift: int) -> str:
    if shift > 0 and line.strip():
        return " " * shift + line
    if shift < 0:
        return line[min(-shift, _indent(line)):]
    return line


def _rewrite(hunk: _Hunk, lines: list[str], alignment: Alignment, at: int) -> tuple[int, int, list[tuple[str, bool]]]:
    """The span of `lines` the hunk replaces, and the new lines for it, each flagged if the hunk added it."""
    matched = [j for j in alignment if j is not None]
    start, end = (matched[0], matched[-1] + 1) if matched else (at, at)
    shift = _indent_shift(hunk.old, lines, alignment)
    block: list[tuple[str, bool]] = []
    position, old_index = start, 0
    for tag, text in hunk.ops:
        if tag == "+":
            block.append((_reindent(text, shift), True))
            continue
        j = alignment[old_index]
        old_index += 1
        if j is None:  # a blank old line the file does not have
            continue
        block += [(line, False) for line in lines[position:j]]  # blank lines the hunk did not mention
        if tag == " ":
            block.append((lines[j], False))  # the file's text, not the diff's
        position = j + 1
    return start, end, block


def _join(lines: list[str]) -> str:
    """The lines as text; a line the diff left without '\\n' gets one unless it is the last."""
    last = len(lines) - 1
    return "".join(line if line.endswith("\n") or i == last else line + "\n" for i, line in enumerate(lines))


def apply_diff(original: str, diff_text: str, path: str = EDITABLE_FILE) -> str:
    """`original` with the diff applied (see the module docstring); raises PatchError with the reason."""
    patch, headers = _parse(diff_text, path, original)
    _check_files(patch, path)
    hunks = _hunks(patch, headers)
    lines = _split_lines(original)
    added = [False] * len(lines)
    offset = 0
    for hunk in hunks:
        expected = min(max(hunk.start + offset, 0), len(lines))
        if not hunk.old and lines:  # its place would be the header's line alone, which models guess
            raise PatchError(f"hunk {hunk.number} of {len(hunks)} ({hunk.header}) only adds lines, with no unchanged "
                             f"line of {path} around them to say where; add the lines before and after the change")
        alignment = _place(hunk, lines, added, expected, path, len(hunks)) if hunk.old else []
        start, end, block = _rewrite(hunk, lines, alignment, expected)
        lines[start:end] = [line for line, _ in block]
        added[start:end] = [is_new for _, is_new in block]
        offset += len(block) - (end - start)
    return _join(lines)


def diff_stats(diff_text: str) -> dict[str, int] | None:
    """Files, hunks, added and removed lines of a diff (parsed as leniently as apply_diff parses it); None for
    one that cannot be parsed (a refused proposal's)."""
    if not diff_text.strip():
        return {"files": 0, "hunks": 0, "added": 0, "removed": 0}
    try:
        patch, _ = _parse(diff_text, EDITABLE_FILE)
    except InvalidPatch:
        return None
    return {"files": len(patch), "hunks": sum(len(patched) for patched in patch),
            "added": patch.added, "removed": patch.removed}


# ---------------------------------------------------------------------------- rules before running

def _check_compiles(source: str) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. SyntaxWarning for an odd escape: not our business
            compile(source, EDITABLE_FILE, "exec")
    except SyntaxError as e:
        text = f": {e.text.strip()!r}" if e.text and e.text.strip() else ""
        where = f"line {e.lineno}: " if e.lineno else ""  # none for null bytes (Python 3.12 and later)
        raise PatchRejected(f"{EDITABLE_FILE} does not compile: {where}{e.msg}{text}") from None
    except ValueError as e:  # null bytes in the source, before Python 3.12
        raise PatchRejected(f"{EDITABLE_FILE} does not compile: {e}") from None


def _first_difference(old: list[str], new: list[str]) -> int | None:
    for index, (a, b) in enumerate(zip(old, new, strict=False)):  # a shorter side is told apart below
        if a != b:
            return index
    return None if len(old) == len(new) else min(len(old), len(new))


def _check_only_block_changed(new_source: str, old_source: str) -> None:
    old, new = old_source.splitlines(keepends=True), new_source.splitlines(keepends=True)
    (old_begin, old_end), (new_begin, new_end) = block_bounds(old_source), block_bounds(new_source)
    before = _first_difference(old[:old_begin + 1], new[:new_begin + 1])
    after = _first_difference(old[old_end:], new[new_end:])
    if before is not None:
        index = before
    elif after is not None:
        index = new_end + after
    else:
        return
    text = _show(new[index]) if index < len(new) else "(a line removed at the end)"
    raise PatchRejected(f"fixed-space proposals may change only the constants block, but {EDITABLE_FILE} "
                        f"line {index + 1} outside it differs from the original: {text}")


def _check_same_names(new: dict[str, Value], old: dict[str, Value]) -> None:
    removed, added = [n for n in old if n not in new], [n for n in new if n not in old]
    if removed or added:
        raise PatchRejected(f"fixed-space proposals must keep the constants block's names "
                            f"(removed: {', '.join(removed) or 'none'}; added: {', '.join(added) or 'none'})")


def _check_in_space(new: dict[str, Value], old: dict[str, Value], space: SearchSpace) -> None:
    for name, value in new.items():
        if name not in space and (type(value) is not type(old[name]) or value != old[name]):
            raise PatchRejected(f"{name} is not in the search space, so fixed-space proposals may not change it")
    try:
        space.check({name: value for name, value in new.items() if name in space})
    except SpaceError as e:
        raise PatchRejected(f"outside the search space: {e}") from None


def check_train_py(new_source: str, old_source: str, fixed_space: bool, space: SearchSpace | None = None) -> None:
    """Raise PatchRejected if the proposed train.py may not run.

    Every proposal must compile and keep a parseable constants block. A fixed-space proposal must also
    leave every line outside the block unchanged, keep the block's names, and, when `space` is given,
    keep the values of the constants the space knows within it (and the others as they were). Code
    agents may change anything, so `space` is ignored when `fixed_space` is false.
    """
    _check_compiles(new_source)
    try:
        new_values = read_constants(new_source)
    except ConstantsError as e:
        raise PatchRejected(str(e)) from None
    if not fixed_space:
        return
    old_values = read_constants(old_source)
    _check_only_block_changed(new_source, old_source)
    _check_same_names(new_values, old_values)
    if space is not None:
        _check_in_space(new_values, old_values, space)


def render_config(source: str, config: dict[str, Value]) -> str:
    """`source` with the constants in `config` rewritten by agent.constants.render_constants.

    A config it cannot write (an unknown name, a non-finite number) is the proposal's fault, so the
    ConstantsError becomes a PatchRejected.
    """
    try:
        return render_constants(source, config)
    except ConstantsError as e:
        raise PatchRejected(str(e)) from None


def config_diff(source: str, config: dict[str, Value]) -> str:
    """The diff a fixed-space method proposes: `source` to `source` with `config` rendered in."""
    return make_diff(source, render_config(source, config))
