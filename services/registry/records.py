"""What a server writes to etcd, and where: the group's key layout and record encoding.

    /pbxmesh/<group>/members/<server id>                  {"name", "registry", "trunk", "callstate"}
    /pbxmesh/<group>/numbers/<server id>/<number>         {"name", "department", "kind"}
    /pbxmesh/<group>/departments/<server id>/<dept id>    {"name"}
    /pbxmesh/<group>/routes/<server id>/<index>           {"pattern", "provider", "priority", "up"}

Every key is bound to its server's lease. Records are compact JSON so that an operator can read
them with ``etcdctl get --prefix /pbxmesh/``. A server's join order is the create revision of its
member key.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Sequence
from typing import Literal, NamedTuple

ROOT = "/pbxmesh"


@dataclasses.dataclass(frozen=True, slots=True)
class MemberInfo:
    server_id: str
    name: str
    join_revision: int = 0
    registry_address: str = ""
    trunk_address: str = ""
    callstate_address: str = ""


class NumberRecord(NamedTuple):  # NamedTuples here: a full read of a large group builds 100,000
    number: str
    name: str = ""
    department: str = ""
    kind: str = "user"


@dataclasses.dataclass(frozen=True, slots=True)
class ExternalRecord:
    """One external route a server publishes: numbers matching ``pattern`` go out through it."""

    pattern: str
    provider: str
    priority: int = 100
    index: int = 0  # its place in the server's own list
    # False while the server's provider behind the route cannot take calls (its registration
    # failed): the other servers then try the next route first.
    up: bool = True


class ParsedKey(NamedTuple):
    kind: Literal["member", "number", "department", "route"]
    server_id: str
    item: str = ""


class KeyLayout:
    """Key names of one group."""

    def __init__(self, group: str):
        self.prefix = f"{ROOT}/{group}/"

    def member(self, server_id: str) -> str:
        return f"{self.prefix}members/{server_id}"

    def number(self, server_id: str, number: str) -> str:
        return f"{self.prefix}numbers/{server_id}/{number}"

    def department(self, server_id: str, department_id: str) -> str:
        return f"{self.prefix}departments/{server_id}/{department_id}"

    def route(self, server_id: str, index: int) -> str:
        return f"{self.prefix}routes/{server_id}/{index}"

    def parse(self, key: str) -> ParsedKey | None:
        """Splits a key of this group; None for anything else (foreign or malformed keys are ignored)."""
        if not key.startswith(self.prefix):
            return None
        parts = key[len(self.prefix) :].split("/")
        if len(parts) == 2 and parts[0] == "members" and parts[1]:
            return ParsedKey("member", parts[1])
        if len(parts) == 3 and parts[1] and parts[2]:
            if parts[0] == "numbers":
                return ParsedKey("number", parts[1], parts[2])
            if parts[0] == "departments":
                return ParsedKey("department", parts[1], parts[2])
            if parts[0] == "routes" and parts[2].isdigit() and len(parts[2]) < 6:
                return ParsedKey("route", parts[1], parts[2])
        return None


def encode_member(info: MemberInfo) -> bytes:
    return _dump(
        {
            "name": info.name,
            "registry": info.registry_address,
            "trunk": info.trunk_address,
            "callstate": info.callstate_address,
        }
    )


def decode_member(server_id: str, value: bytes, create_revision: int) -> MemberInfo | None:
    data = _load(value)
    if data is None:
        return None
    return MemberInfo(
        server_id=server_id,
        name=_text(data, "name") or server_id,
        join_revision=create_revision,
        registry_address=_text(data, "registry"),
        trunk_address=_text(data, "trunk"),
        callstate_address=_text(data, "callstate"),
    )


def encode_number(record: NumberRecord) -> bytes:
    return _dump({"name": record.name, "department": record.department, "kind": record.kind})


def decode_number(number: str, value: bytes) -> NumberRecord | None:
    data = _load(value)
    return None if data is None else _number_record(number, data)


def decode_numbers(items: Sequence[tuple[str, bytes]]) -> list[NumberRecord | None]:
    """Decodes many (number, value) pairs. One JSON parse for the lot is several times faster than
    one per record, which counts in a full read of a large group; if any value is malformed, each
    is decoded alone so that only the bad ones come back as None."""
    if not items:
        return []
    try:
        documents = json.loads(b"[" + b",".join(value for _, value in items) + b"]")
    except (ValueError, UnicodeDecodeError, RecursionError):
        documents = None
    if not isinstance(documents, list) or len(documents) != len(items):
        return [decode_number(number, value) for number, value in items]
    return [
        _number_record(number, doc) if isinstance(doc, dict) else None
        for (number, _), doc in zip(items, documents, strict=True)
    ]


def _number_record(number: str, data: dict[str, object]) -> NumberRecord:
    name, department, kind = data.get("name", ""), data.get("department", ""), data.get("kind", "")
    return NumberRecord(
        number,
        name if isinstance(name, str) else "",
        department if isinstance(department, str) else "",
        kind if kind and isinstance(kind, str) else "user",
    )


def encode_department(name: str) -> bytes:
    return _dump({"name": name})


def decode_department(value: bytes) -> str | None:
    data = _load(value)
    return None if data is None else _text(data, "name")


def encode_route(record: ExternalRecord) -> bytes:
    return json.dumps(
        {"pattern": record.pattern, "provider": record.provider, "priority": record.priority, "up": record.up},
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode()


MAX_PATTERN = 200


def decode_route(index: str, value: bytes) -> ExternalRecord | None:
    """A published route, or None when it is malformed: a pattern that does not compile is
    dropped here, never tried on a call."""
    data = _load(value)
    if data is None:
        return None
    pattern, priority = _text(data, "pattern"), data.get("priority", 100)
    if not pattern or len(pattern) > MAX_PATTERN or not isinstance(priority, int) or not 0 <= priority <= 65535:
        return None
    try:
        re.compile(pattern)
    except re.error:
        return None
    return ExternalRecord(pattern, _text(data, "provider"), priority, int(index), data.get("up") is not False)


def _dump(data: dict[str, str]) -> bytes:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


def _load(value: bytes) -> dict[str, object] | None:
    try:
        data = json.loads(value)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def _text(data: dict[str, object], key: str) -> str:
    value = data.get(key, "")
    return value if isinstance(value, str) else ""
