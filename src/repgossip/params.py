"""A component's own parameters: each one's config key, default, range and one line of doc, declared
next to the code that reads it.

A component (an algorithm, dataset, model, partition or topology) lists its parameters in a `params`
attribute: a class attribute of an algorithm, a field of a built-in dataset's spec, an attribute of
a function (`with_params`). When a config selects the component they become config keys: given
with `--set`, in a config file or to `repgossip.run`, checked against their range, recorded in
config.yaml, listed by `repgossip keys`. A plug-in declares them the same way, so
`--set algorithm=proxdeprl:ProxDePRL mu=0.1` works. The default is written here and nowhere else.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, TypeVar

from repgossip.errors import UsageError
from repgossip.text import shown

KINDS = (bool, int, float, str)
INT_MAX = 2**63 - 1  # sizes and counts end up in int64 arrays and tensors
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Param:
    """One parameter of a component: `name` is its config key; its type is its default's (bool,
    int, float or str); `low`/`high` bound a number (`*_open`: the bound itself is refused);
    `choices` list a string's valid values."""

    name: str
    default: bool | int | float | str
    doc: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ValueError(f"a Param's name must be an identifier, got {self.name!r}")
        if type(self.default) not in KINDS:
            raise ValueError(
                f"Param {self.name!r}: the default must be a bool, int, float or str, got "
                f"{self.default!r}"
            )
        self.check(self.default)

    @property
    def kind(self) -> type:
        return type(self.default)

    def check(self, value: Any) -> None:
        """Refuse in one line a value outside the range or the choices."""
        if self.choices and value not in self.choices:
            raise UsageError(
                f"unknown {self.name} {shown(value)}; valid: {', '.join(self.choices)}"
            )
        number = self.kind in (int, float) and not isinstance(value, bool)
        if number and isinstance(value, int) and abs(value) > INT_MAX:  # before any float()
            raise UsageError(
                f"{self.name} must be <= {INT_MAX} (a 64-bit integer), got {shown(value)}"
            )
        if number and (not math.isfinite(value) or not self._within(value)):
            raise UsageError(f"{self.name} must be {self.range_text()}, got {shown(value)}")

    def _within(self, value: float) -> bool:
        above = self.low is None or value > self.low or (value == self.low and not self.low_open)
        below = (
            self.high is None or value < self.high or (value == self.high and not self.high_open)
        )
        return above and below

    def range_text(self) -> str:
        """The valid values in words: `in [0, 1)`, `>= 0`, `one of a, b`, `true or false`."""
        if self.choices:
            return "one of " + ", ".join(self.choices)
        if self.kind is bool:
            return "true or false"
        if self.kind is str:
            return "a string"
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"in {left}{self.low:g}, {self.high:g}{right}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {self.high:g}"
        return "any finite number"


def shown_default(param: Param) -> str:
    """A default as a config file writes it: true/false for a bool, the plain value otherwise."""
    if param.kind is bool:
        return "true" if param.default else "false"
    return f"{param.default:g}" if param.kind is float else str(param.default)


def table_row(owner: str, param: Param) -> str:
    """README's "Config keys" row of a component's parameter: what `tests/test_docs.py` finds
    there, so the table and the declaration cannot drift apart."""
    return (
        f"| `{param.name}` | {shown_default(param)} | {owner}: {param.doc} ({param.range_text()}) |"
    )


def describe(param: Param) -> str:
    """One line of `repgossip keys`."""
    return f"  {param.name} = {shown_default(param)}  ({param.range_text()})  {param.doc}"


def with_params(function: F, *params: Param) -> F:
    """`function` declaring `params` (its `params` attribute): how a function-shaped component
    (a partition scheme, a topology builder, a plug-in dataset or model factory) takes keys."""
    function.params = params  # type: ignore[attr-defined]
    return function


def defaults(component: Any) -> dict[str, Any]:
    """The declared default of each of `component`'s parameters, by name."""
    return {p.name: p.default for p in getattr(component, "params", ())}


def declared(component: Any, label: str, reserved: Collection[str]) -> tuple[Param, ...]:
    """`component.params` (none when it has no such attribute), refused in one line unless a
    tuple of Param whose names are apart from the `reserved` keys and from each other."""
    params = getattr(component, "params", ())
    if not isinstance(params, (tuple, list)) or not all(isinstance(p, Param) for p in params):
        raise UsageError(f"{label}: params must be a tuple of repgossip.Param, got {shown(params)}")
    names = [p.name for p in params]
    clash = next((n for n in names if n in reserved or names.count(n) > 1), None)
    if clash is not None:
        raise UsageError(
            f"{label}: parameter '{clash}' is a core config key, an argument components are "
            "called with, or declared twice; name it apart"
        )
    return tuple(params)
