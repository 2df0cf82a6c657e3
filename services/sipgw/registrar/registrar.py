"""The REGISTER handler: digest authentication, then the binding rules (RFC 3261 section 10.3).

Pure logic: a parsed request and the address it came from go in, a ``Decision`` comes out (the
response, how long to wait before sending it, and who authenticated). The caller owns the socket.

    no Authorization                      401, WWW-Authenticate per algorithm (RFC 8760), qop="auth"
    our nonce, too old, digest right      401 stale=true: the phone retries without prompting
    anything else wrong with credentials  403 Forbidden, one answer for every cause, counted by Lockout
                                          against the account tried and the source
    account or source locked out          no answer at all (see Lockout for who is let through)
    authenticated                         the binding rules (steps 6-8): 200 / 400 / 423 / 500

The AOR is the To URI's user and must be the digest username: a phone registers its own number
only. The challenge offers the account's algorithms (``sip.accounts[].digest_algorithms``) where it
has its own, else the server's (``sip.digest_algorithms``, MD5 alone by default: many phones refuse
a challenge set with any algorithm they cannot do); an answer in an algorithm not offered fails.
A number without an account is offered one of the accounts' sets, always the same for the number
(a keyed hash picks it), in the proportions the accounts have them: an account's own set does not
mark it as existing. Nothing else in an answer, nor its timing, depends on whether a number exists.
The To host is not checked: bindings keep the packet's source address, and that is where requests
for the number go, never to a host named inside the message.
"""

from __future__ import annotations

import dataclasses
import email.utils
import hashlib
import hmac
import logging
import re
import secrets
from collections.abc import Sequence
from typing import Literal
from urllib.parse import unquote

from services.runtime.config_calls import AccountEntry
from services.runtime.logs import Throttled
from services.sipgw.auth import Challenge, DigestError, Lockout, NonceFactory, parse_credentials, verify_response
from services.sipgw.registrar.bindings import (
    DEFAULT_EXPIRES,
    MIN_EXPIRES,
    Bindings,
    IntervalTooBrief,
    OutOfOrder,
)
from services.sipgw.sip import ParseError, Request, Response, SipURI
from services.sipgw.sip.fields import parse_uint
from services.sipgw.sip.transport import response_to

_log = logging.getLogger(__name__)

# What a server offers unless its config says otherwise (sip.digest_algorithms).
CHALLENGE_ALGORITHMS = ("MD5",)
# RFC 7616 section 3.4: nc is 8 hex digits; shorter is tolerated, longer is refused.
_NONCE_COUNT = re.compile(r"[0-9A-Fa-f]{1,8}")
_MAX_EXPIRES_VALUE = 2**32 - 1

Address = tuple[str, int]
_Outcome = Literal["ok", "stale", "failed"]


@dataclasses.dataclass(frozen=True)
class Decision:
    """What to do with one REGISTER: send ``response`` (None: drop) after ``delay`` seconds.

    ``number`` is the authenticated number when the credentials were right, else None.
    """

    response: Response | None
    delay: float = 0.0
    number: str | None = None


class _BadRequest(ValueError):
    """The REGISTER breaks a registrar rule; the message is the reason phrase of the 400."""


class Registrar:
    """Authenticates REGISTER requests and keeps the bindings of the server's phones."""

    def __init__(
        self,
        accounts: Sequence[AccountEntry],
        realm: str,
        bindings: Bindings | None = None,
        nonces: NonceFactory | None = None,
        lockout: Lockout | None = None,
        algorithms: Sequence[str] = CHALLENGE_ALGORITHMS,
    ):
        self._algorithms = tuple(algorithms)
        # An account without a password can never authenticate: leaving it out makes it "unknown".
        self._passwords = {account.number: account.password.value for account in accounts if account.password}
        self._account_algorithms = {
            account.number: tuple(account.digest_algorithms) for account in accounts if account.digest_algorithms
        }
        # One entry per account: what a number without one is offered is drawn from these. The key
        # comes from the passwords, so a number keeps its set across restarts, as an account does.
        self._decoy_sets = [self._account_algorithms.get(n, self._algorithms) for n in sorted(self._passwords)]
        self._decoy_key = hashlib.sha256("\x00".join(["decoy", *sorted(self._passwords.values())]).encode()).digest()
        self._realm = realm
        self.bindings = bindings if bindings is not None else Bindings()
        self._nonces = nonces if nonces is not None else NonceFactory()
        self._lockout = lockout if lockout is not None else Lockout()
        # Unknown users are checked against this, so that their 403 costs the same hashing as a
        # wrong password and timing does not tell which numbers exist.
        self._decoy_password = secrets.token_hex(16)
        # Refusals anyone can cause (a password cracker): one line per account, reason and minute.
        self._refusals = Throttled(_log)

    def handle(self, request: Request, source: Address, transport: str = "UDP") -> Decision:
        """Answers one REGISTER that arrived from ``source`` (the packet's address) over
        ``transport`` ("UDP", "TCP" or "TLS": the phone is reached back the same way)."""
        ip = source[0]
        lines = request.headers.get_lines("Authorization")
        params = self._credentials_for_realm(lines)  # parsed once: for the lockout and the check
        try:
            claimed = _claimed(params, _aor_user(request))
        except ParseError:
            claimed = _claimed(params, None)
        verdict = self._lockout.check(claimed, ip)
        if verdict.action == "locked":
            self._refusals.info(f"dropped from {ip}", "REGISTER from %s dropped: %s locked out", ip, verdict.by)
            return Decision(None, 0.0, None)
        delay = verdict.delay
        if request.method != "REGISTER":
            response = self._reply(request, 405, "Method Not Allowed")
            response.headers.add("Allow", "REGISTER")
            return Decision(response, delay, None)
        try:
            aor = _aor_user(request)
            call_id, cseq = request.call_id, request.cseq.number
        except ParseError as error:
            return Decision(self._reply(request, 400, f"Bad Request ({error.reason})"), delay, None)

        if not lines:
            return Decision(self._challenge(request, aor, stale=False), delay, None)
        outcome, number = self._authenticate(params, aor, request.method)
        if outcome == "failed":
            self._lockout.failed(claimed, ip)
            return Decision(self._reply(request, 403, "Forbidden"), delay, None)
        if outcome == "stale":
            return Decision(self._challenge(request, aor, stale=True), delay, None)
        assert number is not None  # "ok" always names the number
        self._lockout.succeeded(number, ip)
        return Decision(self._bind(request, number, _source_text(source), call_id, cseq, transport), delay, number)

    def authorize(self, request: Request, source: Address) -> Decision:
        """A request from a phone that starts something (a call): who is it?

        ``Decision.number`` is the authenticated caller, who must be the From user; otherwise the
        response is a 407 challenge (RFC 3261 22.3), a 403 (the same for every cause), or None when
        the source is locked out. Failures count toward the same lockout as REGISTER's.
        """
        ip = source[0]
        try:
            caller = request.from_addr.uri.user if isinstance(request.from_addr.uri, SipURI) else None
        except ParseError:
            caller = None
        lines = request.headers.get_lines("Proxy-Authorization")
        params = self._credentials_for_realm(lines)
        claimed = _claimed(params, caller)
        verdict = self._lockout.check(claimed, ip)
        if verdict.action == "locked":
            return Decision(None, 0.0, None)
        delay = verdict.delay
        if not lines:
            return Decision(self._challenge(request, caller, stale=False, proxy=True), delay, None)
        outcome, number = self._authenticate(params, caller, request.method)
        if outcome == "failed":
            self._lockout.failed(claimed, ip)
            return Decision(self._reply(request, 403, "Forbidden"), delay, None)
        if outcome == "stale":
            return Decision(self._challenge(request, caller, stale=True, proxy=True), delay, None)
        assert number is not None  # "ok" always names the number
        self._lockout.succeeded(number, ip)
        return Decision(None, delay, number)

    # Authentication (RFC 3261 section 22.4, RFC 7616 section 3.4).

    def algorithms_for(self, number: str | None) -> tuple[str, ...]:
        """The digest algorithms offered to (and accepted from) ``number``'s phone."""
        if not self._account_algorithms:
            return self._algorithms
        # Drawn for every number, known or not, so that the time it takes does not tell them apart.
        mac = hmac.new(self._decoy_key, (number or "").encode("utf-8", "replace"), hashlib.sha256).digest()
        drawn = self._decoy_sets[int.from_bytes(mac[:8], "big") % len(self._decoy_sets)]
        own = self._account_algorithms.get(number or "")
        if own is not None:
            return own
        return self._algorithms if number in self._passwords else drawn

    def _challenge(self, request: Request, number: str | None, stale: bool, proxy: bool = False) -> Response:
        if proxy:
            response, header = self._reply(request, 407, "Proxy Authentication Required"), "Proxy-Authenticate"
        else:
            response, header = self._reply(request, 401, "Unauthorized"), "WWW-Authenticate"
        nonce = self._nonces.issue()  # one nonce for every challenge: the phone answers one of them
        for algorithm in self.algorithms_for(number):
            response.headers.add(header, Challenge(self._realm, nonce, algorithm, stale).header_value())
        return response

    def _authenticate(self, params: dict[str, str] | None, aor: str | None, method: str) -> tuple[_Outcome, str | None]:
        """Checks the credentials for our realm; every failure looks the same to the caller."""
        if params is None:
            self._refusals.info(
                f"{method} unreadable", "%s refused: no readable digest credentials for realm %s", method, self._realm
            )
            return "failed", None
        username = params.get("username", "")
        password = self._passwords.get(username)
        if password is None or username != aor:
            # Still hash, so that the answer takes as long as a wrong password does.
            password = self._decoy_password
            known = False
        else:
            known = True
        nonce = params.get("nonce", "")
        nonce_state = self._nonces.check(nonce)
        try:
            valid = verify_response(params, method, password)
        except DigestError as error:
            return self._refused(method, username, str(error))
        offered = params.get("algorithm", "MD5").upper() in self.algorithms_for(username)
        if not (known and valid and offered) or nonce_state == "bad":
            # Which of these it was stays in the log, never in the answer (no number enumeration).
            why = (
                "unknown user or other number" if not known
                else "wrong digest" if not valid
                else "an algorithm this account is not offered" if not offered
                else "nonce not ours"
            )  # fmt: skip
            return self._refused(method, username, why)
        if nonce_state == "stale":
            return "stale", None
        if not self._count_is_fresh(params, nonce):
            if "qop" not in params:
                # RFC 2069-style phones reuse a nonce on every refresh: ask for a new one instead of punishing.
                return "stale", None
            return self._refused(method, username, "replayed nonce count")
        return "ok", username

    def _refused(self, method: str, username: str, why: str) -> tuple[_Outcome, None]:
        """A failure; why stays in the log (once a minute per account and reason), never in the answer."""
        user = username[:40]
        self._refusals.info(f"{method} {user!r}: {why}", "%s from %r refused: %s", method, user, why)
        return "failed", None

    @property
    def lockout(self) -> Lockout:
        """The failure counts behind the lockout (what the gateway's API lists and unlocks)."""
        return self._lockout

    def _credentials_for_realm(self, lines: list[str]) -> dict[str, str] | None:
        """The first Digest Authorization for our realm; a phone may carry others for proxies on the way."""
        for line in lines:
            try:
                params = parse_credentials(line)
            except DigestError:
                continue
            if params.get("realm") == self._realm:
                return params
        return None

    def _count_is_fresh(self, params: dict[str, str], nonce: str) -> bool:
        """Replay check, after the digest is known right: a forger must not burn a phone's counts."""
        if "qop" not in params:
            return self._nonces.fresh_count(nonce, 1)  # without nc, a nonce is good for one request
        nc = params.get("nc", "")
        if not _NONCE_COUNT.fullmatch(nc):
            return False
        return self._nonces.fresh_count(nonce, int(nc, 16))

    # Bindings (RFC 3261 section 10.3, steps 6-8).

    def _bind(self, request: Request, number: str, source: str, call_id: str, cseq: int, transport: str) -> Response:
        try:
            wildcard, contacts = _requested_contacts(request)
        except _BadRequest as error:
            return self._reply(request, 400, f"Bad Request ({error})")
        except ParseError as error:
            return self._reply(request, 400, f"Bad Request ({error.reason})")
        if wildcard or contacts:
            try:
                self.bindings.update(number, contacts, source, call_id, cseq, wildcard=wildcard, transport=transport)
            except IntervalTooBrief:
                response = self._reply(request, 423, "Interval Too Brief")
                response.headers.add("Min-Expires", str(MIN_EXPIRES))
                return response
            except OutOfOrder:
                # RFC 3261 10.3 step 7 names 500 for a CSeq that is not above the binding's.
                return self._reply(request, 500, "Server Internal Error")
        response = self._reply(request, 200, "OK")
        now = self.bindings.now()
        for binding in self.bindings.lookup(number):
            response.headers.add("Contact", f"<{binding.contact}>;expires={binding.remaining(now)}")
        response.headers.add("Date", email.utils.formatdate(usegmt=True))
        return response

    def _reply(self, request: Request, status: int, reason: str) -> Response:
        """A final response with the request's core fields and a To tag of our own if it had none."""
        response = response_to(request.headers, status, reason)
        to = request.headers.get("To")
        if to is not None and not _has_to_tag(request):
            response.headers.set("To", f"{to};tag={secrets.token_hex(8)}")
        return response


def _claimed(params: dict[str, str] | None, user: str | None) -> str:
    """The account a request tries: the digest user name for our realm, else the number it names
    (the AOR, the caller). Known or not, every number is counted the same way."""
    username = params.get("username", "") if params is not None else ""
    return username or user or ""


def _has_to_tag(request: Request) -> bool:
    try:
        return request.to_addr.tag is not None
    except ParseError:
        return True  # an unreadable To is copied as it is rather than edited


def _aor_user(request: Request) -> str | None:
    """The number the To URI names (unescaped), or None if it names none."""
    uri = request.to_addr.uri
    if not isinstance(uri, SipURI) or uri.user is None:
        return None
    return unquote(uri.user)


def _requested_contacts(request: Request) -> tuple[bool, list[tuple[str, int]]]:
    """``(wildcard, [(contact URI, expires)])``; raises _BadRequest or ParseError."""
    raw = request.headers.get_all("Contact")
    default = _expires(request.headers.get("Expires"))
    if "*" in raw:
        # RFC 3261 10.3 step 6: "*" stands alone and only with Expires: 0.
        if len(raw) > 1:
            raise _BadRequest("Contact * with other contacts")
        if default != 0:
            raise _BadRequest("Contact * needs Expires: 0")
        return True, []
    contacts: list[tuple[str, int]] = []
    for contact in request.contacts:
        params = contact.params
        has_expires = any(name.lower() == "expires" for name in params)
        expires = _expires(contact.param("expires")) if has_expires else default
        contacts.append((str(contact.uri), expires))
    return False, contacts


def _expires(value: str | None) -> int:
    """An expires value in seconds; absent or malformed means the default (RFC 3261 20.19)."""
    if value is None:
        return DEFAULT_EXPIRES
    try:
        return parse_uint(value, _MAX_EXPIRES_VALUE, "expires")
    except ParseError:
        return DEFAULT_EXPIRES


def _source_text(source: Address) -> str:
    host, port = source
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
