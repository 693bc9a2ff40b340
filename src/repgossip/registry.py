"""Named components and plug-ins: one registry per kind of component, kept beside it.

Every list of valid names (algorithms, datasets, models, partitions, topologies, mixing rules) is a
`Registry`, so config validation, `--help` text and error messages all read the same list. A
registry that takes plug-ins also accepts `package.module:name`, importable from the working
directory or PYTHONPATH; the config records the reference exactly as given.

A plug-in value runs code from the Python environment: importing its module runs that module. So a
reference into the standard library is refused before anything is imported, and the object it
names must be a factory of the registry's kind (its `Factory`) before anything calls it: a config
value `sys:exit`, `os:abort` or `signal:pause` is one line and exit code 2, not an exit, an abort
or a hang. What a run's plug-ins were built from (`PluginCode`: each module's file and sha256) is
shown on stderr, kept in provenance.json and bound to the checkpoint.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import os
import re
import sys
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from repgossip.errors import UsageError, described, first_line, user_code_failed

T = TypeVar("T")
PLUGIN_REF = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
API_PREFIX = "python:"  # an object handed to repgossip.run() that has no import path


def is_plugin_ref(name: str) -> bool:
    """Whether `name` reads `package.module:attribute` (and not `python:...`, an object handed to
    the Python API)."""
    return bool(PLUGIN_REF.match(name)) and not name.startswith(API_PREFIX)


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
            f"{kind} plug-in '{ref}': importing it failed: {first_line(err)}"
        ) from None
    except Exception as err:  # the user's module raised while importing: say so in one line
        raise user_code_failed(
            f"{kind} plug-in '{ref}': importing '{module_name}' raised {described(err)}", err
        ) from None
    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise UsageError(f"{kind} plug-in '{ref}': module '{module_name}' has no '{attribute}'")
        target = getattr(target, part)
    return target


# Modules no plug-in comes from: the standard library's (its functions exit, abort, hang, delete;
# some of its modules act when imported), and whatever program happens to be running as __main__.
NOT_PLUGIN_MODULES = frozenset(sys.stdlib_module_names) | {"__main__"}


def _top_module(name: str | None) -> str:
    return (name or "").partition(".")[0]


def _is_python_function(obj: Any) -> bool:
    """A function (or a method of a class) written in Python; not a builtin written in C, nor a
    callable object."""
    if isinstance(obj, types.MethodType):
        obj = obj.__func__
    return isinstance(obj, types.FunctionType)


@dataclass(frozen=True)
class Factory:
    """What a plug-in of one kind must be before anything calls it: a subclass of `base` (named
    `base_name` in messages), or, where `functions`, a function written in Python. Builtins (which
    take no keyword the run could pass, so are called with none: `sys.exit()`), callable objects
    and anything of the standard library are none of these."""

    base: type | None = None
    base_name: str = ""
    functions: bool = True
    returns: str = ""  # what a function must return, for the message

    def forms(self) -> str:
        """The accepted forms, as error messages list them."""
        forms = [f"a subclass of {self.base_name}"] if self.base is not None else []
        if self.functions:
            forms.append(f"a function written in Python{self.returns}")
        return ", or ".join(forms)

    def refusal(self, obj: Any) -> str | None:
        """Why `obj` is not a factory of this kind, or None when it is."""
        if _top_module(getattr(obj, "__module__", None)) in NOT_PLUGIN_MODULES:
            name = getattr(obj, "__qualname__", type(obj).__name__)
            return f"it is {obj.__module__}.{name}, of Python's standard library"
        if isinstance(obj, type):
            if self.base is not None and issubclass(obj, self.base):
                return None
            return f"got the class {obj.__qualname__}"
        if self.functions and _is_python_function(obj):
            return None
        return f"got an object of type {type(obj).__name__}"


def load_plugin(ref: str, kind: str, factory: Factory) -> Any:
    """The factory `ref` names, checked before it is called: a module of the standard library (or
    __main__) is refused unimported, the object must be one of `factory`'s forms."""
    module_name = ref.partition(":")[0]
    top = _top_module(module_name)
    if top in NOT_PLUGIN_MODULES:
        where = (
            "the running program" if top == "__main__" else "a module of Python's standard library"
        )
        raise UsageError(
            f"{kind} plug-in '{ref}': '{module_name}' is {where}, not a plug-in; a plug-in is "
            f"{factory.forms()}, in a module of your own"
        )
    obj = import_object(ref, kind)
    problem = factory.refusal(obj)
    if problem is not None:
        raise UsageError(f"{kind} plug-in '{ref}' must be {factory.forms()}; {problem}")
    return obj


@dataclass(frozen=True)
class PluginCode:
    """What built one plug-in of a run: the reference the config gives, the module the object
    was written in, and for that module and the one the reference names, the source file and a
    sha256 of its bytes (keyed by module name, so a moved project folder is the same code; for
    an object of a script or notebook, `__main__`, the sha256 of the object's own source).

    Modules that the plug-in's module imports in turn, and installed packages, are not covered:
    a change there goes unseen."""

    reference: str
    defined_in: str
    files: dict[str, str | None]
    digests: dict[str, str]

    def announcement(self, kind: str) -> str:
        """The line a run prints before it calls the plug-in."""
        file = self.files.get(self.defined_in) or "no source file"
        return f"plug-in {kind}: {self.reference} (file {file})"

    def provenance(self) -> dict[str, Any]:
        return {"reference": self.reference, "files": self.files, "sha256": self.digests}


def plugin_code(reference: str, obj: Any) -> PluginCode:
    """The `PluginCode` of `obj`, which the config records as `reference` (an import path, or
    `python:...` for an object handed to the Python API). Reads the source files now: call it as
    the run starts, right after the import."""
    defined_in = str(getattr(obj, "__module__", None) or "")
    names = [reference.partition(":")[0]] if is_plugin_ref(reference) else []
    names.append(defined_in)
    files: dict[str, str | None] = {}
    digests: dict[str, str] = {}
    for name in dict.fromkeys(n for n in names if n):
        files[name] = getattr(sys.modules.get(name), "__file__", None)
        # a script (or notebook) is the program, not a module: its object's own source counts,
        # so a run started by one script may be resumed by another that defines the same object
        digests[name] = _source_digest(obj) if name == "__main__" else _file_digest(files[name])
    return PluginCode(reference, defined_in, files, digests)


def _source_digest(obj: Any) -> str:
    try:
        return hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()
    except (OSError, TypeError):
        return "no source"


def _file_digest(path: str | None) -> str:
    if path is None:
        return "no source file"  # a namespace package, or a notebook's __main__
    try:
        with open(path, "rb") as handle:
            return hashlib.sha256(handle.read()).hexdigest()
    except OSError as err:
        return f"unreadable ({err.strerror or err})"


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

    def __init__(self, kind: str, *, plugins: Factory | None = None, extra: str = "") -> None:
        self.kind = kind
        self.plugins = plugins  # what a plug-in of this kind must be; None: no plug-ins
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
        plugins = "package.module:name" if self.plugins is not None else ""
        alternatives = [a for a in (self.extra, plugins) if a]
        return choices + "".join(f", or {a}" for a in alternatives)

    def get(self, name: str) -> T:
        """The registered item, or the plug-in `name` refers to (checked to be a factory of this
        registry's kind before anything can call it)."""
        if name in self._items:
            return self._items[name]
        if self.plugins is not None and is_plugin_ref(name):
            item: T = load_plugin(name, self.kind, self.plugins)
            return item
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
