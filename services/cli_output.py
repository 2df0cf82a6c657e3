"""What the ``pbxmesh`` commands share: the RPC timeout and how they print."""

from __future__ import annotations

import json

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

RPC_TIMEOUT = 5.0


def print_json(message: Message) -> None:
    print(json.dumps(MessageToDict(message, always_print_fields_with_no_presence=True), indent=2))


def table(rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
