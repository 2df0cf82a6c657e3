"""A telephone provider (ITSP) for trunk tests: a real Kamailio as the provider's edge.

Kamailio runs in the foreground with a config made from ``provider.cfg`` in a temporary folder of
its own (no system config, no root-only paths). It listens on two loopback UDP ports:

    ``sip``      the customer side: a gateway registers here (digest, 401) and calls out through
                 it (digest, 407); calls from the PSTN for the customer's numbers leave from here.
    ``carrier``  the PSTN side: calls out are relayed to ``pstn`` (a SIPp answering there) from
                 here, and calls arriving here go to ``gateway`` unchallenged, as a real provider
                 trusts its own network.

Accounts, the two peers' addresses and the "answer 503 to everything" switch live in Kamailio
htables set over JSON-RPC (a UNIX datagram socket), so a test changes them while it runs; a
restart puts them back. Registrations are read over the same RPC (``ul.lookup``); the calls the
provider relayed and the credentials it refused are read from its log lines.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from services.runtime.embedded_etcd import free_port

CONFIG_TEMPLATE = Path(__file__).with_name("provider.cfg")
REALM = "provider.test"
STOP_GRACE = 5.0  # seconds between SIGTERM and SIGKILL
CALL_MARK = "PROVIDER-CALL "
REFUSED_MARK = "PROVIDER-REFUSED "
IN_DIALOG_MARK = "PROVIDER-IN-DIALOG "


class ProviderError(RuntimeError):
    """Kamailio did not start, exited, or refused an RPC; the message ends with its log."""


@dataclass(frozen=True)
class ProviderCall:
    """One call the provider relayed: ``out`` from a customer to the PSTN, ``in`` the other way."""

    direction: str
    number: str  # the Request-URI user: the number called
    from_user: str
    from_name: str  # the From display name, unquoted
    asserted: str  # the P-Asserted-Identity URI, "" without one
    call_id: str
    account: str  # the account that authenticated the call ("" for calls from the PSTN)
    transport: str = "udp"  # what the call came to the provider over

    @property
    def asserted_user(self) -> str:
        """The user part of the P-Asserted-Identity URI ("" without one)."""
        return uri_user(self.asserted)


@dataclass(frozen=True)
class Refusal:
    """A request whose credentials the provider refused (wrong password or unknown account)."""

    method: str
    user: str
    call_id: str


@dataclass(frozen=True)
class Contact:
    """One registered contact of an account."""

    address: str
    expires: int
    user_agent: str


def uri_user(text: str) -> str:
    """The user part of the first sip: or sips: URI in ``text`` ("" when it has none)."""
    match = re.search(r"sips?:([^@;>\s]+)@", text)
    return match.group(1) if match else ""


def loopback_address(address: str, what: str) -> str:
    """``address`` ("127.0.0.1:PORT") checked: nothing is ever sent off this machine."""
    host, _, port = address.rpartition(":")
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{what} must be a loopback host:port such as 127.0.0.1:5080, not {address!r}")
    return address


def kamailio() -> str:
    path = shutil.which("kamailio") or next(
        (p for p in ("/usr/sbin/kamailio", "/sbin/kamailio") if os.access(p, os.X_OK)), None
    )
    assert path is not None, "kamailio is not installed: `make test` installs it (Debian package kamailio)"
    return path


class Provider:
    """A Kamailio provider edge; ``async with Provider(...) as provider`` or ``start``/``stop``.

    ``accounts`` maps user names to passwords; ``pstn`` and ``gateway`` are loopback host:port
    addresses (either may be set later). ``shm_mb``/``pkg_mb`` size its memory: for load, give
    256 and 16 (its allocator is tlsf; Debian's default spends most of its time in malloc).
    """

    def __init__(
        self,
        accounts: dict[str, str] | None = None,
        *,
        pstn: str = "",
        gateway: str = "",
        shm_mb: int = 64,
        pkg_mb: int = 8,
        host: str = "127.0.0.1",
    ):
        # Another loopback address than the phones' (127.0.0.2) lets a gateway tell the provider
        # from its phones by source address, as it does with a real provider.
        self.host = loopback_address(f"{host}:1", "host").rpartition(":")[0]
        self.accounts: dict[str, str] = {}
        for user, password in (accounts or {}).items():
            self._check_account(user, password)
            self.accounts[user] = password
        self.pstn = loopback_address(pstn, "pstn") if pstn else ""
        self.gateway = loopback_address(gateway, "gateway") if gateway else ""
        self.unavailable = False
        self.challenge_in_dialog = False
        self.shm_mb, self.pkg_mb = shm_mb, pkg_mb
        self.customer_port = free_port()
        self.carrier_port = free_port()
        self.lines: list[str] = []
        self.popen: subprocess.Popen[bytes] | None = None
        self._folder: Path | None = None
        self._reader: threading.Thread | None = None
        self._rpc_lock = asyncio.Lock()

    @property
    def sip(self) -> str:
        """The customer side, where a gateway registers and sends its calls."""
        return f"{self.host}:{self.customer_port}"

    @property
    def carrier(self) -> str:
        """The PSTN side, where calls from the PSTN arrive."""
        return f"{self.host}:{self.carrier_port}"

    @property
    def realm(self) -> str:
        return REALM

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        return "".join(self.lines[-lines:]) or "(nothing logged)\n"

    # --- process ---------------------------------------------------------------------------

    async def __aenter__(self) -> Provider:
        return await self.start()

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        await self.stop()

    async def start(self, timeout: float = 10.0) -> Provider:
        """Starts Kamailio (on the same ports after a stop), waits until it answers RPC, and
        sets the accounts, peers and the 503 switch."""
        self.spawn()
        try:
            await self._wait_ready(timeout)
            await self._apply_settings()
        except BaseException:
            await self.stop()
            raise
        return self

    def spawn(self) -> None:
        """Starts Kamailio with a fresh config and folder; waits for nothing."""
        if self.running:
            raise ProviderError(f"the provider runs already (pid {self.pid})")
        binary = kamailio()
        if self._folder is not None:  # the last run's, when it was killed
            shutil.rmtree(self._folder, ignore_errors=True)
        self._folder = Path(tempfile.mkdtemp(prefix="provider-"))  # short: a socket path has 108 bytes
        config = self._folder / "kamailio.cfg"
        config.write_text(self._config())
        (self._folder / "run").mkdir()
        argv = [
            binary, "-f", str(config), "-DD", "-E", "-Y", str(self._folder / "run"), "-w", str(self._folder),
            "-x", "tlsf", "-X", "tlsf", "-m", str(self.shm_mb), "-M", str(self.pkg_mb),
        ]  # fmt: skip
        # Its own process group: Kamailio forks workers, and kill() must end them all.
        self.popen = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            cwd=self._folder, start_new_session=True,
        )  # fmt: skip
        assert self.popen.stderr is not None
        self._reader = threading.Thread(target=self._read, args=(self.popen.stderr,), name="provider log", daemon=True)
        self._reader.start()

    def _config(self) -> str:
        fill = {
            "@CUSTOMER@": self.sip,
            "@CARRIER@": self.carrier,
            "@CARRIER_PORT@": str(self.carrier_port),
            "@RPC_SOCKET@": str(self._rpc_path),
            "@REALM@": REALM,
        }
        text = CONFIG_TEMPLATE.read_text()
        for name, value in fill.items():
            text = text.replace(name, value)
        return text

    @property
    def _rpc_path(self) -> Path:
        assert self._folder is not None, "the provider was not started"
        return self._folder / "rpc.sock"

    def _read(self, stream: IO[bytes]) -> None:
        for raw in stream:
            self.lines.append(raw.decode(errors="replace"))
        stream.close()

    async def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if not self.running:
                await self._drain_log()
                code = self.popen.returncode if self.popen else None
                raise ProviderError(f"kamailio exited with {code}:\n{self.log_tail()}")
            with contextlib.suppress(OSError, TimeoutError, ProviderError):
                await self.rpc("core.version", timeout=0.5)
                return
            if time.monotonic() > deadline:
                raise ProviderError(f"kamailio did not answer RPC within {timeout} s:\n{self.log_tail()}")
            await asyncio.sleep(0.05)

    async def _apply_settings(self) -> None:
        for user, password in self.accounts.items():
            await self.rpc("htable.sets", "accounts", user, password)
        for name in ("pstn", "gateway"):
            if value := getattr(self, name):
                await self.rpc("htable.sets", "conf", name, value)
        await self.rpc("htable.seti", "conf", "unavailable", int(self.unavailable))
        await self.rpc("htable.seti", "conf", "challenge_in_dialog", int(self.challenge_in_dialog))

    @property
    def pid(self) -> int:
        assert self.popen is not None, "the provider was not started"
        return self.popen.pid

    def kill(self) -> None:
        """SIGKILL to Kamailio and its workers at once: a provider that drops dead."""
        if self.popen is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)

    async def stop(self, grace: float = STOP_GRACE) -> int | None:
        """SIGTERM, up to ``grace`` seconds, then SIGKILL to the whole group; returns the exit code.
        Its temporary folder goes; its log lines stay (``lines``)."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.to_thread(self.popen.wait, grace)
        except subprocess.TimeoutExpired:
            code = None
        self.kill()  # workers that outlive the main process would keep its ports
        if code is None:
            code = await asyncio.to_thread(self.popen.wait, 5)
        await self._drain_log()
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None
        return code

    async def _drain_log(self) -> None:
        if self._reader is not None:
            await asyncio.to_thread(self._reader.join, 2)

    # --- RPC and settings --------------------------------------------------------------------

    async def rpc(self, method: str, *params: str | int, timeout: float = 5.0) -> Any:
        """One JSON-RPC call; returns its result, raises ProviderError on an error answer."""
        if not self.running:
            raise ProviderError(f"{method}: the provider is not running")
        async with self._rpc_lock:
            return await asyncio.to_thread(self._rpc_blocking, method, list(params), timeout)

    def _rpc_blocking(self, method: str, params: list[str | int], timeout: float) -> Any:
        client = self._rpc_path.with_name(f"client-{os.getpid()}-{threading.get_ident()}.sock")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            with contextlib.suppress(FileNotFoundError):
                client.unlink()
            sock.bind(str(client))
            try:
                sock.settimeout(timeout)
                request = {"jsonrpc": "2.0", "method": method, "params": params, "id": 1}
                sock.sendto(json.dumps(request).encode(), str(self._rpc_path))
                answer = json.loads(sock.recv(1 << 20))
            finally:
                client.unlink(missing_ok=True)
        if "error" in answer:
            error = answer["error"]
            raise ProviderError(f"{method}: {error.get('code')} {error.get('message')}")
        return answer.get("result")

    @staticmethod
    def _check_account(user: str, password: str) -> None:
        if not user or not user.isprintable() or any(c in user for c in " @:;<>\"'"):
            raise ValueError(f"account name {user!r}: printable, without spaces or any of @:;<>\"'")
        if not password or not password.isprintable():
            raise ValueError(f"the password of {user!r} must be printable and not empty")

    async def set_account(self, user: str, password: str) -> None:
        """Adds an account or changes its password."""
        self._check_account(user, password)
        self.accounts[user] = password
        if self.running:
            await self.rpc("htable.sets", "accounts", user, password)

    async def remove_account(self, user: str) -> None:
        self.accounts.pop(user, None)
        if self.running:
            await self.rpc("htable.delete", "accounts", user)

    async def set_pstn(self, address: str) -> None:
        """Where calls out go: the PSTN peer's loopback host:port."""
        self.pstn = loopback_address(address, "pstn")
        if self.running:
            await self.rpc("htable.sets", "conf", "pstn", address)

    async def set_gateway(self, address: str) -> None:
        """Where calls from the PSTN go: the customer's gateway's loopback host:port."""
        self.gateway = loopback_address(address, "gateway")
        if self.running:
            await self.rpc("htable.sets", "conf", "gateway", address)

    async def set_unavailable(self, unavailable: bool = True) -> None:
        """With True, every request is answered 503 (with Retry-After) until set back."""
        self.unavailable = unavailable
        if self.running:
            await self.rpc("htable.seti", "conf", "unavailable", int(unavailable))

    async def set_challenge_in_dialog(self, challenge: bool = True) -> None:
        """With True, a customer's BYE and re-INVITE in a call must authenticate too (407)."""
        self.challenge_in_dialog = challenge
        if self.running:
            await self.rpc("htable.seti", "conf", "challenge_in_dialog", int(challenge))

    # --- what the provider saw ---------------------------------------------------------------

    async def contacts(self, user: str) -> list[Contact]:
        """The account's registered contacts that have not expired."""
        try:
            result = await self.rpc("ul.lookup", "location", user)
        except ProviderError as exc:
            if "not found" in str(exc):
                return []
            raise
        contacts = []
        for entry in (result or {}).get("Contacts", []):
            contact = entry.get("Contact", {})
            expires = contact.get("Expires")
            if isinstance(expires, int) and expires > 0:
                contacts.append(Contact(contact.get("Address", ""), expires, contact.get("User-Agent", "")))
        return contacts

    async def registered(self, user: str) -> bool:
        """Whether the account has a live registration."""
        return bool(await self.contacts(user))

    def calls(self) -> list[ProviderCall]:
        """The calls it relayed so far (over restarts too), oldest first."""
        calls = []
        for words in self._marked(CALL_MARK):
            if len(words) == 8:
                number, from_user, from_name, asserted, call_id, account, transport = map(_decode, words[1:])
                calls.append(
                    ProviderCall(
                        words[0], number, from_user, _unquote(from_name), asserted, call_id, account, transport
                    )
                )
        return calls

    def refusals(self) -> list[Refusal]:
        """The requests whose credentials it refused so far, oldest first."""
        return [Refusal(*map(_decode, w)) for w in self._marked(REFUSED_MARK) if len(w) == 3]

    def in_dialog(self) -> list[tuple[str, str]]:
        """The requests in a call that authenticated when challenged (method, account), oldest first."""
        return [(_decode(w[0]), _decode(w[1])) for w in self._marked(IN_DIALOG_MARK) if len(w) == 3]

    def _marked(self, mark: str) -> list[list[str]]:
        """The words after ``mark`` on each line that has it (an empty value is an empty word)."""
        return [line.partition(mark)[2].rstrip("\r\n").split(" ") for line in list(self.lines) if mark in line]


def _decode(word: str) -> str:
    return base64.b64decode(word).decode(errors="replace") if word else ""


def _unquote(name: str) -> str:
    """A display name without its quotes (RFC 3261 quoted-string)."""
    if len(name) >= 2 and name[0] == name[-1] == '"':
        return re.sub(r"\\(.)", r"\1", name[1:-1])
    return name
