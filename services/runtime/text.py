"""The rules every string from outside obeys, in a config file and in an API request alike.

A value is refused when it holds a control character (C0, DEL, C1, the Unicode line and paragraph
separators) or is longer than its limit: such a value could split a log line or a SIP header, or
fill memory and logs. ``problem`` says what is wrong (for an error naming the key or field);
``printable`` is the last line of defence where a value is written into a SIP header.
"""

from __future__ import annotations

import re

# C0 (CR, LF, NUL, TAB...), DEL, C1 (NEL among them), LINE SEPARATOR, PARAGRAPH SEPARATOR.
CONTROL_RE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")

MAX_TEXT = 1024  # any string without a tighter limit of its own
MAX_NAME = 128  # display names: a server's, a number's, a department's, a party's
MAX_ID = 128  # ids and numbers that have no pattern of their own
MAX_PATH = 4096  # file names


def problem(value: str, limit: int = MAX_TEXT) -> str | None:
    """What makes ``value`` unfit (``None``: nothing); never quotes the value itself."""
    if len(value) > limit:
        return f"is longer than {limit} characters"
    found = CONTROL_RE.search(value)
    if found is not None:
        return f"holds a control character (U+{ord(found.group()):04X})"
    return None


def printable(value: str) -> str:
    """``value`` without control characters (each one becomes a space)."""
    return CONTROL_RE.sub(" ", value)


__all__ = ["CONTROL_RE", "MAX_ID", "MAX_NAME", "MAX_PATH", "MAX_TEXT", "printable", "problem"]
