"""The recordings on this server's disk: one WAV per segment of a call, with its metadata beside it.

Layout under ``recording.dir``: ``<call id>/<n>.wav`` and ``<call id>/<n>.json`` for segment
``<call id>/<n>`` (the callstate's segment id, the same on both servers of a call). The JSON is
written when the segment begins (so a recording cut short by a crash is still listed), rewritten
when the callstate moves its times, and completed with size, duration and sha256 when the file is
closed. At start, files left open by a killed service get their WAV header repaired from their
length and are completed the same way.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import shutil
import time
import wave
from pathlib import Path
from typing import Any

from services.media import wav

_log = logging.getLogger(__name__)

CALL_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")
SEGMENT_ID_RE = re.compile(r"([A-Za-z0-9._-]{1,128})/([1-9][0-9]{0,5})")
STOPPED = "the media service stopped during the recording"


@dataclasses.dataclass
class Entry:
    segment_id: str
    call_id: str
    segment: int
    started_at: float
    ended_at: float | None = None
    local_number: str = ""
    local_name: str = ""
    remote_number: str = ""
    remote_name: str = ""
    held: bool = False
    file: str = ""  # relative to the recordings folder
    duration_ms: int = 0
    size_bytes: int = 0
    sha256: str = ""  # set once the file is closed
    error: str = ""

    @property
    def finished(self) -> bool:
        return bool(self.sha256 or self.error)


class Catalog:
    def __init__(self, folder: Path):
        self.folder = folder
        self.entries: dict[str, Entry] = {}

    def check_writable(self) -> None:
        """Raises OSError when the folder cannot be created or written (a bad ``recording.dir``)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        probe = self.folder / ".pbxmesh-write-check"
        probe.write_bytes(b"")
        probe.unlink()

    def path_of(self, segment_id: str) -> Path | None:
        """Where a segment's WAV goes; None for an id that cannot name a file safely."""
        match = SEGMENT_ID_RE.fullmatch(segment_id)
        if match is None:
            return None
        return self.folder / match.group(1) / f"{match.group(2)}.wav"

    # -- a recording's life ----------------------------------------------------------------------

    def begin(self, entry: Entry) -> None:
        path = self.path_of(entry.segment_id)
        assert path is not None
        entry.file = str(path.relative_to(self.folder))
        self.entries[entry.segment_id] = entry
        self._save(entry)

    def update(self, segment_id: str, **fields: Any) -> None:
        """The callstate's newer view of a segment (aligned times, parties)."""
        entry = self.entries.get(segment_id)
        if entry is None:
            return
        changed = {k: v for k, v in fields.items() if getattr(entry, k) != v}
        if changed:
            for key, value in changed.items():
                setattr(entry, key, value)
            self._save(entry)

    def finish(self, segment_id: str, error: str = "") -> Entry | None:
        """The file is closed: its size, duration and digest go into the metadata."""
        entry = self.entries.get(segment_id)
        if entry is None:
            return None
        path = self.folder / entry.file
        entry.error = error or entry.error
        try:
            entry.size_bytes = path.stat().st_size
            with wave.open(str(path), "rb") as reader:
                entry.duration_ms = round(reader.getnframes() * 1000 / reader.getframerate())
            entry.sha256 = _sha256(path)
        except (OSError, wave.Error, EOFError) as exc:
            entry.error = entry.error or f"the file cannot be read: {exc.__class__.__name__}"
        self._save(entry)
        return entry

    # -- reading -----------------------------------------------------------------------------------

    def list(self, call_id: str = "", since: float | None = None, until: float | None = None) -> list[Entry]:
        found = [
            e
            for e in self.entries.values()
            if (not call_id or e.call_id == call_id)
            and (since is None or e.started_at >= since)
            and (until is None or e.started_at < until)
        ]
        return sorted(found, key=lambda e: (e.started_at, e.call_id, e.segment))

    def get(self, segment_id: str) -> Entry | None:
        return self.entries.get(segment_id)

    # -- start and upkeep --------------------------------------------------------------------------

    def load(self) -> None:
        """Reads every recording's metadata; one left unfinished by a killed service is repaired."""
        for meta in sorted(self.folder.glob("*/*.json")):
            try:
                entry = Entry(**json.loads(meta.read_text()))
            except (OSError, ValueError, TypeError) as exc:
                _log.warning("skipping recording metadata %s: %s", meta, exc.__class__.__name__)
                continue
            self.entries[entry.segment_id] = entry
            if not entry.sha256:
                path = self.folder / entry.file
                if path.exists():
                    wav.repair(path)
                    _log.info("recording %s was left open: header repaired", entry.segment_id)
                if entry.ended_at is None:
                    entry.ended_at = entry.started_at + _frames_seconds(path)
                self.finish(entry.segment_id, STOPPED)

    def sweep(self, retention_days: int, now: float | None = None) -> int:
        """Deletes recordings older than the retention; returns how many."""
        if retention_days <= 0:
            return 0
        cutoff = (now or time.time()) - retention_days * 86400
        old = [e for e in self.entries.values() if e.finished and (e.ended_at or e.started_at) < cutoff]
        for entry in old:
            path = self.folder / entry.file
            for file in (path, path.with_suffix(".json")):
                file.unlink(missing_ok=True)
            del self.entries[entry.segment_id]
            folder = path.parent
            if folder != self.folder and not any(folder.iterdir()):
                shutil.rmtree(folder, ignore_errors=True)
        return len(old)

    def _save(self, entry: Entry) -> None:
        path = self.folder / Path(entry.file).with_suffix(".json")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(".json.tmp")
            partial.write_text(json.dumps(dataclasses.asdict(entry), indent=1))
            partial.replace(path)
        except OSError as exc:
            _log.error("cannot write the metadata of recording %s: %s", entry.segment_id, exc.strerror)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _frames_seconds(path: Path) -> float:
    try:
        with wave.open(str(path), "rb") as reader:
            return reader.getnframes() / reader.getframerate()
    except (OSError, wave.Error, EOFError):
        return 0.0
