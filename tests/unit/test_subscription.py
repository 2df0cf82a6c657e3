"""The watch streams' queue: in order, and a watcher that falls behind is dropped, not buffered."""

from __future__ import annotations

import pytest

from services.runtime.subscription import Subscription, WatcherTooSlow


async def test_changes_come_out_in_order() -> None:
    subscription: Subscription[int] = Subscription(limit=10)
    for n in range(5):
        subscription.put(n)
    assert [await subscription.get() for _ in range(5)] == [0, 1, 2, 3, 4]


async def test_a_watcher_that_falls_behind_is_dropped_with_a_reason() -> None:
    subscription: Subscription[int] = Subscription(limit=3)
    for n in range(4):
        subscription.put(n)  # the fourth does not fit
    with pytest.raises(WatcherTooSlow) as raised:
        await subscription.get()
    assert raised.value.reason == "WATCHER_TOO_SLOW"
