# The media worker's per-packet data path (_relay.c).
from collections.abc import Callable

PCMU: int
PCMA: int
TELEPHONE_EVENT: int
ENCODINGS: int

class Leg:
    leg_id: str
    playing: bool
    tapping: bool
    packets_in: int
    packets_out: int
    packets_dropped: int
    last_rtp: float
    ssrc: int
    @property
    def partner(self) -> Leg | None: ...
    def __init__(self, leg_id: str, rtp_fd: int, rtcp_fd: int, family: int) -> None: ...
    def read_rtp(self) -> None: ...
    def read_rtcp(self) -> None: ...
    def set_remote(
        self,
        host: str,
        rtp_port: int,
        rtcp_port: int,
        encodings: dict[int, int],
        clock_rates: dict[int, int],
        sends: bool,
        receives: bool,
    ) -> None: ...
    def connect(self, partner: Leg | None) -> None: ...
    def send(
        self,
        source: object,
        source_ssrc: int,
        encoding: int,
        marker: int,
        sequence: int,
        timestamp: int,
        payload: bytes,
    ) -> int | None: ...
    def set_srtp(self, send_key: bytes, recv_key: bytes) -> None: ...
    @property
    def srtp(self) -> bool: ...
    def take_taps(self) -> list[tuple[float, int, bytes]]: ...
    def stream_state(self) -> dict[str, float | int | bool]: ...
    def resume_stream(self, ssrc: int, sequence: int, timestamp: int, sent: float, started: bool) -> None: ...
    def close(self) -> None: ...

def set_transcoding(from_pcmu: bytes, from_pcma: bytes) -> None: ...
def set_digit_handler(handler: Callable[[str, str, int], None] | None) -> None: ...
def counters() -> dict[str, int]: ...
