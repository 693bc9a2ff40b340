"""Named components and plug-ins: one registry per kind of component, kept beside it.

Every list of valid names (algorithms, datasets, models, partitions, topologies, mixing rules) is a
`Registry`, so config validation, `--help` text and error messages all read the same list. A
registry that takes plug-ins also accepts `package.module:name`, importable from the working
directory or PYTHONPATH; the config records the reference exactly as given.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import sys
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from repgossip.errors import UsageError

T = TypeVar("T")
PLUGIN_REF = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
API_PREFIX = "python:"  # an object handed to repgossip.run() that has no import path


def is_plugin_ref(name: str) -> bool:
    """Whether `name` reads `package.module:attribute` (and not `python:...`, an object handed to
    the Python API)."""
    return bool(PLUGIN_REF.match(name)) and not name.startswith(API_PREFIX)


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:300]


def import_object(ref: str, kind: str) -> Any:
    """The object `package.module:attribute` names, or a one-line UsageError saying what failed.

    The working directory comes first on the import path, as `python -m` would put it, so that
    `--set model=mymodels:tiny` finds `./mymodels.py` from the `repgossip` console script too.
    """
    module_name, _, attribute = ref.partition(":")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and module_name.startswith(err.name):
            raise UsageError(
                f"{kind} plug-in '{ref}': no module '{err.name}' in the working directory or on "
                "PYTHONPATH"
            ) from None
        raise UsageError(
            f"{kind} plug-in '{ref}': importing it failed: {_first_line(err)}"
        ) from None
    except Exception as err:  # the user's module raised while importing: say so in one line
        raise UsageError(
            f"{kind} plug-in '{ref}': importing '{module_name}' raised "
            f"{type(err).__name__}: {_first_line(err)}"
        ) from None
    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise UsageError(f"{kind} plug-in '{ref}': module '{module_name}' has no '{attribute}'")
        target = getattr(target, part)
    return target


def reference_of(obj: Any) -> str:
    """How a config records an object handed to the Python API: its import path when it has one
    that leads back to it (so the CLI can resume the run), else `python:<name>`."""
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if module and qualname and module != "__main__" and "<" not in qualname:
        ref = f"{module}:{qualname}"
        try:
            if import_object(ref, "object") is obj:
                return ref
        except UsageError:
            pass
    name = qualname or type(obj).__name__
    return f"{API_PREFIX}{name}"


def call_with_accepted(fn: Callable[..., T], **available: Any) -> T:
    """`fn` called with those of `available` that its signature names (all of them if it takes
    **kwargs): plug-in functions declare only the arguments they need."""
    try:
        parameters = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # builtins without a signature: pass nothing
        return fn()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return fn(**available)
    return fn(**{k: v for k, v in available.items() if k in parameters})


class Registry(Generic[T]):
    """Names of one kind of component and what each name stands for, in registration order."""

    def __init__(self, kind: str, *, plugins: bool = False, extra: str = "") -> None:
        self.kind = kind
        self.plugins = plugins
        self.extra = extra  # what else a value may be, for the error message (e.g. "a file path")
        self._items: dict[str, T] = {}

    def register(self, name: str, item: T) -> T:
        if name in self._items:
            raise ValueError(f"{self.kind} '{name}' is registered already")
        self._items[name] = item
        return item

    def names(self) -> tuple[str, ...]:
        return tuple(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def items(self) -> list[tuple[str, T]]:
        return list(self._items.items())

    def valid(self) -> str:
        """The valid choices, as error messages and help texts list them."""
        choices = ", ".join(self._items)
        alternatives = [a for a in (self.extra, "package.module:name" if self.plugins else "") if a]
        return choices + "".join(f", or {a}" for a in alternatives)

    def get(self, name: str) -> T:
        """The registered item, or the plug-in `name` refers to."""
        if name in self._items:
            return self._items[name]
        if self.plugins and is_plugin_ref(name):
            return import_object(name, self.kind)
        if name.startswith(API_PREFIX):
            raise UsageError(
                f"{self.kind} '{name}' was an object handed to repgossip.run(); pass it again "
                "there to run or resume this config"
            )
        raise UsageError(f"unknown {self.kind} '{name}'; valid: {self.valid()}")

    def check(self, name: str) -> None:
        """Refuse an unknown name in one line (plug-ins are imported, so a typo shows now)."""
        if name.startswith(API_PREFIX):
            return  # an object handed to the Python API; the run checks that it was given
        self.get(name)
