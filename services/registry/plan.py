"""The merged numbering plan as one server sees it. Pure data: no etcd, no gRPC, no clock.

Rules (the product's, in this order):
  1. Only live members count; keys of a server that is not a live member are ignored.
  2. A number this server has is its own, whoever else has it.
  3. Otherwise the member that joined earliest (lowest member-key create revision) wins.
Every shadowed claim is a conflict. Departments with the same id are one department.

Changes are applied in batches; at the end of a batch the view recomputes only the numbers the
batch touched and tells its listeners what changed, so a single update costs O(claims on that
number), not O(plan).
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from collections.abc import Callable, Generator, Iterable, Iterator
from typing import NamedTuple

from services.registry.records import ExternalRecord, MemberInfo, NumberRecord


class Route(NamedTuple):  # a NamedTuple: one per number of the plan, built on every full read
    number: str
    server_id: str
    server_name: str
    local: bool
    display_name: str
    department: str
    kind: str
    trunk_address: str


class ExternalRoute(NamedTuple):
    """A live server's route to the outside: numbers matching ``pattern`` go out through its
    ``provider``; the group tries them by ``priority`` (lower first), then join order."""

    pattern: str
    server_id: str
    server_name: str
    provider: str
    priority: int
    local: bool
    trunk_address: str
    join_revision: int
    position: int  # its place in its server's list
    up: bool = True


@dataclasses.dataclass(frozen=True, slots=True)
class Conflict:
    number: str
    winner: MemberInfo
    winner_record: NumberRecord
    losers: tuple[tuple[MemberInfo, NumberRecord], ...]
    own_number: bool


@dataclasses.dataclass(frozen=True, slots=True)
class Department:
    id: str
    name: str
    server_ids: tuple[str, ...]
    numbers: tuple[Route, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class NumbersChange:
    upserted: tuple[Route, ...]
    removed: tuple[str, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class MembersChange:
    upserted: tuple[MemberInfo, ...]
    left: tuple[str, ...]
    connected: bool


# Numbers handled between two yields of a stepped full read.
STEP = 1000

NumbersListener = Callable[[NumbersChange], None]
MembersListener = Callable[[MembersChange], None]
ExternalListener = Callable[[tuple[ExternalRoute, ...]], None]


class PlanView:
    """Members, raw claims and the merged routes of one server's view of the group."""

    def __init__(self, local: MemberInfo):
        self.local_id = local.server_id
        self.connected = False
        self.members: dict[str, MemberInfo] = {local.server_id: local}
        self.plans: dict[str, dict[str, NumberRecord]] = {local.server_id: {}}
        self.departments: dict[str, dict[str, str]] = {local.server_id: {}}
        self.routes: dict[str, Route] = {}
        # Each server's published external routes, and the group's merged list of them.
        self.external: dict[str, tuple[ExternalRecord, ...]] = {local.server_id: ()}
        self.external_routes: tuple[ExternalRoute, ...] = ()
        self._external_dirty = False
        self._external_listeners: set[ExternalListener] = set()
        self._patterns: dict[str, re.Pattern[str]] = {}
        # Goes up whenever ``routes`` changes: a cache of anything derived from routes keys on it.
        self.version = 0
        self._claims: dict[str, set[str]] = {}
        self._number_listeners: set[NumbersListener] = set()
        self._member_listeners: set[MembersListener] = set()
        self._depth = 0
        self._dirty_numbers: set[str] = set()
        self._dirty_members: set[str] = set()
        self._connected_changed = False

    # -- listeners -------------------------------------------------------------------------

    def on_numbers(self, listener: NumbersListener) -> Callable[[], None]:
        self._number_listeners.add(listener)
        return lambda: self._number_listeners.discard(listener)

    def on_members(self, listener: MembersListener) -> Callable[[], None]:
        self._member_listeners.add(listener)
        return lambda: self._member_listeners.discard(listener)

    def on_external(self, listener: ExternalListener) -> Callable[[], None]:
        """Hears the whole merged list of external routes whenever it changes."""
        self._external_listeners.add(listener)
        return lambda: self._external_listeners.discard(listener)

    # -- changes ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Groups changes: listeners hear about them once, when the outermost batch ends."""
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            if self._depth == 0:
                self._flush()

    def set_connected(self, connected: bool) -> None:
        with self.batch():
            if connected != self.connected:
                self.connected = connected
                self._connected_changed = True

    def set_member(self, info: MemberInfo) -> None:
        with self.batch():
            if self.members.get(info.server_id) == info:
                return
            self.members[info.server_id] = info
            self._dirty_members.add(info.server_id)
            self._external_dirty = True
            self._dirty_numbers.update(self.plans.get(info.server_id, ()))

    def remove_member(self, server_id: str) -> None:
        if server_id == self.local_id or server_id not in self.members:
            return
        with self.batch():
            del self.members[server_id]
            self._dirty_members.add(server_id)
            self._external_dirty = True
            self._dirty_numbers.update(self.plans.get(server_id, ()))

    def set_number(self, server_id: str, record: NumberRecord) -> None:
        with self.batch():
            self._put_number(self.plans.setdefault(server_id, {}), server_id, record)

    def remove_number(self, server_id: str, number: str) -> None:
        plan = self.plans.get(server_id)
        if plan is not None and number in plan:
            with self.batch():
                self._drop_number(plan, server_id, number)

    # The two below do the work without a batch of their own: a full resync calls them 100,000
    # times, and the event loop (which also keeps the lease alive) must not stall on it.

    def _put_number(self, plan: dict[str, NumberRecord], server_id: str, record: NumberRecord) -> None:
        if plan.get(record.number) == record:
            return
        plan[record.number] = record
        self._claims.setdefault(record.number, set()).add(server_id)
        self._dirty_numbers.add(record.number)

    def _drop_number(self, plan: dict[str, NumberRecord], server_id: str, number: str) -> None:
        del plan[number]
        holders = self._claims.get(number)
        if holders is not None:
            holders.discard(server_id)
            if not holders:
                del self._claims[number]
        self._dirty_numbers.add(number)

    def set_external(self, server_id: str, records: tuple[ExternalRecord, ...]) -> None:
        """All of one server's external routes at once (the local server's come from its config)."""
        with self.batch():
            if self.external.get(server_id, ()) != records:
                self.external[server_id] = tuple(sorted(records, key=lambda r: r.index))
                self._external_dirty = True

    def set_external_route(self, server_id: str, record: ExternalRecord) -> None:
        others = [r for r in self.external.get(server_id, ()) if r.index != record.index]
        self.set_external(server_id, (*others, record))

    def remove_external_route(self, server_id: str, index: int) -> None:
        records = self.external.get(server_id, ())
        if any(r.index == index for r in records):
            self.set_external(server_id, tuple(r for r in records if r.index != index))

    def set_department(self, server_id: str, department_id: str, name: str) -> None:
        self.departments.setdefault(server_id, {})[department_id] = name

    def remove_department(self, server_id: str, department_id: str) -> None:
        self.departments.get(server_id, {}).pop(department_id, None)

    def forget_remote(self) -> None:
        """Drops every other server: members, claims and departments (the local server stays)."""
        self.replace_remote([], {}, {}, {})

    def replace_remote(
        self,
        members: Iterable[MemberInfo],
        plans: dict[str, list[NumberRecord]],
        departments: dict[str, dict[str, str]],
        external: dict[str, list[ExternalRecord]] | None = None,
    ) -> None:
        """Makes the remote part of the view equal to a full read; listeners hear only the difference."""
        for _ in self.replace_remote_steps(members, plans, departments, external):
            pass

    def replace_remote_steps(
        self,
        members: Iterable[MemberInfo],
        plans: dict[str, list[NumberRecord]],
        departments: dict[str, dict[str, str]],
        external: dict[str, list[ExternalRecord]] | None = None,
        step: int = STEP,
    ) -> Generator[None, None, None]:
        """``replace_remote`` in slices of about ``step`` numbers: the caller may let other work run
        at each yield (a full read of a large group is 100,000 numbers). Changes made between two
        slices are kept and published after this one."""
        self._depth += 1
        numbers: set[str] = set()
        try:
            done = 0
            fresh = {m.server_id: m for m in members}
            local = fresh.pop(self.local_id, None)
            if local is not None:
                self.set_member(local)
            for server_id in [s for s in self.members if s != self.local_id and s not in fresh]:
                self.remove_member(server_id)
            for info in fresh.values():
                self.set_member(info)
            for server_id in [s for s in self.plans if s != self.local_id]:
                plan = self.plans[server_id]
                wanted = {r.number for r in plans.get(server_id, [])}
                for number in [n for n in plan if n not in wanted]:
                    self._drop_number(plan, server_id, number)
                    done += 1
                    if done % step == 0:
                        yield
                if not plan:
                    del self.plans[server_id]
            for server_id, records in plans.items():
                if server_id == self.local_id:
                    continue
                plan = self.plans.setdefault(server_id, {})
                for record in records:
                    self._put_number(plan, server_id, record)
                    done += 1
                    if done % step == 0:
                        yield
            for server_id in [s for s in self.departments if s != self.local_id]:
                del self.departments[server_id]
            for server_id, deps in departments.items():
                if server_id != self.local_id:
                    self.departments[server_id] = dict(deps)
            if external is not None:
                for server_id in [s for s in self.external if s != self.local_id and s not in external]:
                    del self.external[server_id]
                    self._external_dirty = True
                for server_id, published in external.items():
                    if server_id != self.local_id:
                        self.set_external(server_id, tuple(published))
            numbers, self._dirty_numbers = self._dirty_numbers, set()
            winners: list[tuple[str, Route | None]] = []
            for number in numbers:
                winners.append((number, self._winner(number)))
                if len(winners) % step == 0:
                    yield
        except GeneratorExit:
            # Stopped half way (its task was canceled): what it changed is published now.
            self._dirty_numbers |= numbers
            self._depth -= 1
            if self._depth == 0:
                self._flush()
            raise
        except BaseException:
            self._depth -= 1
            raise
        self._depth -= 1
        # Numbers touched by others during the slices are dirty again: publishing them after ours
        # leaves their freshest route last.
        self._publish(winners)
        if self._depth == 0:
            self._flush()

    # -- queries ---------------------------------------------------------------------------

    def resolve(self, number: str) -> Route | None:
        return self.routes.get(number)

    def external_for(self, number: str) -> list[ExternalRoute]:
        """The live external routes whose pattern matches ``number``, best first."""
        return [r for r in self.external_routes if self._pattern(r.pattern).fullmatch(number)]

    def _pattern(self, pattern: str) -> re.Pattern[str]:
        compiled = self._patterns.get(pattern)
        if compiled is None:
            if len(self._patterns) > 4096:
                self._patterns.clear()
            compiled = self._patterns[pattern] = re.compile(pattern)
        return compiled

    def live_members(self) -> list[MemberInfo]:
        """Earliest joined first; the local server's place follows its own join revision."""
        return sorted(self.members.values(), key=_join_order)

    def conflicts(self) -> list[Conflict]:
        result = []
        for number in sorted(self._claims):
            ranked = self._ranked_claims(number)
            if len(ranked) < 2:
                continue
            (winner, record), losers = ranked[0], ranked[1:]
            result.append(Conflict(number, winner, record, tuple(losers), winner.server_id == self.local_id))
        return result

    def merged_departments(self) -> list[Department]:
        owners: dict[str, list[MemberInfo]] = {}
        for server_id, deps in self.departments.items():
            member = self.members.get(server_id)
            if member is None:
                continue
            for dep_id in deps:
                owners.setdefault(dep_id, []).append(member)
        numbers: dict[str, list[Route]] = {}
        for route in self.routes.values():
            if route.department:
                numbers.setdefault(route.department, []).append(route)
        result = []
        for dep_id in sorted(set(owners) | set(numbers)):
            holders = sorted(owners.get(dep_id, []), key=_join_order)
            local_name = self.departments[self.local_id].get(dep_id)
            name = (
                local_name
                if local_name is not None
                else (self.departments[holders[0].server_id][dep_id] if holders else dep_id)
            )
            routes = tuple(sorted(numbers.get(dep_id, []), key=lambda r: r.number))
            result.append(Department(dep_id, name or dep_id, tuple(m.server_id for m in holders), routes))
        return result

    # -- internals -------------------------------------------------------------------------

    def _ranked_claims(self, number: str) -> list[tuple[MemberInfo, NumberRecord]]:
        ranked = []
        for server_id in self._claims.get(number, ()):
            member = self.members.get(server_id)
            if member is not None:
                ranked.append((member, self.plans[server_id][number]))
        ranked.sort(key=lambda claim: (claim[0].server_id != self.local_id, *_join_order(claim[0])))
        return ranked

    def _winner(self, number: str) -> Route | None:
        holders = self._claims.get(number)
        if not holders:
            return None
        if self.local_id in holders:
            best = self.members[self.local_id]
        elif len(holders) == 1:  # by far the most common case: no conflict
            best_or_none = self.members.get(next(iter(holders)))
            if best_or_none is None:
                return None
            best = best_or_none
        else:
            live = [self.members[s] for s in holders if s in self.members]
            if not live:
                return None
            best = min(live, key=_join_order)
        record = self.plans[best.server_id][number]
        return Route(
            number,
            best.server_id,
            best.name,
            best.server_id == self.local_id,
            record.name,
            record.department,
            record.kind,
            best.trunk_address,
        )

    def _flush(self) -> None:
        numbers, self._dirty_numbers = self._dirty_numbers, set()
        self._publish([(number, self._winner(number)) for number in numbers])

    def _publish(self, winners: list[tuple[str, Route | None]]) -> None:
        """Stores new winners and tells the listeners: numbers first, then members."""
        members, self._dirty_members = self._dirty_members, set()
        connected_changed, self._connected_changed = self._connected_changed, False
        upserted: list[Route] = []
        removed: list[str] = []
        for number, new in winners:
            old = self.routes.get(number)
            if new == old:
                continue
            if new is None:
                del self.routes[number]
                removed.append(number)
            else:
                self.routes[number] = new
                upserted.append(new)
        if upserted or removed:
            self.version += 1
            change = NumbersChange(tuple(upserted), tuple(removed))
            for listener in list(self._number_listeners):
                listener(change)
        if self._external_dirty:
            self._external_dirty = False
            merged = self._merge_external()
            if merged != self.external_routes:
                self.external_routes = merged
                for elistener in list(self._external_listeners):
                    elistener(merged)
        if members or connected_changed:
            joined = tuple(self.members[s] for s in sorted(members) if s in self.members)
            left = tuple(sorted(s for s in members if s not in self.members))
            mchange = MembersChange(joined, left, self.connected)
            for mlistener in list(self._member_listeners):
                mlistener(mchange)

    def _merge_external(self) -> tuple[ExternalRoute, ...]:
        routes = []
        for server_id, records in self.external.items():
            member = self.members.get(server_id)
            if member is None:
                continue  # only live members' routes count
            for record in records:
                routes.append(
                    ExternalRoute(
                        record.pattern,
                        server_id,
                        member.name,
                        record.provider,
                        record.priority,
                        server_id == self.local_id,
                        member.trunk_address,
                        member.join_revision,
                        record.index,
                        record.up,
                    )
                )
        # Routes whose provider is down go last: still there to try when nothing else is.
        routes.sort(key=lambda r: (not r.up, r.priority, r.join_revision or (1 << 62), r.server_id, r.position))
        return tuple(routes)


def _join_order(member: MemberInfo) -> tuple[int, str]:
    # A member not yet seen in etcd (revision 0) sorts last, not first.
    return (member.join_revision or (1 << 62), member.server_id)
