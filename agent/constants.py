"""Read and rewrite the constants block at the top of train.py, keeping its layout and comments."""

from __future__ import annotations

import ast
import json
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass

from agent.errors import ArenaError

BEGIN_MARKER = "# ==== ARENA CONSTANTS BEGIN"
END_MARKER = "# ==== ARENA CONSTANTS END"

Value = int | float | str

_BINARY: dict[type[ast.operator], Callable[[float, float], float]] = {
    ast.Pow: operator.pow, ast.Mult: operator.mul, ast.Add: operator.add, ast.Sub: operator.sub,
    ast.Div: operator.truediv}


class ConstantsError(ArenaError):
    pass


@dataclass(frozen=True)
class Constant:
    name: str
    value: Value
    line: int        # 0-based line index in the file
    start: int       # column where the value expression starts
    end: int         # column where it ends


def _evaluate(node: ast.expr) -> Value:
    """A literal, or arithmetic on numeric literals such as 2**19 or 3e-4 * 2."""
    if (isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str))
            and not isinstance(node.value, bool)):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        value = _evaluate(node.operand)
        if isinstance(value, (int, float)):
            return -value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(left, (int, float)) and isinstance(right, (int, float)):
            return _BINARY[type(node.op)](left, right)
    raise ValueError("not a number or string literal")


def block_bounds(source: str) -> tuple[int, int]:
    """Line indices of the BEGIN and END markers."""
    lines = source.splitlines()
    begins = [i for i, line in enumerate(lines) if line.startswith(BEGIN_MARKER)]
    ends = [i for i, line in enumerate(lines) if line.startswith(END_MARKER)]
    if len(begins) != 1 or len(ends) != 1 or ends[0] < begins[0]:
        raise ConstantsError(f"train.py needs exactly one constants block: a line starting '{BEGIN_MARKER}' "
                             f"followed by a line starting '{END_MARKER}'; restore the markers from the template")
    return begins[0], ends[0]


def _assignment(text: str) -> tuple[str, ast.expr]:
    """The name and the value expression of a line `NAME = value`; raises SyntaxError or ValueError."""
    statements = ast.parse(text).body
    assign = statements[0] if len(statements) == 1 else None
    if not isinstance(assign, ast.Assign) or len(assign.targets) != 1 or not isinstance(assign.targets[0], ast.Name):
        raise ValueError("not a single NAME = value assignment")
    return assign.targets[0].id, assign.value


def parse_constants(source: str) -> list[Constant]:
    begin, end = block_bounds(source)
    lines = source.splitlines()
    constants: list[Constant] = []
    for index in range(begin + 1, end):
        text = lines[index]
        if not text.strip() or text.lstrip().startswith("#"):
            continue
        try:
            name, expression = _assignment(text)
            value = _evaluate(expression)
        except (SyntaxError, ValueError, ZeroDivisionError, OverflowError) as e:
            raise ConstantsError(f"train.py line {index + 1} in the constants block is malformed ({e}): "
                                 f"{text.strip()!r}; write NAME = literal") from None
        if any(c.name == name for c in constants):
            raise ConstantsError(f"train.py line {index + 1}: constant {name} is set twice in the block; keep one")
        # ast.parse gives every node its end position; only nodes built by hand lack one
        assert expression.end_col_offset is not None
        constants.append(Constant(name, value, index, expression.col_offset, expression.end_col_offset))
    return constants


def read_constants(source: str) -> dict[str, Value]:
    return {c.name: c.value for c in parse_constants(source)}


def format_value(value: Value, previous_text: str = "") -> str:
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, int):
        if "**" in previous_text and value > 0 and value & (value - 1) == 0:
            return f"2**{value.bit_length() - 1}"  # keep powers of two readable
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConstantsError(f"cannot write the non-finite value {value} into the constants block")
        return repr(value)
    raise ConstantsError(f"cannot write a {type(value).__name__} into the constants block")


def _same(a: Value, b: Value) -> bool:
    return type(a) is type(b) and a == b


def render_constants(source: str, values: dict[str, Value]) -> str:
    """`source` with the given constants rewritten; untouched lines stay byte-identical."""
    constants = {c.name: c for c in parse_constants(source)}
    unknown = sorted(set(values) - set(constants))
    if unknown:
        raise ConstantsError(f"train.py's constants block has no {', '.join(unknown)}; "
                             f"known constants: {', '.join(constants)}")
    lines = source.splitlines(keepends=True)
    for name, value in values.items():
        const = constants[name]
        if _same(const.value, value):
            continue
        line = lines[const.line]
        old_text = line[const.start:const.end]
        new_text = format_value(value, old_text)
        rest = line[const.end:]
        comment = rest.lstrip(" ")
        if comment.startswith("#"):
            # keep the comment in its column where the new value leaves room; two spaces at least
            column = const.end + len(rest) - len(comment)
            pad = max(2, column - (const.start + len(new_text)))
            rest = " " * pad + comment
        lines[const.line] = line[:const.start] + new_text + rest
    return "".join(lines)
