"""The response-stream limiter: per client (peer host) and per process, given back on release."""

from __future__ import annotations

import pytest

from services.runtime.streams import StreamLimiter, TooManyStreams, client_of


@pytest.mark.parametrize(
    ("peer", "client"),
    [
        ("ipv4:127.0.0.1:53122", "127.0.0.1"),
        ("ipv6:[::1]:53122", "::1"),
        ("ipv6:%5B2001:db8::7%5D:4000", "2001:db8::7"),
        ("unix:/run/pbxmesh.sock", "unix"),
    ],
)
def test_client_is_the_peer_host(peer: str, client: str) -> None:
    assert client_of(peer) == client


def test_per_client_limit_counts_every_port_of_a_host() -> None:
    limiter = StreamLimiter(per_client=2, total=10)
    first = limiter.open("ipv4:10.0.0.1:1000")
    limiter.open("ipv4:10.0.0.1:1001")
    with pytest.raises(TooManyStreams) as caught:
        limiter.open("ipv4:10.0.0.1:1002")
    assert caught.value.metadata["limit"] == "per_client"
    limiter.open("ipv4:10.0.0.2:1000")  # another client is not held back
    first()
    first()  # twice is once
    assert limiter.count_of("10.0.0.1") == 1 and limiter.count == 2
    limiter.open("ipv4:10.0.0.1:1003")


def test_total_limit_and_release() -> None:
    limiter = StreamLimiter(per_client=5, total=3)
    releases = [limiter.open(f"ipv4:10.0.0.{n}:1") for n in range(3)]
    with pytest.raises(TooManyStreams) as caught:
        limiter.open("ipv4:10.0.0.9:1")
    assert caught.value.metadata["limit"] == "total" and caught.value.reason == "TOO_MANY_STREAMS"
    for release in releases:
        release()
    assert limiter.count == 0 and limiter.count_of("10.0.0.0") == 0
    limiter.open("ipv4:10.0.0.9:1")
