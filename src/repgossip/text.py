"""User input quoted in one-line messages: shortened, escaped, never a second line (`shown`), and
refused where it holds control or format characters (`check_printable`)."""

from __future__ import annotations

import reprlib
import unicodedata
from pathlib import Path
from typing import Any

from repgossip.errors import UsageError

# Line and paragraph separators, control and format characters (newline, tab, ESC, zero-width
# and bidi marks): no key or value needs them, and echoed back they split or garble the error line.
_UNPRINTABLE = ("Cc", "Cf", "Zl", "Zp")

_SHOWN = reprlib.Repr()
_SHOWN.maxstring = _SHOWN.maxother = 80
_SHOWN.maxlong = 40
_SHOWN.maxlevel, _SHOWN.maxlist, _SHOWN.maxdict, _SHOWN.maxtuple, _SHOWN.maxset = 2, 4, 4, 4, 4


def shown(value: Any) -> str:
    """User input quoted for a one-line error message.

    repr escapes line breaks and control characters, so the message stays one line; reprlib
    shortens long values and never renders a nested value in full (the repr of a YAML alias bomb
    is gigabytes); an int too long for str() is described instead of printed.
    """
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return f"an integer of {value.bit_length()} bits"
    try:
        text = _SHOWN.repr(value)
    except Exception:  # an object whose repr fails: name its type
        return f"a {type(value).__name__}"
    if not text.isprintable():  # an object's own repr may hold a raw line break
        text = text.encode("unicode_escape").decode("ascii")
    return text


def quoted_path(path: str | Path) -> str:
    """A path in full (unlike `shown`), quoted and escaped: the user needs all of it."""
    return repr(str(path))


def check_printable(what: str, text: str) -> None:
    """Refuse text with control or format characters: no key or value needs them (a newline in a
    value is a quoting mistake), and echoed in an error they would break its one line."""
    if text.isprintable():
        return  # the fast path: isprintable is false for every character refused below
    bad = next((c for c in text if unicodedata.category(c) in _UNPRINTABLE), None)
    if bad is not None:
        raise UsageError(
            f"{what} {shown(text)} contains the control character {bad!r}; "
            "keys and values must be printable text on one line"
        )
