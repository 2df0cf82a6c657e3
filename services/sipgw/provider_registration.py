"""Registering the gateway with a provider's registrar (RFC 3261 section 10.2), for an ITSP trunk.

One ``Registration`` per provider account keeps a binding alive:

    REGISTER (no credentials at first)  -> 401/407: answered with digest (auth/digest_client.py)
                                        -> 2xx: bound for the granted time; refreshed at half of it
    a 401/407 to our own credentials    -> failed (wrong password): retried after a backoff
    403 and other 4xx/6xx                  failed, retried after a backoff
    423 Interval Too Brief                 asked again at once with the Min-Expires it names
    no answer (Timer F), 408, 5xx          the next address the locator gave, then a backoff

Every REGISTER carries the same Call-ID and From tag and a CSeq one higher than the last (RFC 3261
10.2.4). The last challenge's credentials go with each refresh (nc one higher, RFC 3261 22.3):
a refresh then costs one round trip, and a new challenge to them (the nonce aged) is answered
once more. The address that last answered 2xx is tried first, as the binding lives there.

``state`` follows the binding: "registered" as long as a granted time has not run out, even while
a refresh is being retried; "failed" once it has run out, or if there never was one. Delays are
the loop's clock; ``clock`` only stamps the ``expires_at`` reported to listeners.

The password never appears in a log line, a status or an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Literal, NamedTuple
from urllib.parse import quote

from services.runtime.backoff import Backoff
from services.sipgw.auth.digest import DigestError
from services.sipgw.auth.digest_client import ServerChallenge, answer_challenge, choose_challenge
from services.sipgw.sip import ParseError, Request, Response, SipURI, parse_uri
from services.sipgw.sip.dialog import new_tag
from services.sipgw.sip.fields import parse_uint
from services.sipgw.sip.headers import Headers
from services.sipgw.sip.transaction import TransactionLayer, new_branch
from services.sipgw.sip.transport import Address, Link, scheme, sent_by

_log = logging.getLogger(__name__)

State = Literal["unregistered", "registering", "registered", "failed"]
TargetSupplier = Callable[[], Awaitable[list[Address]]]
Listener = Callable[["RegistrationStatus"], None]

DEFAULT_EXPIRES = 300
RETRY_FIRST = 5.0  # seconds before the first retry of a failed round; doubles up to RETRY_MOST
RETRY_MOST = 300.0
STOP_WAIT = 2.0  # how long stop() waits for the answer to its Expires: 0
MAX_ANSWERS = 3  # challenges answered in one attempt (a stale nonce, then a fresh one): no loops
NO_ANSWER = 408  # last_status when nothing answered (RFC 3261 8.1.3.1: a timeout counts as 408)
_MAX_EXPIRES = 2**32 - 1
# Characters a SIP URI's user part takes as they are (RFC 3261 section 25.1, unreserved / user-unreserved).
_USER_SAFE = "-_.!~*'()&=+$,;?/"


@dataclasses.dataclass(frozen=True)
class RegistrationStatus:
    """A snapshot of one registration, for metrics and the API."""

    provider: str
    state: State = "unregistered"
    last_status: int | None = None  # the last final answer (408 for none)
    last_reason: str = ""
    expires_at: float | None = None  # when the provider's binding runs out (``clock`` time)
    target: Address | None = None  # the address tried last
    attempts: int = 0  # rounds since the last success, the current one included


class _Attempt(NamedTuple):
    granted: int | None  # seconds bound, None for a failure
    try_next: bool  # the failure is this address's: another may do better


class Registration:
    """Keeps one account registered with a provider; ``start()``, then ``stop()``."""

    def __init__(
        self,
        provider: str,
        targets: TargetSupplier,
        domain: str,
        username: str,
        password: str,
        transactions: TransactionLayer,
        link: Link,
        *,
        expires: int = DEFAULT_EXPIRES,
        contact_user: str | None = None,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.time,
        on_change: Listener | None = None,
        stop_wait: float = STOP_WAIT,
    ):
        if not 1 <= expires <= _MAX_EXPIRES:
            raise ValueError(f"provider {provider}: expires must be 1 to {_MAX_EXPIRES} seconds (got {expires})")
        self.provider = provider
        self.domain = domain
        self.username = username
        self._password = password
        self._targets = targets
        self._transactions = transactions
        self._link = link
        self._requested = expires
        self._backoff = backoff or Backoff(RETRY_FIRST, RETRY_MOST)
        self._clock = clock
        self._stop_wait = stop_wait
        self._listeners: list[Listener] = [on_change] if on_change is not None else []

        scheme_name = scheme(link)
        user = quote(username, safe=_USER_SAFE)
        self._uri_text = f"{scheme_name}:{domain}"
        self._aor = f"{scheme_name}:{user}@{domain}"
        host, port = link.local
        host = f"[{host}]" if ":" in host else host
        transport = "" if link.name in ("UDP", "TLS") else f";transport={link.name.lower()}"
        self._contact = f"{scheme_name}:{quote(contact_user or username, safe=_USER_SAFE)}@{host}:{port}{transport}"
        try:
            self._uri = parse_uri(self._uri_text)
            parse_uri(self._aor)
            self._contact_uri = parse_uri(self._contact)
        except ParseError as error:
            raise ValueError(f"provider {provider}: bad registrar address or user name ({error.reason})") from None

        self._call_id = f"{secrets.token_hex(12)}@{link.local[0]}"
        self._from_tag = new_tag()
        self._cseq = 0
        self._challenge: ServerChallenge | None = None
        self._nonce_count = 0
        self._preferred: Address | None = None  # where the binding lives
        self._bound_until = 0.0  # loop time the granted binding runs out
        self._status = RegistrationStatus(provider)
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<Registration {self.provider} {self.username}@{self.domain} {self._status.state}>"

    @property
    def status(self) -> RegistrationStatus:
        """The current snapshot."""
        return self._status

    def add_listener(self, listener: Listener) -> None:
        """Calls ``listener(status)`` after each change of the snapshot."""
        self._listeners.append(listener)

    def start(self) -> None:
        """Begins registering (and refreshing) in a task of its own."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name=f"register-{self.provider}")

    async def stop(self) -> None:
        """Stops refreshing and, if a binding is live, removes it (Expires: 0), waiting at most
        ``stop_wait`` seconds for the answer."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        address = self._preferred
        if self._bound() and address is not None:
            try:
                await asyncio.wait_for(self._unregister(address), self._stop_wait)
            except TimeoutError:
                _log.info("provider %s: no answer to the de-registration", self.provider)
        self._bound_until = 0.0
        self._update(state="unregistered", expires_at=None)

    # The loop.

    async def _run(self) -> None:
        while True:
            if not self._bound() and self._status.state == "unregistered":
                self._update(state="registering")
            self._update(attempts=self._status.attempts + 1)
            granted = await self._round()
            if granted is not None:
                self._backoff.reset()
                await self._wait(granted / 2)
            else:
                await self._wait(self._backoff.next())

    async def _wait(self, delay: float) -> None:
        """Sleeps ``delay`` seconds; if the binding runs out meanwhile, the state says so then."""
        left = self._bound_until - self._loop_time()
        if self._status.state == "registered" and left < delay:
            await asyncio.sleep(max(left, 0.0))
            delay -= max(left, 0.0)
            _log.warning("provider %s: registration ran out", self.provider)
            self._update(state="failed", expires_at=None)
        await asyncio.sleep(delay)

    async def _round(self) -> int | None:
        """One REGISTER round over the addresses the locator gives; the seconds granted, or None."""
        try:
            addresses = list(await self._targets())
        except Exception as error:  # the locator's failure (DNS) is this round's, not the loop's
            self._failed(None, f"no registrar address ({type(error).__name__})", None)
            return None
        if not addresses:
            self._failed(None, "no registrar address", None)
            return None
        if self._preferred in addresses:
            addresses.remove(self._preferred)
            addresses.insert(0, self._preferred)
        for address in addresses:
            attempt = await self._attempt(address)
            if not attempt.try_next:
                return attempt.granted
        return None

    async def _attempt(self, address: Address) -> _Attempt:
        """REGISTER at one address, answering challenges and 423; records the outcome."""
        expires = self._requested
        answered = 0
        fresh = False  # the credentials in use answer a challenge of this attempt
        while True:
            try:
                request, nonce = self._request(expires)
            except DigestError as error:
                self._failed(None, f"cannot answer the challenge ({error})", address)
                return _Attempt(None, False)
            self._update(target=address)
            response = await self._exchange(request, address)
            if response is None:
                self._failed(NO_ANSWER, "no answer", address)
                return _Attempt(None, True)
            status, reason = response.status, response.reason
            if 200 <= status < 300:
                granted = self._granted(response, expires)
                self._registered(address, granted, status, reason)
                return _Attempt(granted, False)
            if status in (401, 407):
                try:
                    challenge = choose_challenge(response)
                except DigestError as error:
                    self._failed(status, f"{reason} ({error})", address)
                    return _Attempt(None, False)
                if challenge.nonce == nonce or (fresh and not challenge.stale) or answered >= MAX_ANSWERS:
                    self._failed(status, f"{reason} (credentials refused)", address)
                    return _Attempt(None, False)
                self._challenge, self._nonce_count = challenge, 0
                answered, fresh = answered + 1, True
                continue
            if status == 423:
                minimum = _seconds(response.headers.get("Min-Expires"))
                if minimum is not None and minimum > expires:
                    # RFC 3261 10.2.8: ask again for at least that long, and keep asking for it.
                    expires = self._requested = minimum
                    continue
            self._failed(status, reason, address)
            return _Attempt(None, status >= 500 or status == 408)

    async def _unregister(self, address: Address) -> None:
        """REGISTER with Expires: 0, answering one fresh challenge (best-effort)."""
        for _ in range(2):
            request, nonce = self._request(0)
            response = await self._exchange(request, address)
            if response is None or response.status not in (401, 407):
                return
            try:
                challenge = choose_challenge(response)
            except DigestError:
                return
            if challenge.nonce == nonce:
                return
            self._challenge, self._nonce_count = challenge, 0

    # Messages.

    def _request(self, expires: int) -> tuple[Request, str | None]:
        """The next REGISTER, with credentials for the last challenge (and that challenge's nonce)."""
        self._cseq += 1
        headers = Headers()
        headers.add("Via", f"{sent_by(self._link)};branch={new_branch()};rport")
        headers.add("Max-Forwards", "70")
        headers.add("From", f"<{self._aor}>;tag={self._from_tag}")
        headers.add("To", f"<{self._aor}>")
        headers.add("Call-ID", self._call_id)
        headers.add("CSeq", f"{self._cseq} REGISTER")
        headers.add("Contact", f"<{self._contact}>")
        headers.add("Expires", str(expires))
        nonce = None
        if self._challenge is not None:
            self._nonce_count += 1
            value = answer_challenge(
                self._challenge.value, "REGISTER", self._uri_text, self.username, self._password, nc=self._nonce_count
            )
            headers.add(self._challenge.answer_header, value)
            nonce = self._challenge.nonce
        return Request("REGISTER", self._uri, headers), nonce

    async def _exchange(self, request: Request, address: Address) -> Response | None:
        """Sends ``request`` in a client transaction; its final response, or None on Timer F."""
        answer: asyncio.Future[Response | None] = asyncio.get_running_loop().create_future()

        def answered(response: Response) -> None:
            if response.status >= 200 and not answer.done():
                answer.set_result(response)

        def timed_out() -> None:
            if not answer.done():
                answer.set_result(None)

        self._transactions.send_request(request, self._link, address, answered, timed_out)
        return await answer

    def _granted(self, response: Response, requested: int) -> int:
        """The seconds the registrar granted: our Contact's expires, else Expires, else what we asked."""
        try:
            contacts = response.contacts
        except ParseError:
            contacts = []
        for contact in contacts:
            if _same_contact(contact.uri, self._contact_uri):
                granted = _seconds(contact.param("expires"))
                if granted is not None:
                    return max(granted, 1)
        granted = _seconds(response.headers.get("Expires"))
        return max(granted, 1) if granted is not None else requested

    # State.

    def _registered(self, address: Address, granted: int, status: int, reason: str) -> None:
        self._preferred = address
        self._bound_until = self._loop_time() + granted
        if self._status.state != "registered":
            _log.info("provider %s: registered at %s:%s for %d s", self.provider, address[0], address[1], granted)
        self._update(
            state="registered",
            last_status=status,
            last_reason=reason,
            expires_at=self._clock() + granted,
            target=address,
            attempts=0,
        )

    def _failed(self, status: int | None, reason: str, address: Address | None) -> None:
        state: State = "registered" if self._bound() else "failed"
        where = f" at {address[0]}:{address[1]}" if address is not None else ""
        _log.warning("provider %s: registration%s failed: %s %s", self.provider, where, status or "", reason)
        self._update(state=state, last_status=status, last_reason=reason, target=address or self._status.target)

    def _bound(self) -> bool:
        return self._loop_time() < self._bound_until

    def _update(self, **changes: object) -> None:
        status = dataclasses.replace(self._status, **changes)  # type: ignore[arg-type]
        if status == self._status:
            return
        self._status = status
        for listener in list(self._listeners):
            try:
                listener(status)
            except Exception:
                _log.exception("provider %s: a registration listener failed", self.provider)

    @staticmethod
    def _loop_time() -> float:
        return asyncio.get_running_loop().time()


def _seconds(value: str | None) -> int | None:
    """An expires / Min-Expires value, None if absent or malformed."""
    if value is None:
        return None
    try:
        return parse_uint(value, _MAX_EXPIRES, "expires")
    except ParseError:
        return None


def _same_contact(uri: object, ours: object) -> bool:
    """RFC 3261 10.3 compares contacts by URI; user, host and port are what a registrar keeps."""
    if not (isinstance(uri, SipURI) and isinstance(ours, SipURI)):
        return False
    return (uri.user, uri.host.lower(), uri.port) == (ours.user, ours.host.lower(), ours.port)
