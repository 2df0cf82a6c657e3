"""Everything pbxmesh asks of etcd, behind one small interface; the only module that imports etcd3aio.

``EtcdConnector`` does reads, writes, transactions and watches with bounded timeouts, logs in
again when an auth token stops working (etcd forgets tokens when it restarts) and reports every
failure as ``EtcdUnavailable``. ``LeaseSession`` owns one lease, as etcd's Go concurrency.Session
does: it keeps the lease alive, sets ``lost`` when it can no longer be sure the lease lives, and
offers ``close`` (revoke) and ``orphan`` (stop refreshing, let it expire).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple, TypeVar, cast

import etcd3aio
import grpc
import grpc.aio
from etcd3aio._protobuf import WatchStub  # the library watch resumes by itself; ours resyncs instead
from etcd3aio.connections import ConnectionManager
from etcd3aio.kv import KVService, prefix_range_end

from services.runtime.config import ConnectorSection

_log = logging.getLogger(__name__)

T = TypeVar("T")

CALL_TIMEOUT = 3.0
# etcd refuses transactions with more operations than --max-txn-ops (128 by default).
MAX_TXN_OPS = 128
# Keys per range request: about 1 MB of a plan, under gRPC's 4 MiB default message limit.
RANGE_PAGE = 10_000


class EtcdUnavailable(Exception):
    """etcd did not answer, or refused; the message names the operation, never a credential."""


class EtcdAuthFailed(EtcdUnavailable):
    """etcd rejected the configured username or password."""


class WatchLost(Exception):
    """A watch ended (canceled, compacted or broken): the watcher must read again and re-watch."""


class KeyValue(NamedTuple):  # a NamedTuple: a full read builds 100,000 of them
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int


class WatchEvent(NamedTuple):
    kind: Literal["put", "delete"]
    kv: KeyValue


def _kv(raw: Any) -> KeyValue:
    return KeyValue(raw.key.decode("utf-8", "replace"), raw.value, raw.create_revision, raw.mod_revision, raw.lease)


class EtcdConnector:
    """A connection to the etcd cluster named by the config's ``connector`` section."""

    def __init__(self, settings: ConnectorSection, *, call_timeout: float = CALL_TIMEOUT):
        self._settings = settings
        self._timeout = call_timeout
        tls: dict[str, bytes | None] = {}
        if settings.tls.ca_file:
            tls["ca_cert"] = Path(settings.tls.ca_file).read_bytes()
            if settings.tls.cert_file:
                tls["cert_chain"] = Path(settings.tls.cert_file).read_bytes()
                tls["cert_key"] = Path(settings.tls.key_file).read_bytes()
        self._tls = tls
        server_name = settings.tls.server_name or None
        self._client = etcd3aio.Etcd3Client(
            list(settings.endpoints), rpc_max_attempts=1, tls_server_name=server_name, **cast(dict[str, Any], tls)
        )
        self._watch_channel: grpc.aio.Channel | None = None
        self._token: str | None = None
        self._auth_lock = asyncio.Lock()

    async def connect(self) -> None:
        """Opens the channels and logs in if etcd answers; raises EtcdAuthFailed on bad credentials.

        An unreachable etcd is not an error here: every later call logs in first if it must.
        """
        await self._client.connect()
        manager = ConnectionManager(list(self._settings.endpoints))
        self._watch_channel = manager.get_channel(tls_server_name=self._settings.tls.server_name or None, **self._tls)
        if self._settings.username:
            try:
                await self._login()
            except EtcdAuthFailed:
                raise
            except EtcdUnavailable as exc:
                _log.warning("%s; will log in when etcd answers", exc)

    async def close(self) -> None:
        if self._watch_channel is not None:
            await self._watch_channel.close()
            self._watch_channel = None
        await self._client.close()

    async def _login(self) -> None:
        assert self._client.auth is not None
        token = self._token
        async with self._auth_lock:
            if self._token != token:  # another task logged in meanwhile
                return
            try:
                response = await self._client.auth.authenticate(
                    self._settings.username, self._settings.password.value, timeout=self._timeout
                )
            except etcd3aio.EtcdUnauthenticatedError:
                raise EtcdAuthFailed(f"etcd rejected the login of user {self._settings.username!r}") from None
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:  # etcd's answer to a wrong password
                    raise EtcdAuthFailed(f"etcd rejected the login of user {self._settings.username!r}") from None
                raise EtcdUnavailable(f"etcd login failed: {_describe(exc)}") from None
            except (etcd3aio.EtcdError, TimeoutError) as exc:
                raise EtcdUnavailable(f"etcd login failed: {_describe(exc)}") from None
            self._token = response.token
            self._client.set_token(response.token)

    async def _call(self, operation: str, call: Callable[[], Awaitable[T]]) -> T:
        if self._settings.username and self._token is None:
            await self._login()
        for attempt in (1, 2):
            try:
                return await call()
            except etcd3aio.EtcdUnauthenticatedError:
                if attempt == 2 or not self._settings.username:
                    raise EtcdUnavailable(f"etcd {operation}: not authenticated") from None
                await self._login()
            except (etcd3aio.EtcdError, grpc.aio.AioRpcError, TimeoutError, OSError) as exc:
                raise EtcdUnavailable(f"etcd {operation}: {_describe(exc)}") from None
        raise AssertionError("unreachable")

    @property
    def _kvs(self) -> KVService:
        assert self._client.kv is not None, "connect() first"
        return self._client.kv

    async def get_prefix(self, prefix: str) -> tuple[int, list[KeyValue]]:
        """Every key under ``prefix`` as of one revision, read in pages; returns (revision, kvs)."""
        end = prefix_range_end(prefix)
        start: bytes = prefix.encode()
        revision = 0
        result: list[KeyValue] = []
        while True:
            page_start, page_rev = start, revision
            response = await self._call(
                "range",
                lambda page_start=page_start, page_rev=page_rev: self._kvs.get(  # type: ignore[misc]
                    page_start, end, revision=page_rev, limit=RANGE_PAGE, timeout=self._timeout
                ),
            )
            if revision == 0:
                revision = response.header.revision
            result.extend(_kv(kv) for kv in response.kvs)
            if not response.more or not response.kvs:
                return revision, result
            start = bytes(response.kvs[-1].key) + b"\x00"

    async def create(self, key: str, value: bytes, lease: int) -> KeyValue | None:
        """Creates ``key`` only if it does not exist; returns None on success, else the existing key."""
        kvs = self._kvs
        response = await self._call(
            "create",
            lambda: kvs.txn(
                [kvs.txn_compare_create_revision(key, 0)],
                [kvs.txn_op_put(key, value, lease=lease)],
                [kvs.txn_op_get(key)],
                timeout=self._timeout,
            ),
        )
        if response.succeeded:
            return None
        found = response.responses[0].response_range.kvs
        return _kv(found[0]) if found else None

    async def put_many(self, items: Sequence[tuple[str, bytes]], lease: int) -> None:
        kvs = self._kvs
        for offset in range(0, len(items), MAX_TXN_OPS):
            ops = [kvs.txn_op_put(k, v, lease=lease) for k, v in items[offset : offset + MAX_TXN_OPS]]
            await self._call("put", lambda ops=ops: kvs.txn([], ops, timeout=self._timeout))  # type: ignore[misc]

    async def put(self, key: str, value: bytes, lease: int) -> None:
        await self._call("put", lambda: self._kvs.put(key, value, lease=lease, timeout=self._timeout))

    async def delete(self, key: str) -> None:
        await self._call("delete", lambda: self._kvs.delete(key, timeout=self._timeout))

    async def compact(self, revision: int) -> None:
        await self._call("compact", lambda: self._kvs.compact(revision, physical=True, timeout=self._timeout))

    async def grant(self, ttl: int) -> tuple[int, int]:
        """Grants a lease; returns (lease id, granted TTL)."""
        assert self._client.lease is not None
        lease = self._client.lease
        response = await self._call("lease grant", lambda: lease.grant(ttl, timeout=self._timeout))
        return response.ID, response.TTL

    async def revoke(self, lease_id: int) -> None:
        assert self._client.lease is not None
        lease = self._client.lease
        await self._call("lease revoke", lambda: lease.revoke(lease_id, timeout=self._timeout))

    async def keepalive(self, lease_id: int, timeout: float) -> int:
        """Refreshes a lease once; returns the TTL etcd now gives it (<= 0: the lease is gone)."""
        assert self._client.lease is not None
        lease = self._client.lease

        async def once() -> int:
            stream = lease.keep_alive(lease_id)
            try:
                async with asyncio.timeout(timeout):
                    async for response in stream:
                        return int(response.TTL)
                raise EtcdUnavailable("etcd lease keepalive: stream ended")
            finally:
                stream.cancel()

        return await self._call("lease keepalive", once)

    async def watch(self, prefix: str, start_revision: int) -> AsyncIterator[list[WatchEvent]]:
        """Yields batches of events under ``prefix`` from ``start_revision``; raises WatchLost at its end."""
        from etcd3aio._protobuf import WatchCreateRequest, WatchRequest

        assert self._watch_channel is not None, "connect() first"
        create = WatchCreateRequest(
            key=prefix.encode(), range_end=prefix_range_end(prefix), start_revision=start_revision
        )

        async def requests() -> AsyncIterator[Any]:
            yield WatchRequest(create_request=create)
            await asyncio.Event().wait()  # keep the request side open

        metadata = (("token", self._token),) if self._token else None
        stream = WatchStub(self._watch_channel).Watch(requests(), metadata=metadata)
        try:
            async for response in stream:
                if response.canceled or response.compact_revision:
                    reason = response.cancel_reason or f"compacted at {response.compact_revision}"
                    raise WatchLost(f"watch canceled: {reason}")
                if response.events:
                    yield [WatchEvent("delete" if ev.type == 1 else "put", _kv(ev.kv)) for ev in response.events]
            raise WatchLost("watch stream ended")
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNAUTHENTICATED and self._settings.username:
                with contextlib.suppress(EtcdUnavailable):
                    await self._login()
            raise WatchLost(f"watch failed: {exc.code().name}") from None
        finally:
            stream.cancel()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc.code().name
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or exc.__class__.__name__


class LeaseSession:
    """One lease and its keepalive loop.

    The lease is refreshed every TTL/3. ``lost`` is set as soon as etcd says the lease is gone, or
    when no refresh has succeeded for TTL minus a safety margin, counted from the moment the last
    successful refresh was sent: after that, etcd may already have expired the lease, so the owner
    must act as if it had.
    """

    MARGIN = 0.2

    def __init__(self, etcd: EtcdConnector, lease_id: int, ttl: int):
        self.etcd = etcd
        self.lease_id = lease_id
        self.ttl = ttl
        self.lost = asyncio.Event()
        self.keepalive_failures = 0
        self._deadline = time.monotonic() + ttl
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, etcd: EtcdConnector, ttl: int) -> LeaseSession:
        sent = time.monotonic()
        lease_id, granted = await etcd.grant(ttl)
        session = cls(etcd, lease_id, granted)
        session._deadline = sent + granted
        session._task = asyncio.create_task(session._keep_alive(), name=f"lease-{lease_id:x}")
        return session

    async def _keep_alive(self) -> None:
        interval = self.ttl / 3
        retry = min(0.5, interval)
        while True:
            remaining = self._deadline - time.monotonic()
            if remaining <= self.MARGIN:
                break
            sent = time.monotonic()
            try:
                ttl = await self.etcd.keepalive(self.lease_id, timeout=max(0.1, min(1.0, remaining - self.MARGIN)))
            except EtcdUnavailable as exc:
                self.keepalive_failures += 1
                _log.warning("lease %x: keepalive failed (%s)", self.lease_id, exc)
                await asyncio.sleep(max(0.0, min(retry, self._deadline - time.monotonic() - self.MARGIN)))
                continue
            if ttl <= 0:
                _log.warning("lease %x: etcd says it has expired", self.lease_id)
                break
            self._deadline = sent + ttl
            await asyncio.sleep(interval)
        self.lost.set()

    def orphan(self) -> None:
        """Stops refreshing; the lease expires on its own after its TTL."""
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def close(self) -> None:
        """Stops refreshing and revokes the lease: every key bound to it goes at once."""
        self.orphan()
        with contextlib.suppress(EtcdUnavailable):
            await self.etcd.revoke(self.lease_id)
