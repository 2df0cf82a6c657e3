"""Header fields of a SIP message: names, compact forms and the ordered multi-valued container.

RFC 3261 section 7.3: names are case-insensitive, a field may appear several times, and a
comma-separated list is equivalent to separate fields of the same name. Values are kept raw (as
received, unfolded) and parsed on demand by ``fields``; the container caches what was parsed so
that the Via/From/To a transaction layer reads again and again are parsed once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar, cast

T = TypeVar("T")

# Compact forms, RFC 3261 section 7.3.3 and the IANA SIP header registry.
COMPACT_FORMS: dict[str, str] = {
    "a": "Accept-Contact",
    "b": "Referred-By",
    "c": "Content-Type",
    "d": "Request-Disposition",
    "e": "Content-Encoding",
    "f": "From",
    "i": "Call-ID",
    "j": "Reject-Contact",
    "k": "Supported",
    "l": "Content-Length",
    "m": "Contact",
    "n": "Identity-Info",
    "o": "Event",
    "r": "Refer-To",
    "s": "Subject",
    "t": "To",
    "u": "Allow-Events",
    "v": "Via",
    "x": "Session-Expires",
    "y": "Identity",
}

# Fields whose grammar is a comma-separated list (RFC 3261 section 25.1 and common extensions).
# Only these are split: an unknown field is one opaque value (RFC 4475 3.1.1.1, 3.1.1.5), and the
# auth fields and Date hold commas that are not separators.
LIST_FIELDS: frozenset[str] = frozenset(
    {
        "Accept",
        "Accept-Contact",
        "Accept-Encoding",
        "Accept-Language",
        "Alert-Info",
        "Allow",
        "Allow-Events",
        "Call-Info",
        "Contact",
        "Content-Encoding",
        "Content-Language",
        "Error-Info",
        "History-Info",
        "In-Reply-To",
        "P-Asserted-Identity",
        "P-Preferred-Identity",
        "Path",
        "Proxy-Require",
        "Reason",
        "Record-Route",
        "Reject-Contact",
        "Require",
        "Route",
        "Security-Client",
        "Security-Server",
        "Security-Verify",
        "Service-Route",
        "Supported",
        "Unsupported",
        "Via",
        "Warning",
    }
)

_KNOWN_NAMES = (
    *COMPACT_FORMS.values(),
    *LIST_FIELDS,
    "Authentication-Info",
    "Authorization",
    "CSeq",
    "Content-Disposition",
    "Date",
    "Expires",
    "Max-Forwards",
    "MIME-Version",
    "Min-Expires",
    "Organization",
    "Priority",
    "Proxy-Authenticate",
    "Proxy-Authorization",
    "RAck",
    "Reply-To",
    "Retry-After",
    "RSeq",
    "Server",
    "Subscription-State",
    "Timestamp",
    "User-Agent",
    "WWW-Authenticate",
)
# Lower-case name (or compact letter) -> the spelling we write.
_CANONICAL: dict[str, str] = {name.lower(): name for name in _KNOWN_NAMES}
_CANONICAL.update(COMPACT_FORMS)
# For the parser: lower-case name as received -> (name we write, lower-case key).
FIELD_NAMES: dict[str, tuple[str, str]] = {lower: (name, name.lower()) for lower, name in _CANONICAL.items()}


def canonical_name(name: str) -> str:
    """The full, conventionally spelled name of a field; unknown names are kept as written."""
    return _CANONICAL.get(name.lower(), name)


def split_list(value: str) -> list[str]:
    """Splits a list value at commas outside quoted strings and <...>; empty elements are dropped."""
    if "," not in value:
        stripped = value.strip()
        return [stripped] if stripped else []
    items: list[str] = []
    start = 0
    in_quotes = in_angle = escaped = False
    for pos, char in enumerate(value):
        if escaped:
            escaped = False
        elif in_quotes:
            if char == "\\":
                escaped = True
            elif char == '"':
                in_quotes = False
        elif char == '"':
            in_quotes = True
        elif char == "<":
            in_angle = True
        elif char == ">":
            in_angle = False
        elif char == "," and not in_angle:
            items.append(value[start:pos].strip())
            start = pos + 1
    items.append(value[start:].strip())
    return [item for item in items if item]


_KEYS: dict[str, str] = {}


def _key(name: str) -> str:
    """The lower-case canonical form of a field name, as the fields are indexed by."""
    key = _KEYS.get(name)
    if key is None:
        key = _CANONICAL.get(name.lower(), name).lower()
        if len(_KEYS) < 1024:  # names asked for are the code's own, but never grow without bound
            _KEYS[name] = key
    return key


class Headers:
    """Ordered header fields with case-insensitive, compact-form-aware names.

    Iterating yields ``(name, value)`` pairs in message order, one per field line as received.
    """

    __slots__ = ("_by_name", "_cache", "_fields")

    def __init__(self, fields: list[tuple[str, str]] | None = None):
        # (lower-case canonical name, canonical name, raw value)
        self._fields: list[tuple[str, str, str]] = []
        # Parsed values, by the lower-case name of the field they come from: a change to one field
        # drops only what was parsed from it (a transport stamping the Via keeps the parsed From).
        self._cache: dict[str, dict[str, Any]] = {}
        self._by_name: dict[str, list[str]] | None = None
        for name, value in fields or ():
            self.add(name, value)

    @classmethod
    def adopt(cls, fields: list[tuple[str, str, str]]) -> Headers:
        """For the parser: takes ``(lower-case name, name, value)`` triples it already validated."""
        headers = cls.__new__(cls)
        headers._fields = fields
        headers._cache = {}
        headers._by_name = None
        return headers

    def _changed(self, key: str) -> None:
        self._by_name = None
        self._cache.pop(key, None)

    def add(self, name: str, value: str) -> None:
        """Appends a field after the existing ones."""
        if "\r" in value or "\n" in value:
            raise ValueError("a header value cannot hold CR or LF")
        canonical = canonical_name(name.strip())
        key = canonical.lower()
        self._fields.append((key, canonical, value.strip()))
        self._changed(key)

    def set(self, name: str, value: str) -> None:
        """Replaces every field of this name with one value, at the place of the first."""
        key = canonical_name(name.strip()).lower()
        for index, (field_key, field_name, _) in enumerate(self._fields):
            if field_key == key:
                if "\r" in value or "\n" in value:
                    raise ValueError("a header value cannot hold CR or LF")
                self._fields[index] = (field_key, field_name, value.strip())
                self._fields[index + 1 :] = [f for f in self._fields[index + 1 :] if f[0] != key]
                self._changed(key)
                return
        self.add(name, value)

    def set_first(self, name: str, value: str) -> None:
        """Replaces the first field line of this name only (a proxy or transport rewriting the top Via)."""
        if "\r" in value or "\n" in value:
            raise ValueError("a header value cannot hold CR or LF")
        key = canonical_name(name.strip()).lower()
        for index, (field_key, field_name, _) in enumerate(self._fields):
            if field_key == key:
                self._fields[index] = (field_key, field_name, value.strip())
                self._changed(key)
                return
        self.add(name, value)

    def remove(self, name: str) -> None:
        """Removes every field of this name."""
        key = canonical_name(name.strip()).lower()
        self._fields = [field for field in self._fields if field[0] != key]
        self._changed(key)

    def _index(self) -> dict[str, list[str]]:
        """Field values by lower-case name, built once per change: a message is read many more
        times than it is changed."""
        index = self._by_name
        if index is None:
            index = self._by_name = {}
            for key, _, value in self._fields:
                found = index.get(key)
                if found is None:
                    index[key] = [value]
                else:
                    found.append(value)
        return index

    def get(self, name: str, default: str | None = None) -> str | None:
        """The raw value of the first field of this name."""
        values = self._index().get(_key(name))
        return values[0] if values else default

    def get_lines(self, name: str) -> list[str]:
        """The raw values of every field line of this name, unsplit."""
        return list(self._index().get(_key(name), ()))

    def get_all(self, name: str) -> list[str]:
        """Every value of this name; list fields (``LIST_FIELDS``) are split at their commas."""
        canonical = canonical_name(name)
        lines = self.get_lines(canonical)
        if canonical not in LIST_FIELDS:
            return lines
        values: list[str] = []
        for line in lines:
            values.extend(split_list(line))
        return values

    def cached(self, field: str, key: str, build: Callable[[Headers], T]) -> T:
        """``build(self)``, computed once until the field ``field`` (lower-case name) changes."""
        entries = self._cache.get(field)
        if entries is None:
            entries = self._cache[field] = {}
        elif key in entries:
            return cast(T, entries[key])
        value = entries[key] = build(self)
        return value

    def keys(self) -> frozenset[str]:
        """The lower-case full names of the fields present."""
        return frozenset(field[0] for field in self._fields)

    def count(self, name: str) -> int:
        """How many field lines carry this name."""
        return len(self._index().get(_key(name), ()))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return ((name, value) for _, name, value in self._fields)

    def __len__(self) -> int:
        return len(self._fields)

    def __repr__(self) -> str:
        return f"Headers({list(self)!r})"
