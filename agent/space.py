"""The search space of the fixed-space methods: bounds per constant of train.py, per preset.

The space is read from `train_template/space.toml` (one `[PRESET.NAME]` table per constant). Besides
checking and sampling configurations, it maps the numeric constants to the unit cube, the coordinates
CMA-ES and TPE work in:

* float / int, linear:  u = (v - low) / (high - low)
* float / int, log:     u = (ln v - ln low) / (ln high - ln low)
* pow2:                 u = (log2 v - log2 low) / (log2 high - log2 low)   (the exponent, linearly)

`from_unit` inverts this after clipping u to [0, 1]: it rounds ints to the nearest int and pow2 to the
nearest exponent, clips every value to [low, high], and gives low and high exactly at u = 0 and u = 1.
So `from_unit(to_unit(c))` gives back int and pow2 values exactly and floats to within floating-point
rounding (a relative 1e-15 or so). Ints are rounded in value space (a log int's round(exp(w))), and
Python's round() sends halves to even. Categorical constants have no unit coordinate; callers handle
them (`SearchSpace.categorical`).
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeGuard

import numpy as np
from numpy.typing import NDArray

from agent.constants import ConstantsError, Value, read_constants
from agent.errors import ArenaError
from agent.template import EDITABLE_FILE, template_dir

KINDS = ("int", "float", "pow2", "categorical")
_KEYS = {"int": ("kind", "low", "high", "log"), "float": ("kind", "low", "high", "log"),
         "pow2": ("kind", "low", "high"), "categorical": ("kind", "choices")}


class SpaceError(ArenaError):
    """A configuration outside the search space, or a malformed space file."""


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_pow2(value: object) -> TypeGuard[int]:
    return _is_int(value) and value > 0 and value & (value - 1) == 0


@dataclass(frozen=True)
class Param:
    name: str
    kind: str                       # one of KINDS
    low: int | float | None = None  # inclusive bounds; None for categorical
    high: int | float | None = None
    log: bool = False               # int/float only: sample and scale in log space
    choices: tuple[Value, ...] = ()  # categorical only

    @property
    def bounds(self) -> tuple[float, float]:
        """(low, high) of a numeric constant (ints stay ints); raises SpaceError for a categorical."""
        if self.low is None or self.high is None:
            raise SpaceError(f"{self.name} is categorical: it has no bounds")
        return self.low, self.high

    @property
    def int_bounds(self) -> tuple[int, int]:
        """(low, high) of an int or pow2 constant; raises SpaceError for the other kinds."""
        if not _is_int(self.low) or not _is_int(self.high):
            raise SpaceError(f"{self.name} is {self.kind}: it has no integer bounds")
        return self.low, self.high

    # -- checking

    def check(self, value: object) -> None:
        """Raise SpaceError naming this constant if `value` is not in its range or of the wrong type."""
        if self.kind == "categorical":
            if not any(type(choice) is type(value) and choice == value for choice in self.choices):
                raise SpaceError(f"{self.name} = {value!r} is not one of {list(self.choices)}")
            return
        self.checked_number(value)

    def checked_number(self, value: object) -> int | float:
        """`value` itself when it is a number of this numeric constant's type within its range; raises SpaceError."""
        number = self._typed_number(value)
        low, high = self.bounds
        if not low <= number <= high:
            raise SpaceError(f"{self.name} = {value!r} is outside its range [{low}, {high}]")
        return number

    def _typed_number(self, value: object) -> int | float:
        """`value` when it has this constant's type: a finite number for a float, an int (a power of two for pow2)."""
        if self.kind == "float":
            if not _is_number(value) or not math.isfinite(value):
                raise SpaceError(f"{self.name} must be a finite number, got {value!r}")
            return value
        if not _is_int(value):
            raise SpaceError(f"{self.name} must be an int, got {value!r}")
        if self.kind == "pow2" and not _is_pow2(value):
            raise SpaceError(f"{self.name} = {value} is not a power of two")
        return value

    # -- the unit-cube coordinate (numeric kinds only)

    def _warp(self, value: float) -> float:
        """The scale on which this constant is uniform: log2 for pow2, ln for log, else linear."""
        if self.kind == "pow2":
            return math.log2(value)
        return math.log(value) if self.log else float(value)

    def _unwarp(self, warped: float) -> float:
        if self.kind == "pow2":
            return math.pow(2.0, warped)
        return math.exp(warped) if self.log else warped

    def to_unit(self, value: int | float) -> float:
        low, high = self.bounds
        warped_low, warped_high = self._warp(low), self._warp(high)
        return (self._warp(value) - warped_low) / (warped_high - warped_low)

    def from_unit(self, u: float) -> int | float:
        u = min(max(float(u), 0.0), 1.0)
        low_value, high_value = self.bounds
        if u in (0.0, 1.0):  # the bounds themselves, free of exp(log(x)) rounding
            bound = low_value if u == 0.0 else high_value
            return float(bound) if self.kind == "float" else bound
        low, high = self._warp(low_value), self._warp(high_value)
        warped = low + u * (high - low)
        if self.kind == "pow2":
            exponent = min(max(round(warped), round(low)), round(high))
            return 1 << exponent
        if self.kind == "int":
            return int(min(max(round(self._unwarp(warped)), low_value), high_value))
        return min(max(self._unwarp(warped), float(low_value)), float(high_value))

    # -- sampling

    def sample(self, rng: np.random.Generator) -> Value:
        """Uniform over the choices, the exponents (pow2), the ints, or the (log-)interval."""
        if self.kind == "categorical":
            return self.choices[int(rng.integers(len(self.choices)))]
        if self.kind == "float":
            low, high = self.bounds
            warped = rng.uniform(self._warp(low), self._warp(high))
            return min(max(self._unwarp(warped), float(low)), float(high))
        int_low, int_high = self.int_bounds
        if self.kind == "pow2":
            return 1 << int(rng.integers(int_low.bit_length() - 1, int_high.bit_length()))
        if not self.log:
            return int(rng.integers(int_low, int_high + 1))
        # each int owns the log-interval that rounds to it, so the end points are not under-sampled
        warped = rng.uniform(math.log(int_low - 0.5), math.log(int_high + 0.5))
        return int(min(max(round(math.exp(warped)), int_low), int_high))


class SearchSpace(Mapping[str, Param]):
    """Constant name -> Param, in the order of the space file."""

    def __init__(self, params: Iterable[Param]):
        self._params = {param.name: param for param in params}

    def __getitem__(self, name: str) -> Param:
        return self._params[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._params)

    def __len__(self) -> int:
        return len(self._params)

    def __repr__(self) -> str:
        return f"SearchSpace({list(self._params.values())!r})"

    @property
    def numeric(self) -> list[Param]:
        """The int, float and pow2 params: the axes of to_unit / from_unit, in this order."""
        return [p for p in self._params.values() if p.kind != "categorical"]

    @property
    def categorical(self) -> list[Param]:
        return [p for p in self._params.values() if p.kind == "categorical"]

    def check(self, config: Mapping[str, object]) -> None:
        """Raise SpaceError for the first unknown name or bad value; names left out are not checked."""
        for name, value in config.items():
            if name not in self._params:
                raise SpaceError(f"{name} is not in the search space; its constants are: {', '.join(self)}")
            self._params[name].check(value)

    def sample(self, rng: np.random.Generator) -> dict[str, Value]:
        """One configuration of every constant, each drawn independently (see Param.sample)."""
        return {name: param.sample(rng) for name, param in self._params.items()}

    def to_unit(self, config: Mapping[str, object]) -> NDArray[np.float64]:
        """The numeric constants of `config` as a point of [0, 1]^len(numeric); checks them first."""
        missing = [p.name for p in self.numeric if p.name not in config]
        if missing:
            raise SpaceError(f"the configuration lacks {', '.join(missing)}")
        values = [p.checked_number(config[p.name]) for p in self.numeric]
        return np.array([p.to_unit(value) for p, value in zip(self.numeric, values, strict=True)], dtype=float)

    def from_unit(self, x: Iterable[float]) -> dict[str, int | float]:
        """The numeric constants at point `x` (clipped to the unit cube), rounded and within bounds."""
        x = np.asarray(x, dtype=float).reshape(-1)
        if x.size != len(self.numeric):
            raise SpaceError(f"expected a point with {len(self.numeric)} coordinates, got {x.size}")
        if np.isnan(x).any():
            raise SpaceError(f"the point {x.tolist()} has a NaN coordinate")
        return {p.name: p.from_unit(u) for p, u in zip(self.numeric, x, strict=True)}  # sizes checked above


# ---------------------------------------------------------------------------- loading

def _bound(table: dict[str, object], key: str, kind: str, where: str) -> int | float:
    if key not in table:
        raise SpaceError(f"{where}: kind {kind} needs '{key}'; add {key} = NUMBER")
    value = table[key]
    if kind in ("int", "pow2") and not _is_int(value):
        raise SpaceError(f"{where}: {key} of a {kind} must be an integer, got {value!r}")
    if not _is_number(value):
        raise SpaceError(f"{where}: {key} must be a number, got {value!r}")
    if kind == "pow2" and not _is_pow2(value):
        raise SpaceError(f"{where}: {key} = {value} is not a power of two; pow2 bounds are the values "
                         f"themselves, e.g. 64 or 65536")
    return float(value) if kind == "float" else value


def _choices(table: dict[str, object], where: str) -> tuple[Value, ...]:
    choices = table.get("choices")
    if not isinstance(choices, list) or not choices:
        raise SpaceError(f"{where}: a categorical needs a non-empty list, e.g. choices = [\"A\", \"B\"]")
    for choice in choices:
        if not isinstance(choice, (str, int, float)) or isinstance(choice, bool):
            raise SpaceError(f"{where}: choice {choice!r} is not a string or number")
        if choices.count(choice) > 1:
            raise SpaceError(f"{where}: choice {choice!r} is listed twice; list each choice once")
    return tuple(choices)


def _parse_param(name: str, table: object, where: str) -> Param:
    if not isinstance(table, dict):
        raise SpaceError(f"{where}: expected a table with kind = ..., got {table!r}")
    kind = table.get("kind")
    if kind not in KINDS:
        raise SpaceError(f"{where}: unknown kind {kind!r}; use one of {', '.join(KINDS)}")
    unknown = [key for key in table if key not in _KEYS[kind]]
    if unknown:
        raise SpaceError(f"{where}: unknown key '{unknown[0]}' for kind {kind}; "
                         f"allowed keys: {', '.join(_KEYS[kind])}")
    if kind == "categorical":
        return Param(name, kind, choices=_choices(table, where))
    low, high = _bound(table, "low", kind, where), _bound(table, "high", kind, where)
    if low >= high:
        raise SpaceError(f"{where}: low ({low}) must be below high ({high})")
    log = table.get("log", False)
    if not isinstance(log, bool):
        raise SpaceError(f"{where}: log must be true or false, got {log!r}")
    if log and low <= 0:
        raise SpaceError(f"{where}: a log scale needs low > 0, got low = {low}; raise low or set log = false")
    return Param(name, kind, low, high, log)


def _template_constants() -> list[str]:
    try:
        return list(read_constants((template_dir() / EDITABLE_FILE).read_text()))
    except ConstantsError as e:
        raise SpaceError(f"the template's {EDITABLE_FILE} is broken: {e}") from None


def _read_toml(path: Path) -> dict[str, object]:
    try:
        return tomllib.loads(path.read_text())
    except OSError as e:
        raise SpaceError(f"cannot read the search space file {path}: {e.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise SpaceError(f"{path} is not valid TOML: {e}") from None


def load_space(preset_name: str, path: Path | str | None = None) -> SearchSpace:
    """The `[preset_name.*]` tables of `path` (default: the template's space.toml), validated."""
    path = Path(path) if path is not None else template_dir() / "space.toml"
    raw = _read_toml(path)
    tables = raw.get(preset_name)
    if not isinstance(tables, dict) or not tables:
        raise SpaceError(f"{path} has no [{preset_name}] table; add one [{preset_name}.NAME] table per "
                         f"constant (presets in the file: {', '.join(raw) or 'none'})")
    known = _template_constants()
    params = []
    for name, table in tables.items():
        where = f"{path} [{preset_name}.{name}]"
        if name not in known:
            raise SpaceError(f"{where}: {name} is not a constant of {EDITABLE_FILE}'s constants block; "
                             f"use one of {', '.join(known)}")
        params.append(_parse_param(name, table, where))
    return SearchSpace(params)
