"""Registrar bindings (RFC 3261 10.3): add, refresh, several contacts, remove, wildcard, order."""

from __future__ import annotations

import pytest

from services.sipgw.registrar import Bindings, OutOfOrder
from services.sipgw.registrar.bindings import MAX_CONTACTS, MAX_EXPIRES, IntervalTooBrief


def test_add_refresh_expire_and_remove() -> None:
    now = [0.0]
    bindings = Bindings(clock=lambda: now[0])
    bindings.update("100", [("sip:100@127.0.0.1:5061", 120)], "127.0.0.1:5061", "c1", 1)
    bindings.update("100", [("sip:100@127.0.0.1:5071", 300)], "127.0.0.1:5071", "c2", 1)
    assert [b.contact for b in bindings.lookup("100")] == ["sip:100@127.0.0.1:5071", "sip:100@127.0.0.1:5061"]
    assert bindings.lookup("100")[0].source == "127.0.0.1:5071"
    now[0] = 121
    assert [b.contact for b in bindings.lookup("100")] == ["sip:100@127.0.0.1:5071"]
    bindings.update("100", [("sip:100@127.0.0.1:5071", 0)], "127.0.0.1:5071", "c2", 2)
    assert bindings.lookup("100") == [] and bindings.numbers() == []


def test_wildcard_removes_all_and_order_is_enforced() -> None:
    bindings = Bindings(clock=lambda: 0.0)
    bindings.update("100", [("sip:a@127.0.0.1", 600), ("sip:b@127.0.0.1", 600)], "127.0.0.1:5060", "c1", 5)
    assert len(bindings.lookup("100")) == 2
    with pytest.raises(OutOfOrder):
        bindings.update("100", [("sip:a@127.0.0.1", 600)], "127.0.0.1:5060", "c1", 5)
    with pytest.raises(OutOfOrder):
        bindings.update("100", [], "127.0.0.1:5060", "c1", 4, wildcard=True)
    assert len(bindings.lookup("100")) == 2  # nothing changed
    bindings.update("100", [], "127.0.0.1:5060", "c1", 6, wildcard=True)
    assert bindings.lookup("100") == []


def test_limits() -> None:
    bindings = Bindings(clock=lambda: 0.0)
    with pytest.raises(IntervalTooBrief):
        bindings.update("100", [("sip:a@127.0.0.1", 10)], "127.0.0.1:5060", "c1", 1)
    (binding,) = bindings.update("100", [("sip:a@127.0.0.1", 99999)], "127.0.0.1:5060", "c1", 2)
    assert binding.remaining(0.0) == MAX_EXPIRES
    contacts = [(f"sip:{i}@127.0.0.1", 600 + i) for i in range(MAX_CONTACTS + 3)]
    kept = bindings.update("200", contacts, "127.0.0.1:5060", "c9", 1)
    assert len(kept) == MAX_CONTACTS and kept[-1].contact == "sip:3@127.0.0.1"  # the shortest-lived went


def test_an_expired_binding_does_not_make_a_new_register_out_of_order() -> None:
    now = [0.0]
    bindings = Bindings(clock=lambda: now[0])
    bindings.update("100", [("sip:a@127.0.0.1", 60)], "127.0.0.1:5060", "c1", 5)
    now[0] = 61
    assert bindings.now() == 61
    kept = bindings.update("100", [("sip:a@127.0.0.1", 60)], "127.0.0.1:5060", "c1", 1)
    assert [b.cseq for b in kept] == [1]
