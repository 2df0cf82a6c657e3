"""Keeps one server in its group through etcd: join, publish, follow the others, survive faults.

Life of a server's link to the group:

    join      grant a lease; create the member key only if no live member has this id
    publish   own numbers and departments, bound to the same lease
    follow    read the whole group prefix, then watch from the next revision; a canceled,
              compacted or broken watch leads to a full read again (never a hang)
    cut off   the lease session says it can no longer vouch for the lease: drop every other
              server, keep serving our own numbers, report not connected; then join again with
              a new lease (so we now join last), publish and read everything again
    leave     revoke the lease: every key goes at once and peers see it through their watch
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Awaitable, Callable

from services.registry.plan import PlanView
from services.registry.records import (
    ExternalRecord,
    KeyLayout,
    MemberInfo,
    NumberRecord,
    decode_department,
    decode_member,
    decode_number,
    decode_numbers,
    decode_route,
    encode_department,
    encode_member,
    encode_number,
    encode_route,
)
from services.runtime.backoff import Backoff
from services.runtime.config import NUMBER_RE
from services.runtime.etcd import (
    EtcdAuthFailed,
    EtcdConnector,
    EtcdUnavailable,
    KeyValue,
    LeaseSession,
    WatchEvent,
    WatchLost,
)

_log = logging.getLogger(__name__)

RETRY_MIN = 0.1
RETRY_MAX = 2.0
# Records decoded between two yields to the event loop during a full read (a few ms of work).
DECODE_SLICE = 2000
PARSE_SLICE = 5000


class DuplicateServerId(Exception):
    """A live member of the group already has this server's id."""

    def __init__(self, server_id: str, holder_name: str):
        super().__init__(f"server id {server_id!r} is already used by a live member of the group ({holder_name!r})")
        self.server_id = server_id
        self.holder_name = holder_name


class GroupLink:
    """This server's membership, its published plan, and the feed of everyone else's."""

    def __init__(
        self,
        etcd: EtcdConnector,
        layout: KeyLayout,
        view: PlanView,
        local: MemberInfo,
        lease_ttl: int,
        on_connected: Callable[[bool], Awaitable[None]] | None = None,
    ):
        self.etcd = etcd
        self.layout = layout
        self.view = view
        self.local = local
        self.lease_ttl = lease_ttl
        self._on_connected = on_connected
        self._session: LeaseSession | None = None
        self._past_keepalive_failures = 0  # of the leases before the current one
        self._previous_lease = 0
        self._task: asyncio.Task[None] | None = None
        self._publish_lock = asyncio.Lock()
        self._pending_puts: set[str] = set()
        self._pending_deletes: set[str] = set()
        self._retry_task: asyncio.Task[None] | None = None
        # Set if the link stops for a reason it cannot handle: the process should exit and be restarted.
        self.failed = asyncio.Event()

    @property
    def keepalive_failures(self) -> int:
        """Lease keepalives that failed since start, over every lease this server has held."""
        current = self._session.keepalive_failures if self._session is not None else 0
        return self._past_keepalive_failures + current

    async def start(self) -> None:
        """Joins now if etcd answers (a duplicate id is fatal here), then keeps the link up."""
        revision = 0
        try:
            await self._join()
            assert self._session is not None
            # Read the group before serving, so that the first answers already hold the whole plan.
            revision = await self._resync(self._session)
            await self._set_connected(True)
        except EtcdAuthFailed:
            raise
        except EtcdUnavailable as exc:
            _log.warning("group not reachable at start (%s): serving own numbers only", exc)
        self._task = asyncio.create_task(self._run(revision), name="group-link")
        self._task.add_done_callback(self._on_run_done)

    def _on_run_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            _log.error("group link stopped on an unexpected error", exc_info=task.exception())
            self.failed.set()

    async def leave(self) -> None:
        """Stops following and revokes the lease, so peers drop this server at once."""
        for task in (self._task, self._retry_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- own plan ---------------------------------------------------------------------------

    async def upsert_number(self, record: NumberRecord) -> None:
        self.view.set_number(self.local.server_id, record)
        self._pending_deletes.discard(record.number)
        self._pending_puts.add(record.number)
        await self._flush_pending()

    async def remove_number(self, number: str) -> None:
        self.view.remove_number(self.local.server_id, number)
        self._pending_puts.discard(number)
        self._pending_deletes.add(number)
        await self._flush_pending()

    async def set_provider_state(self, provider: str, up: bool) -> None:
        """Marks this server's routes through ``provider`` live or not, and publishes them."""
        sid = self.local.server_id
        records = self.view.external[sid]
        changed = tuple(dataclasses.replace(r, up=up) if r.provider == provider else r for r in records)
        if changed == records:
            return
        self.view.set_external(sid, changed)
        _log.info("provider %s %s: its routes are published so", provider, "is up" if up else "is down")
        async with self._publish_lock:
            session = self._session
            if session is None:
                return  # published with everything else when the server joins again
            items = [(self.layout.route(sid, r.index), encode_route(r)) for r in changed if r.provider == provider]
            try:
                await self.etcd.put_many(items, session.lease_id)
            except EtcdUnavailable as exc:
                _log.warning("publishing provider %s's state failed: %s", provider, exc)

    async def _flush_pending(self) -> None:
        async with self._publish_lock:
            session = self._session
            if session is None or not (self._pending_puts or self._pending_deletes):
                return
            puts, deletes = set(self._pending_puts), set(self._pending_deletes)
            own = self.view.plans[self.local.server_id]
            try:
                items = [(self.layout.number(self.local.server_id, n), encode_number(own[n])) for n in puts if n in own]
                await self.etcd.put_many(items, session.lease_id)
                self._pending_puts -= puts
                for number in deletes:
                    await self.etcd.delete(self.layout.number(self.local.server_id, number))
                    self._pending_deletes.discard(number)
            except EtcdUnavailable as exc:
                _log.warning("publishing own numbers failed, will retry: %s", exc)
                if self._retry_task is None or self._retry_task.done():
                    self._retry_task = asyncio.create_task(self._retry_pending(session))

    async def _retry_pending(self, session: LeaseSession) -> None:
        backoff = Backoff(RETRY_MIN, RETRY_MAX)
        while (self._pending_puts or self._pending_deletes) and self._session is session:
            await backoff.sleep()
            await self._flush_pending()

    # -- join and follow ---------------------------------------------------------------------

    async def _join(self) -> None:
        session = await LeaseSession.open(self.etcd, self.lease_ttl)
        try:
            await self._create_member_key(session)
            await self._publish_all(session)
        except BaseException:
            await session.close()
            raise
        self._previous_lease = session.lease_id
        if self._session is not None:
            self._past_keepalive_failures += self._session.keepalive_failures
        self._session = session
        _log.info("joined group as %s with lease %x", self.local.server_id, session.lease_id)

    async def _create_member_key(self, session: LeaseSession) -> None:
        key = self.layout.member(self.local.server_id)
        for _ in range(3):
            existing = await self.etcd.create(key, encode_member(self.local), session.lease_id)
            if existing is None:
                return
            if self._previous_lease and existing.lease == self._previous_lease:
                # Our own record from before a cut-off, still alive in etcd: take it down first.
                await self.etcd.revoke(existing.lease)
                continue
            holder = decode_member(self.local.server_id, existing.value, existing.create_revision)
            raise DuplicateServerId(self.local.server_id, holder.name if holder else "?")
        raise EtcdUnavailable("member key kept coming back")

    async def _publish_all(self, session: LeaseSession) -> None:
        async with self._publish_lock:
            sid = self.local.server_id
            items = [
                (self.layout.department(sid, d), encode_department(n)) for d, n in self.view.departments[sid].items()
            ]
            items += [(self.layout.number(sid, n), encode_number(r)) for n, r in self.view.plans[sid].items()]
            items += [(self.layout.route(sid, r.index), encode_route(r)) for r in self.view.external[sid]]
            await self.etcd.put_many(items, session.lease_id)
            self._pending_puts.clear()
            self._pending_deletes.clear()

    async def _run(self, revision: int) -> None:
        backoff = Backoff(RETRY_MIN, RETRY_MAX)
        while True:
            if self._session is None:
                try:
                    await self._join()
                except DuplicateServerId as exc:
                    _log.error("cannot rejoin: %s", exc)
                    await asyncio.sleep(RETRY_MAX)
                    continue
                except EtcdUnavailable as exc:
                    _log.debug("rejoin failed: %s", exc)
                    await backoff.sleep()
                    continue
            backoff.reset()
            session = self._session
            assert session is not None
            follow = asyncio.create_task(self._follow(session, revision), name="group-follow")
            revision = 0
            lost = asyncio.create_task(session.lost.wait())
            try:
                await asyncio.wait([follow, lost], return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (follow, lost):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
            if follow.done() and not follow.cancelled() and follow.exception() is not None:
                _log.error("following the group failed: joining again", exc_info=follow.exception())
            session.orphan()
            self._session = None
            _log.warning("cut off from the group (lease %x lost): serving own numbers only", session.lease_id)
            self.view.forget_remote()
            await self._set_connected(False)

    async def _follow(self, session: LeaseSession, revision: int) -> None:
        """Watches from ``revision`` (0: read everything first), reading again whenever the watch ends."""
        backoff = Backoff(RETRY_MIN, RETRY_MAX)
        while True:
            try:
                if not revision:
                    revision = await self._resync(session)
                await self._set_connected(True)
                backoff.reset()
                start, revision = revision + 1, 0
                async for events in self.etcd.watch(self.layout.prefix, start):
                    self._apply(events, session)
            except (WatchLost, EtcdUnavailable) as exc:
                revision = 0
                _log.info("group feed interrupted (%s): reading the group again", exc)
                await backoff.sleep()

    async def _set_connected(self, connected: bool) -> None:
        if self.view.connected == connected:
            return
        self.view.set_connected(connected)
        if self._on_connected is not None:
            await self._on_connected(connected)

    async def _resync(self, session: LeaseSession) -> int:
        revision, kvs = await self.etcd.get_prefix(self.layout.prefix)
        members: list[MemberInfo] = []
        plans: dict[str, list[NumberRecord]] = {}
        departments: dict[str, dict[str, str]] = {}
        external: dict[str, list[ExternalRecord]] = {}
        numbers: list[tuple[str, str, bytes]] = []  # server id, number, value: decoded in slices
        for index, kv in enumerate(kvs):
            if index % PARSE_SLICE == PARSE_SLICE - 1:
                await asyncio.sleep(0)
            parsed = self.layout.parse(kv.key)
            if parsed is None:
                continue
            if parsed.kind == "number":
                if NUMBER_RE.fullmatch(parsed.item):
                    numbers.append((parsed.server_id, parsed.item, kv.value))
            elif parsed.kind == "member":
                info = self._member_from(parsed.server_id, kv, session)
                if info is not None:
                    members.append(info)
            elif parsed.kind == "route":
                route = decode_route(parsed.item, kv.value)
                if route is not None:
                    external.setdefault(parsed.server_id, []).append(route)
            else:
                name = decode_department(kv.value)
                if name is not None:
                    departments.setdefault(parsed.server_id, {})[parsed.item] = name
        await asyncio.sleep(0)
        for start in range(0, len(numbers), DECODE_SLICE):
            chunk = numbers[start : start + DECODE_SLICE]
            records = decode_numbers([(number, value) for _, number, value in chunk])
            for (server_id, _, _), record in zip(chunk, records, strict=True):
                if record is not None:
                    plans.setdefault(server_id, []).append(record)
            await asyncio.sleep(0)  # let keepalives and RPCs through during a large read
        for _ in self.view.replace_remote_steps(members, plans, departments, external):
            await asyncio.sleep(0)
        return revision

    def _member_from(self, server_id: str, kv: KeyValue, session: LeaseSession) -> MemberInfo | None:
        if server_id == self.local.server_id and kv.lease != session.lease_id:
            return None
        return decode_member(server_id, kv.value, kv.create_revision)

    def _apply(self, events: list[WatchEvent], session: LeaseSession) -> None:
        local_id = self.local.server_id
        with self.view.batch():
            for event in events:
                parsed = self.layout.parse(event.kv.key)
                if parsed is None:
                    continue
                sid = parsed.server_id
                if parsed.kind == "member":
                    if sid == local_id and event.kind == "delete":
                        _log.warning("own member key was deleted: joining again")
                        session.lost.set()
                    elif event.kind == "delete":
                        self.view.remove_member(sid)
                    else:
                        info = self._member_from(sid, event.kv, session)
                        if info is not None:
                            self.view.set_member(info)
                elif sid == local_id:
                    continue  # our own plan is known here already, and better than its echo
                elif parsed.kind == "number":
                    if event.kind == "delete":
                        self.view.remove_number(sid, parsed.item)
                    else:
                        record = _number_from(parsed.item, event.kv.value)
                        if record is not None:
                            self.view.set_number(sid, record)
                elif parsed.kind == "route":
                    if event.kind == "delete":
                        self.view.remove_external_route(sid, int(parsed.item))
                    else:
                        route = decode_route(parsed.item, event.kv.value)
                        if route is not None:
                            self.view.set_external_route(sid, route)
                elif event.kind == "delete":
                    self.view.remove_department(sid, parsed.item)
                else:
                    name = decode_department(event.kv.value)
                    if name is not None:
                        self.view.set_department(sid, parsed.item, name)


def _number_from(number: str, value: bytes) -> NumberRecord | None:
    if not NUMBER_RE.fullmatch(number):
        return None
    return decode_number(number, value)
