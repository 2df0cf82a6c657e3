"""free_port: ports outside the kernel's ephemeral range, not handed out twice in a row."""

import socket

from services.runtime.embedded_etcd import free_port


def ephemeral_range() -> range:
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        low, high = (int(x) for x in f.read().split())
    return range(low, high + 1)


def test_ports_are_outside_the_ephemeral_range_and_not_repeated() -> None:
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == 50
    assert not set(ports) & set(ephemeral_range())


def test_a_port_held_by_another_socket_is_skipped() -> None:
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", port + 1))
        first = free_port(2)
        assert port + 1 not in (first, first + 1)


def test_a_span_is_consecutive_ports_free_for_tcp_and_udp() -> None:
    first = free_port(2)
    for port in (first, first + 1):
        with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            tcp.bind(("127.0.0.1", port))
            udp.bind(("127.0.0.1", port))
