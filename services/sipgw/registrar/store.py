"""Registrations kept on disk, so that a restarted gateway still reaches every phone.

The bindings are written to one JSON file (``sip.bindings_file``) a moment after they change
(atomically: a new file renamed over the old one, readable by this user only) and read back at
start. Expiry times are stored as wall-clock times, so a binding that expired while the gateway
was down is gone; a TCP binding is not kept (its connection died with the process: the phone
reconnects and registers again).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from services.sipgw.registrar.bindings import Binding, Bindings

_log = logging.getLogger(__name__)

VERSION = 1
WRITE_DELAY = 1.0  # seconds: the changes of a burst of REGISTERs go out in one write


class BindingsFile:
    def __init__(self, path: Path, bindings: Bindings, wall: Any = time.time):
        self.path = path
        self.bindings = bindings
        self._wall = wall
        self._pending: asyncio.TimerHandle | None = None

    def load(self) -> int:
        """Restores what the file holds (live UDP bindings); returns how many. A missing file is
        an empty one; an unreadable one is logged and ignored (the phones register again)."""
        try:
            document = json.loads(self.path.read_text(encoding="utf-8"))
            entries = document["bindings"] if document.get("version") == VERSION else []
        except FileNotFoundError:
            return 0
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            _log.warning("registrations file %s unreadable (%s); starting without it", self.path, type(error).__name__)
            return 0
        offset = self.bindings.now() - self._wall()  # wall-clock expiry -> the bindings' clock
        restored = 0
        for entry in entries if isinstance(entries, list) else []:
            try:
                binding = Binding(
                    str(entry["contact"]), str(entry["source"]), float(entry["expires_at"]) + offset,
                    str(entry["call_id"]), int(entry["cseq"]), str(entry.get("transport", "UDP")),
                )  # fmt: skip
                number = str(entry["number"])
            except (KeyError, TypeError, ValueError):
                continue
            if binding.transport == "UDP" and self.bindings.restore(number, binding):
                restored += 1
        return restored

    def changed(self) -> None:
        """The bindings changed: written a moment later (one write for a burst)."""
        if self._pending is None:
            self._pending = asyncio.get_running_loop().call_later(WRITE_DELAY, self.write)

    def write(self, strict: bool = False) -> None:
        """Writes the bindings now; a failure is logged, or with ``strict`` raised (OSError)."""
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        offset = self._wall() - self.bindings.now()
        entries = [
            {"number": number, "contact": b.contact, "source": b.source, "expires_at": b.expires_at + offset,
             "call_id": b.call_id, "cseq": b.cseq, "transport": b.transport}
            for number in self.bindings.numbers() for b in self.bindings.lookup(number) if b.transport == "UDP"
        ]  # fmt: skip
        temporary = self.path.with_name(self.path.name + ".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump({"version": VERSION, "bindings": entries}, out)
            os.replace(temporary, self.path)
        except OSError as error:
            if strict:
                raise
            _log.warning("registrations not written to %s: %s", self.path, error.strerror or error)
