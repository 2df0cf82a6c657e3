"""``sip.lockout``: how the gateway slows down and locks out password guessing.

Failures are counted per account (the number whose password was tried, known or not) over a long
window, and per source address over a short one. Every key is a whole number of seconds or failures.
"""

from __future__ import annotations

import dataclasses

from services.runtime._loader import ConfigError

MAX_WINDOW = 7 * 86400
MAX_FAILURES = 1000


@dataclasses.dataclass(frozen=True)
class LockoutSection:
    """Thresholds of the password lockout (see README: "Password lockout")."""

    # Per account: failures within `window` seconds. After `free_failures` every answer for the
    # account is delayed; at `lock_failures` it is locked for `lock_seconds`, and each lock after
    # that within the window lasts twice as long as the one before, up to `max_lock_seconds`.
    free_failures: int = 5
    lock_failures: int = 10
    window: int = 86400
    lock_seconds: int = 900
    max_lock_seconds: int = 86400
    # Per source address (floods, and guessing across many accounts): the same, over a short window.
    source_free_failures: int = 5
    source_lock_failures: int = 20
    source_window: int = 600
    source_lock_seconds: int = 300


def validate_lockout(section: LockoutSection, key: str = "sip.lockout") -> None:
    """Each threshold in range, and each lock after the free failures it follows."""
    for name in ("window", "lock_seconds", "max_lock_seconds", "source_window", "source_lock_seconds"):
        value = getattr(section, name)
        if not 1 <= value <= MAX_WINDOW:
            raise ConfigError(f"{key}.{name}: {value} is not between 1 and {MAX_WINDOW} seconds")
    for prefix in ("", "source_"):
        free, lock = getattr(section, f"{prefix}free_failures"), getattr(section, f"{prefix}lock_failures")
        if not 0 <= free <= MAX_FAILURES:
            raise ConfigError(f"{key}.{prefix}free_failures: {free} is not between 0 and {MAX_FAILURES}")
        if not free < lock <= MAX_FAILURES:
            raise ConfigError(
                f"{key}.{prefix}lock_failures: {lock} must be above {prefix}free_failures ({free}) "
                f"and at most {MAX_FAILURES}"
            )
    if section.max_lock_seconds < section.lock_seconds:
        raise ConfigError(
            f"{key}.max_lock_seconds: {section.max_lock_seconds} is below lock_seconds ({section.lock_seconds})"
        )
