"""Routing scenarios: the config's rule lists, compiled once, asked once per incoming call.

A call runs the server's ``inter_server`` scenario when it comes over the trunk (if there is one),
else ``incoming``. The first rule whose patterns match the whole called and caller numbers gives
the action; with no match the call is rejected with 404. A server with no scenario at all rings
the number that was dialed.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Literal

from services.runtime.config_calls import TEMPLATE_RE, ScenarioRule, ScenariosSection

ActionKind = Literal["dial", "ring_department", "forward", "reject"]
NO_MATCH = 404


@dataclasses.dataclass(frozen=True)
class Action:
    kind: ActionKind
    target: str = ""  # a number, department id or URI; empty for reject
    code: int = 0  # for reject
    allow_external: bool = False  # the target may be a number outside the group (the PSTN)


@dataclasses.dataclass(frozen=True)
class _Rule:
    called: re.Pattern[str] | None
    caller: re.Pattern[str] | None
    kind: ActionKind
    target: str
    code: int
    allow_external: bool = False


def _compile(rule: ScenarioRule) -> _Rule:
    called = re.compile(rule.match.called) if rule.match.called else None
    caller = re.compile(rule.match.caller) if rule.match.caller else None
    if rule.dial:
        return _Rule(called, caller, "dial", rule.dial, 0, rule.allow_external)
    if rule.ring_department:
        return _Rule(called, caller, "ring_department", rule.ring_department, 0)
    if rule.forward:
        return _Rule(called, caller, "forward", rule.forward, 0, rule.allow_external)
    return _Rule(called, caller, "reject", "", rule.reject)


class Scenarios:
    """The compiled scenarios of one server (the config was validated at load)."""

    def __init__(self, section: ScenariosSection):
        self._incoming = [_compile(r) for r in section.incoming]
        self._inter_server = [_compile(r) for r in section.inter_server]

    @classmethod
    def none(cls) -> Scenarios:
        """No scenario: every call rings the number dialed."""
        return cls(ScenariosSection())

    def route(self, called: str, caller: str, from_trunk: bool) -> Action:
        if not self._incoming and not self._inter_server:
            return Action("dial", called)  # no scenario at all: ring the number that was dialed
        rules = self._inter_server if from_trunk and self._inter_server else self._incoming
        for rule in rules:
            if rule.called is not None and not rule.called.fullmatch(called):
                continue
            if rule.caller is not None and not rule.caller.fullmatch(caller):
                continue
            if rule.kind == "reject":
                return Action("reject", code=rule.code)
            return Action(rule.kind, _fill(rule.target, called, caller), allow_external=rule.allow_external)
        return Action("reject", code=NO_MATCH)


def _fill(target: str, called: str, caller: str) -> str:
    values = {"called": called, "caller": caller}
    return TEMPLATE_RE.sub(lambda m: values[m.group(1)], target)
