"""Registrations kept on disk across a restart: expiries honoured, TCP bindings and bad files
left out."""

from __future__ import annotations

import json
from pathlib import Path

from services.sipgw.registrar import Bindings
from services.sipgw.registrar.store import BindingsFile
from tests.harness.wait import wait_for


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_registrations_come_back_after_a_restart_and_expired_ones_do_not(tmp_path: Path) -> None:
    path = tmp_path / "state" / "bindings.json"
    mono, wall = Clock(500.0), Clock(1_800_000_000.0)
    before = Bindings(clock=mono)
    before.update("100", [("sip:100@127.0.0.1:5061", 600)], "127.0.0.1:5061", "reg-a", 1)
    before.update("101", [("sip:101@127.0.0.1:5062", 120)], "127.0.0.1:5062", "reg-b", 4)
    before.update("102", [("sip:102@127.0.0.1:5063", 600)], "127.0.0.1:5063", "reg-c", 1, transport="TCP")
    BindingsFile(path, before, wall=wall).write()
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    # The process restarts 300 s later: its monotonic clock starts anew, the wall clock went on.
    wall.now += 300
    after = Bindings(clock=Clock(7.0))
    assert BindingsFile(path, after, wall=wall).load() == 1
    (binding,) = after.lookup("100")
    assert (binding.source, binding.call_id, binding.cseq, binding.remaining(7.0)) == (
        "127.0.0.1:5061",
        "reg-a",
        1,
        300,
    )
    assert after.lookup("101") == [] and after.lookup("102") == []  # expired meanwhile; TCP died with it


def test_a_missing_or_broken_file_starts_empty(tmp_path: Path) -> None:
    bindings = Bindings()
    assert BindingsFile(tmp_path / "none.json", bindings).load() == 0
    for text in ("{not json", "[1, 2]", json.dumps({"version": 1, "bindings": [{"number": 1}, "x"]}), "\x00\xff"):
        broken = tmp_path / "broken.json"
        broken.write_text(text)
        assert BindingsFile(broken, bindings).load() == 0
    assert bindings.numbers() == []


async def test_a_burst_of_registrations_is_written_once_a_moment_later(tmp_path: Path) -> None:
    path = tmp_path / "bindings.json"
    bindings = Bindings()
    store = BindingsFile(path, bindings)
    bindings.on_change = store.changed
    for n in range(50):
        bindings.update(f"1{n:02d}", [(f"sip:1{n:02d}@127.0.0.1:{6000 + n}", 600)], f"127.0.0.1:{6000 + n}", "r", 1)
    assert not path.exists()
    await wait_for(lambda: _true(path.exists()), timeout=3, what="the registrations written")
    assert len(json.loads(path.read_text())["bindings"]) == 50


async def _true(value: bool) -> bool:
    return value
