"""``media`` and ``recording``: the media service's RTP ports, its workers, music on hold, and how
calls are recorded.

The gateway reads them too: with ``listen.media`` set it anchors every call's media on the media
service, and ``recording.required`` decides what a call does when that service cannot be reached.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from pathlib import Path

from services.runtime._loader import ConfigError, max_length
from services.runtime.text import MAX_PATH

PORTS_RE = re.compile(r"(\d{1,5})-(\d{1,5})")
MAX_WORKERS = 64
MIN_PORTS_PER_WORKER = 4  # two legs: an RTP and an RTCP port each
MAX_RETENTION_DAYS = 36500


@dataclasses.dataclass(frozen=True)
class MediaSection:
    # The address phones and the other servers' media services send RTP to (and it binds).
    rtp_address: str = "127.0.0.1"
    # RTP ports (even) and their RTCP ports (the odd one above), shared out between the workers.
    rtp_ports: str = "40000-40999"
    # Relay processes: one per core is the most that helps.
    workers: int = 1
    # A WAV file played to a held party; empty: the tone shipped with the product.
    music_on_hold: str = dataclasses.field(default="", metadata=max_length(MAX_PATH))


@dataclasses.dataclass(frozen=True)
class RecordingSection:
    enabled: bool = True
    # One WAV per segment of each call, under <dir>/<call id>/<n>.wav, with its metadata beside it.
    dir: str = dataclasses.field(default="recordings", metadata=max_length(MAX_PATH))
    # Recordings older than this are deleted; 0 keeps them.
    retention_days: int = 90
    # A call that cannot be recorded (no media service) is refused with 503 instead of going on.
    required: bool = False


def port_range(value: str, key: str = "media.rtp_ports") -> tuple[int, int]:
    """``"A-B"``: the first and last port, both included."""
    match = PORTS_RE.fullmatch(value)
    if match is None:
        raise ConfigError(f"{key}: {value!r} is not a port range like 40000-40999")
    first, last = int(match.group(1)), int(match.group(2))
    if not 1024 <= first < last <= 65535:
        raise ConfigError(f"{key}: {value!r} must go up from 1024 or more to 65535 or less")
    return first, last


def validate_media(media: MediaSection, recording: RecordingSection) -> None:
    try:
        address = ipaddress.ip_address(media.rtp_address)
    except ValueError:
        raise ConfigError(f"media.rtp_address: {media.rtp_address!r} is not an IP address") from None
    if address.is_unspecified:
        raise ConfigError("media.rtp_address: an address phones can send to is needed (not 0.0.0.0 or ::)")
    first, last = port_range(media.rtp_ports)
    if not 1 <= media.workers <= MAX_WORKERS:
        raise ConfigError(f"media.workers: {media.workers} is not between 1 and {MAX_WORKERS}")
    if (last - first + 1) // media.workers < MIN_PORTS_PER_WORKER:
        raise ConfigError(
            f"media.rtp_ports: {media.rtp_ports} leaves fewer than {MIN_PORTS_PER_WORKER} ports to each of"
            f" {media.workers} workers"
        )
    if media.music_on_hold and not Path(media.music_on_hold).is_file():
        raise ConfigError(f"media.music_on_hold: no such file {media.music_on_hold!r}")
    if not 0 <= recording.retention_days <= MAX_RETENTION_DAYS:
        days = recording.retention_days
        raise ConfigError(f"recording.retention_days: {days} is not between 0 and {MAX_RETENTION_DAYS}")
    if not recording.dir:
        raise ConfigError("recording.dir: a folder is needed")
