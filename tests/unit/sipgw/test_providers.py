"""A provider trunk's state at run time, alone: when it may be offered calls."""

from __future__ import annotations

import time

from services.runtime.config_pstn import ProviderEntry
from services.sipgw.providers import MAX_REST, ProviderLink
from services.sipgw.sip.locate import Target
from services.sipgw.trunk_lines import TrunkLines


def provider() -> ProviderLink:
    link = ProviderLink(ProviderEntry("carrier-a", "192.0.2.10:5060"), TrunkLines(2), ())
    link.targets = [Target("192.0.2.10", 5060, "UDP")]
    return link


def test_a_503_with_retry_after_rests_the_provider_for_that_long_and_no_longer_than_the_cap() -> None:
    link = provider()
    assert link.up
    link.rest("30 (maintenance);duration=10")  # RFC 3261's form: seconds, a comment, parameters
    assert not link.up and link.resting
    assert 29 < link.resting_until - time.monotonic() <= 30
    link.rest("86400")
    assert link.resting_until - time.monotonic() <= MAX_REST
    link.resting_until = time.monotonic() - 1
    assert link.up


def test_a_retry_after_that_is_not_a_number_of_seconds_changes_nothing() -> None:
    link = provider()
    for value in (None, "", "soon", "-5", "0", "Fri, 01 Jan 2027 00:00:00 GMT"):
        link.rest(value)
        assert link.up, value
