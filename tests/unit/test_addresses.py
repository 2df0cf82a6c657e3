"""host:port as configs, member records and the API write it: IPv4, names, [IPv6], and the errors."""

from __future__ import annotations

import pytest

from services.runtime.addresses import join_host_port, parse_host_port
from services.runtime.config import ConfigError, check_host_port


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:5060", ("127.0.0.1", 5060)),
        ("etcd:2379", ("etcd", 2379)),
        ("callstate.pbx-a.svc:50071", ("callstate.pbx-a.svc", 50071)),
        ("[::1]:5060", ("::1", 5060)),
        ("[2001:db8::7]:65535", ("2001:db8::7", 65535)),
        ("0.0.0.0:0", ("0.0.0.0", 0)),
        ("[::]:0", ("::", 0)),
    ],
)
def test_parses(text: str, expected: tuple[str, int]) -> None:
    assert parse_host_port(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("localhost", "no port"),
        ("localhost:", "no port"),
        ("", "no port"),
        (":2379", "no host"),
        ("[]:2379", "no host"),
        ("host:abc", "port 'abc' is not a number"),
        ("host:-1", "port '-1' is not a number"),
        ("host: 80", "port ' 80' is not a number"),
        ("etcd:²", "port '²' is not a number"),
        ("host:65536", "port 65536 is out of range 0-65535"),
        ("host:99999", "out of range"),
        ("[::1:5060", "unbalanced brackets"),
        ("::1]:5060", "unbalanced brackets"),
    ],
)
def test_refuses_with_the_reason(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match="is not host:port") as raised:
        parse_host_port(text)
    assert reason in str(raised.value)
    assert repr(text) in str(raised.value)


@pytest.mark.parametrize(
    ("host", "port", "text"),
    [("127.0.0.1", 5060, "127.0.0.1:5060"), ("::1", 5060, "[::1]:5060"), ("etcd", 0, "etcd:0")],
)
def test_joins_and_parses_back(host: str, port: int, text: str) -> None:
    assert join_host_port(host, port) == text
    assert parse_host_port(text) == (host, port)


def test_config_check_names_the_key_and_the_reason() -> None:
    assert check_host_port("[::1]:50051", "listen.registry") == ("::1", 50051)
    with pytest.raises(ConfigError) as raised:
        check_host_port("registry:70000", "listen.registry")
    assert (
        str(raised.value) == "listen.registry: 'registry:70000' is not host:port (port 70000 is out of range 0-65535)"
    )
