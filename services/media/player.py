"""Files played to legs (music on hold, prompts): 20 ms frames of 8 kHz audio in a leg's law.

A file is read once (converted to 8 kHz mono) and encoded in both laws up front, so that each
tick only slices bytes. One ticker in the worker drives every playback (``Playback.next_frame``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from services.media import g711
from services.media.wav import read_pcm

FRAME = 160  # samples in 20 ms at 8 kHz
TICK = 0.02


@dataclass(frozen=True)
class Track:
    """A file's audio in both laws, padded with silence to whole frames."""

    path: Path
    encoded: dict[str, bytes]

    @property
    def frames(self) -> int:
        return len(self.encoded[g711.PCMU]) // FRAME

    @classmethod
    def load(cls, path: Path) -> Track:
        samples = read_pcm(path)
        encoded = {}
        for law in g711.LAWS:
            payload = g711.encode(law, samples)
            padding = -len(payload) % FRAME
            encoded[law] = payload + bytes([g711.SILENCE[law]]) * padding
        return cls(path, encoded)


class Tracks:
    """Loaded files by path, loaded again when the file changes (its size or time)."""

    def __init__(self) -> None:
        self._tracks: dict[Path, tuple[tuple[int, int], Track]] = {}

    def get(self, path: Path) -> Track:
        stat = os.stat(path)
        version = (stat.st_mtime_ns, stat.st_size)
        known = self._tracks.get(path)
        if known is not None and known[0] == version:
            return known[1]
        track = Track.load(path)
        self._tracks[path] = (version, track)
        return track


class Playback:
    """One track playing to one leg: its position, and the sequence and time of its own packets."""

    def __init__(self, track: Track, loop: bool, position: int = 0):
        self.track = track
        self.loop = loop
        self.position = position  # in frames
        self.sequence = 0
        self.timestamp = 0

    def next_frame(self, law: str) -> bytes | None:
        """The next 20 ms in ``law``; None once a track that does not loop has ended."""
        if self.position >= self.track.frames:
            if not self.loop or self.track.frames == 0:
                return None
            self.position = 0
        start = self.position * FRAME
        self.position += 1
        self.sequence = (self.sequence + 1) & 0xFFFF
        self.timestamp = (self.timestamp + FRAME) & 0xFFFFFFFF
        return self.track.encoded[law][start : start + FRAME]
