"""Command-line flags declared as dataclass fields: a setting's type, default, help and choices are written
once, on its field, and its flag `--field-name` is built from them."""

from __future__ import annotations

import argparse
import dataclasses
import math
import operator
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from agent.errors import ArenaError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T")


def flag_metadata(help: str, choices: Iterable[str] = (), **extra: object) -> dict[str, object]:
    """A field's flag: its help, the values it accepts (none: any), and what else the dataclass keeps there:
    bounds of a number as `minimum`/`maximum` (inclusive) or `above` (exclusive)."""
    return {"help": help, "choices": tuple(choices), **extra}


def flag(default: T, help: str, choices: Iterable[str] = (), **extra: object) -> T:
    """A dataclass field with a default that is also a command-line flag."""
    return dataclasses.field(default=default, metadata=flag_metadata(help, choices, **extra))


def comma_list(text: str) -> list[str]:
    """'0,1' -> ['0', '1']: a list is one comma-separated argument."""
    return [item.strip() for item in text.split(",") if item.strip()]


def text_parser(hint: Any) -> Callable[[str], object]:
    """How the text of a flag becomes a value of its field's type: str, int, float, list[str], or X | None."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint, *others = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if others:
            raise TypeError(f"a flag needs one type besides None, not {hint} | {others}")
    if hint in (str, int, float):
        return typing.cast(Callable[[str], object], hint)
    if hint == list[str]:
        return comma_list
    raise TypeError(f"no command-line syntax for a field of type {hint}")


def text_parsers(settings: type[DataclassInstance]) -> dict[str, Callable[[str], object]]:
    hints = typing.get_type_hints(settings)
    return {f.name: text_parser(hints[f.name]) for f in dataclasses.fields(settings)}


def help_text(field: dataclasses.Field[Any]) -> str:
    """The field's help, then its choices and its default (a None default is explained by the help itself)."""
    text: str = field.metadata["help"]
    notes = [f"one of: {', '.join(field.metadata['choices'])}"] if field.metadata["choices"] else []
    if field.default is not None and field.default is not dataclasses.MISSING:
        notes.append(f"default: {field.default}")
    return text + (f" ({'; '.join(notes)})" if notes else "")


def add_flags(parser: argparse.ArgumentParser, settings: type[DataclassInstance], names: Iterable[str] | None = None,
              *, with_defaults: bool = True) -> None:
    """The flags of a dataclass's fields (all of them, or those in `names`), in the argument group a field
    names under "group", if any.

    With defaults, an absent flag takes its field's default and argparse refuses a value outside the choices.
    Without (`arena run`), an absent flag is None, 'not given', so that a config file or a stored run can
    decide; the values given are then checked with the dataclass (check_choices), from flags and files alike.
    """
    fields = {f.name: f for f in dataclasses.fields(settings)}
    parsers = text_parsers(settings)
    groups: dict[str, argparse._ArgumentGroup] = {}
    for name in fields if names is None else names:
        field = fields[name]
        group = field.metadata.get("group")
        if group is not None and group not in groups:
            groups[group] = parser.add_argument_group(group)
        target: argparse._ActionsContainer = parser if group is None else groups[group]
        has_default = with_defaults and field.default is not dataclasses.MISSING
        target.add_argument("--" + name.replace("_", "-"), type=parsers[name],
                            default=field.default if has_default else None,
                            choices=(field.metadata["choices"] or None) if with_defaults else None,
                            help=help_text(field))


def check_choices(settings: DataclassInstance) -> None:
    """A value outside its field's choices is refused with one line, whether it came from a flag or a file."""
    for field in dataclasses.fields(settings):
        value, choices = getattr(settings, field.name), field.metadata.get("choices")
        if choices and value not in choices:
            raise ArenaError(f"unknown {field.name.replace('_', ' ')} '{value}'; choose one of: {', '.join(choices)}")


BOUNDS = (("minimum", "at least", operator.ge), ("above", "more than", operator.gt),
          ("maximum", "at most", operator.le))


def out_of_bounds(field: dataclasses.Field[Any], value: object) -> str | None:
    """What is wrong with a number for its field (not finite, or outside the bounds it declares), or None."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return "must be a finite number"
    bounds = [(words, field.metadata[key], holds) for key, words, holds in BOUNDS if key in field.metadata]
    if all(holds(value, bound) for _, bound, holds in bounds):  # exact for ints of any size, unlike float()
        return None
    return "must be " + " and ".join(f"{words} {bound}" for words, bound, _ in bounds)


def check_bounds(settings: type[DataclassInstance], values: Mapping[str, object]) -> None:
    """Every number in `values` finite and within its field's bounds, whether it came from a flag, a file or a
    stored run; one line naming the flag when it is not."""
    for field in dataclasses.fields(settings):
        problem = out_of_bounds(field, values.get(field.name))
        if problem:
            raise ArenaError(f"--{field.name.replace('_', '-')} {problem}, got {values[field.name]}")


def parse_texts(settings: type[DataclassInstance], values: Mapping[str, object], source: str) -> dict[str, object]:
    """`values` (from a config file, say) with every string read as its flag's text would be ('0,1' as a list),
    and every other value checked to be of its field's type (an int is a float too); one line when it is not."""
    parsers = text_parsers(settings)
    hints = typing.get_type_hints(settings)
    parsed = dict(values)
    for name, value in values.items():
        if name not in parsers:
            continue
        if isinstance(value, str):
            try:
                parsed[name] = parsers[name](value)
            except ValueError:
                raise ArenaError(f"{source}: {name} = {value!r} is not a valid {parsers[name].__name__}") from None
        else:
            parsed[name] = typed(hints[name], value, f"{source}: {name} = {value!r}")
    return parsed


def typed(hint: Any, value: object, what: str) -> object:
    """`value` if it is of the type `hint` names (str, int, float, list[str], each maybe | None), else one line."""
    base = text_parser(hint)
    if value is not None and fits(hint, value):
        if base is float:
            return float(typing.cast(float, value))
        if base is not comma_list or all(isinstance(item, str) for item in typing.cast(list[object], value)):
            return value
    names: dict[object, str] = {str: "a string", int: "a whole number", float: "a number"}
    expected = names.get(base, "a list of strings ('a,b')")
    raise ArenaError(f"{what} is not {expected}")


PLAIN_TYPES: dict[object, tuple[type, ...]] = {int: (int,), float: (int, float), str: (str,), bool: (bool,)}


def fits(hint: Any, value: object) -> bool:
    """Whether a JSON or TOML value has the shape a dataclass field's type asks for: its plain types (an int is a
    float too), None where it may be None, a dict or a list where it holds one. Other types (an enum, a dataclass)
    are left to whoever builds them."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(fits(arg, value) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if typing.get_origin(hint) in (dict, list):
        return isinstance(value, typing.get_origin(hint))
    if hint in PLAIN_TYPES:
        return isinstance(value, PLAIN_TYPES[hint]) and (hint is bool or not isinstance(value, bool))
    return True


def type_name(hint: Any) -> str:
    return hint.__name__ if isinstance(hint, type) else str(hint)
