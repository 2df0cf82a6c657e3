"""The PSTN behind a test provider, played by SIPp: an ``Answerer`` that takes calls and notes
each one, and callers on either side of the provider.

An ``Answerer`` runs tests/integration/sipp/pstn_uas.xml: it answers every INVITE with SDP, waits
for the BYE, and logs one line per INVITE (Request-URI user, From, P-Asserted-Identity, Call-ID,
the offer's audio formats) that ``calls()`` reads. The same answerer stands in for a gateway when a test has none.
"""

from __future__ import annotations

import asyncio
import subprocess
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from services.runtime.embedded_etcd import free_port
from tests.harness.provider import uri_user
from tests.harness.sipp import SIPP_DIR, phone_ready, run, spawn_sipp, stop_phones, tool


@dataclass(frozen=True)
class PstnCall:
    """One INVITE as the answerer received it."""

    number: str  # the Request-URI user
    from_header: str  # the From header's value
    asserted: str  # the P-Asserted-Identity header's value, "" without one
    call_id: str
    formats: str = ""  # the payload types of the offer's audio stream, "0 8 101"

    @property
    def caller(self) -> str:
        """The From URI's user."""
        return uri_user(self.from_header)

    @property
    def asserted_user(self) -> str:
        return uri_user(self.asserted)


class Answerer:
    """A SIPp answering calls on 127.0.0.1:``port`` until stopped, noting them in a file in
    ``folder``; ``async with Answerer(tmp_path)``."""

    def __init__(self, folder: Path, port: int = 0):
        self.port = port or free_port()
        self.log_file = Path(folder) / f"answerer-{self.port}.log"
        self.process: asyncio.subprocess.Process | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def __aenter__(self) -> Answerer:
        return await self.start()

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        await self.stop()

    async def start(self) -> Answerer:
        """Starts SIPp and returns once it holds its UDP socket."""
        self.process = await spawn_sipp(
            tool("sipp"), "-sf", str(SIPP_DIR / "pstn_uas.xml"), "-i", "127.0.0.1", "-p", str(self.port),
            "-nostdin", "-trace_logs", "-log_file", str(self.log_file),
        )  # fmt: skip
        try:
            await phone_ready(self.process, self.port)
        except BaseException:
            await self.stop()
            raise
        return self

    async def stop(self) -> None:
        if self.process is not None:
            await stop_phones(self.process)

    def calls(self) -> list[PstnCall]:
        """The INVITEs it has answered so far, oldest first."""
        return [PstnCall(*fields) for fields in self._logged("CALL|") if len(fields) == 5]

    def hung_up(self) -> list[str]:
        """The Call-IDs of the calls whose BYE it took, oldest first."""
        return [fields[0] for fields in self._logged("BYE|") if len(fields) == 1]

    def _logged(self, mark: str) -> list[list[str]]:
        """The fields after ``mark`` on each line of its log that has it."""
        try:
            text = self.log_file.read_text("utf-8", "replace")
        except FileNotFoundError:
            return []
        found = []
        for line in text.splitlines():
            _, seen, rest = line.partition(mark)
            if seen:
                found.append([f.strip() for f in rest.split("|")])
        return found


def sipp_once(target: str, scenario: str, number: str, caller: str, *extra: str) -> list[str]:
    """SIPp placing one call to ``number`` at ``target`` from ``caller`` with ``scenario``."""
    return [
        "timeout", "40", tool("sipp"), target, "-sf", str(SIPP_DIR / scenario), "-i", "127.0.0.1",
        "-p", str(free_port()), "-m", "1", "-s", number, "-nostdin", "-timeout", "30s", "-d", "300",
        "-key", "caller", caller, *extra,
    ]  # fmt: skip


async def pstn_call(
    carrier: str, number: str, caller: str, codecs: str = "0 8 101"
) -> subprocess.CompletedProcess[str]:
    """A PSTN caller calls ``number`` through the provider's carrier side, offering the payload
    types ``codecs`` (PCMU, PCMA, telephone-event); returns SIPp's run (exit code 0: answered and
    hung up)."""
    return await asyncio.to_thread(run, *sipp_once(carrier, "pstn_uac.xml", number, caller, "-key", "codecs", codecs))


async def customer_call(
    provider: str, number: str, account: tuple[str, str], caller: str = "", asserted: str = "", codecs: str = "0"
) -> subprocess.CompletedProcess[str]:
    """A provider's customer calls ``number`` through the provider's customer side, with
    ``account`` (user, password) for the 407; From is ``caller`` and P-Asserted-Identity
    ``asserted`` (both the account's user unless given); it offers the payload types ``codecs``.
    A phone calling through its gateway is such a caller too."""
    user, password = account
    extra = ["-au", user, "-ap", password, "-key", "asserted", asserted or caller or user, "-key", "codecs", codecs]
    return await asyncio.to_thread(run, *sipp_once(provider, "trunk_caller.xml", number, caller or user, *extra))
