"""The toll fraud guard (services/sipgw/toll.py): who may call out, and how much."""

from __future__ import annotations

import logging

import pytest

from services.runtime.config_pstn import ExternalSection
from services.sipgw.toll import API, PHONE, PROVIDER, SCENARIO, TRUNK, TollGuard


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_calls_from_the_outside_never_go_back_out(caplog: pytest.LogCaptureFixture) -> None:
    guard = TollGuard(ExternalSection())
    with caplog.at_level(logging.WARNING):
        refused = guard.admit("+79031112233", PROVIDER, "provider carrier-a at 203.0.113.10:5060", "89161234567")
    assert refused == (403, "Forbidden (external calls are not allowed from provider)")
    assert guard.refused == {"origin": 1} and guard.total == 0
    line = caplog.records[-1].getMessage()
    assert "provider carrier-a at 203.0.113.10:5060" in line and "89161234567" in line
    for origin in (PHONE, API, TRUNK, SCENARIO):
        assert callable(guard.admit(f"1{origin}", origin, "x", "8"))


def test_concurrent_calls_per_number_and_per_server() -> None:
    guard = TollGuard(ExternalSection(calls_per_number=2, calls_per_server=3, per_minute_per_number=100))
    first, second = guard.admit("100", PHONE, "a", "8"), guard.admit("100", PHONE, "a", "8")
    assert callable(first) and callable(second)
    assert guard.admit("100", PHONE, "a", "8") == (503, "Service Unavailable (100 has 2 external calls)")
    third = guard.admit("101", PHONE, "b", "8")
    assert callable(third)
    assert guard.admit("102", PHONE, "c", "8") == (503, "Service Unavailable (the server has 3 external calls)")
    first()
    first()  # given back twice: counted once
    assert guard.total == 2 and guard.active["100"] == 1
    assert callable(guard.admit("102", PHONE, "c", "8"))
    assert guard.refused == {"calls_per_number": 1, "calls_per_server": 1}


def test_calls_per_minute_per_number_and_per_server() -> None:
    clock = Clock()
    guard = TollGuard(ExternalSection(per_minute_per_number=2, per_minute_per_server=3), clock)
    for _ in range(2):
        give_back = guard.admit("100", PHONE, "a", "8")
        assert callable(give_back)
        give_back()  # short calls: the per-minute limit holds all the same
    assert guard.admit("100", PHONE, "a", "8") == (
        503,
        "Service Unavailable (100 started 2 external calls this minute)",
    )
    assert callable(guard.admit("101", PHONE, "b", "8"))
    assert guard.admit("102", PHONE, "c", "8") == (
        503,
        "Service Unavailable (the server started 3 external calls this minute)",
    )
    clock.now += 60
    assert callable(guard.admit("100", PHONE, "a", "8"))


def test_a_limit_of_zero_means_no_external_calls() -> None:
    guard = TollGuard(ExternalSection(calls_per_server=0))
    assert guard.admit("100", PHONE, "a", "8")[0] == 503  # type: ignore[index]
