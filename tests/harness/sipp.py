"""SIPp phones: register, wait for calls, place calls, and wait for each scenario's end.

A phone that waits for a call is ready once the gateway lists its registration from its port
and SIPp holds that port's UDP socket (seen in /proc: an INVITE sent after that waits in the
socket's buffer until SIPp reads it). Always with ``-i 127.0.0.1 -p PORT`` and under
``timeout``: SIPp with ``-p 0`` still took 5060, and a scenario stuck on a lost message never ends.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Protocol

from services.runtime.embedded_etcd import free_port
from tests.harness.servers import Gateway
from tests.harness.wait import wait_for, wait_until

SIPP_DIR = Path(__file__).resolve().parents[1] / "integration" / "sipp"


class SipTarget(Protocol):
    """What a phone registers at and calls through: a gateway's SIP address."""

    @property
    def sip(self) -> str: ...


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path is not None, f"{name} is not installed: `make test` installs it (Debian package)"
    return path


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def sipp_args(gateway: SipTarget, scenario: str, port: int, service: str, *extra: str) -> list[str]:
    """SIPp running ``scenario`` (a file of tests/integration/sipp) once from ``port``; a caller's
    number ([caller] in the scenarios) is the user it authenticates as (``-au``)."""
    caller = extra[extra.index("-au") + 1] if "-au" in extra else "100"
    return [
        "timeout", "40", tool("sipp"), gateway.sip, "-sf", str(SIPP_DIR / scenario), "-i", "127.0.0.1",
        "-p", str(port), "-m", "1", "-s", service, "-nostdin", "-timeout", "30s", "-key", "caller", caller, *extra,
    ]  # fmt: skip


async def register_phone(gateway: SipTarget, account: tuple[str, str], *extra: str) -> int:
    """One SIPp REGISTER for ``account``; returns the port it registered from."""
    port = free_port()
    done = await asyncio.to_thread(
        run, *sipp_args(gateway, "register.xml", port, account[0], "-au", account[0], "-ap", account[1], *extra)
    )
    assert done.returncode == 0, done.stdout[-1500:]
    return port


async def spawn_sipp(*args: str) -> asyncio.subprocess.Process:
    """A SIPp process started in the background (a caller, say); nothing waited for."""
    return await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )


async def start_phone(
    gateway: Gateway, scenario: str, port: int, number: str, *extra: str
) -> asyncio.subprocess.Process:
    """A SIPp phone waiting for a call on ``port`` (the port it registered from) with
    ``scenario``; returned once it is ready to take the call."""
    process = await spawn_sipp(*sipp_args(gateway, scenario, port, number, *extra))
    try:
        await phone_ready(process, port, gateway, number)
    except BaseException:
        await stop_phones(process)
        raise
    return process


async def phone_ready(
    process: asyncio.subprocess.Process, port: int, gateway: Gateway | None = None, number: str = ""
) -> None:
    """Waits until the phone ``process`` holds its UDP socket on ``port`` and, with a gateway
    and a number, the gateway lists that number registered from there."""

    async def bound() -> bool:
        assert process.returncode is None, f"the SIPp phone on port {port} exited with {process.returncode}"
        return udp_bound_by(process.pid, port)

    await wait_for(bound, timeout=10, what=f"SIPp's UDP socket on 127.0.0.1:{port}", interval=0.01)
    if gateway is not None and number:

        async def registered() -> bool:
            contacts = (await gateway.registrations()).get(number, [])
            return any(c.source == f"127.0.0.1:{port}" for c in contacts)

        await wait_for(registered, timeout=10, what=f"{number} registered from 127.0.0.1:{port}")


def wait_phone_bound(pid: int, port: int, timeout: float = 10.0) -> None:
    """``phone_ready``'s socket check for code without an event loop."""
    wait_until(lambda: udp_bound_by(pid, port), timeout, f"SIPp's UDP socket on 127.0.0.1:{port}", interval=0.01)


def udp_bound_by(pid: int, port: int, host: str = "127.0.0.1") -> bool:
    """Whether process ``pid`` (or a child of it: ``timeout`` runs SIPp as one) has a UDP socket
    bound to ``host:port``."""
    wanted = f"{socket.inet_aton(host)[::-1].hex().upper()}:{port:04X}"
    try:
        rows = Path("/proc/net/udp").read_text().splitlines()[1:]
    except OSError:
        return False
    bound = {fields[9] for fields in (row.split() for row in rows) if fields[1] == wanted}
    return bool(bound) and any(bound & _socket_inodes(p) for p in _family(pid))


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return set()
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def _family(pid: int) -> list[int]:
    """``pid`` and its descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry))
    family, todo = [], [pid]
    while todo:
        current = todo.pop()
        family.append(current)
        todo.extend(children.get(current, []))
    return family


async def stop_phones(*processes: asyncio.subprocess.Process) -> None:
    """Ends SIPp phones still running. SIGTERM, as `timeout` passes it on to SIPp; SIGKILL would
    end only `timeout` and leave SIPp running."""
    for process in processes:
        if process.returncode is None:
            process.terminate()
    for process in processes:
        try:
            await asyncio.wait_for(process.wait(), 5)
        except TimeoutError:
            process.kill()
            await process.wait()


async def phones_done(*processes: asyncio.subprocess.Process, seconds: float = 40) -> list[int]:
    """Each SIPp phone's exit code once it has finished its scenario (stopped if it has not by then)."""
    try:
        return [await asyncio.wait_for(p.wait(), seconds) for p in processes]
    finally:
        await stop_phones(*processes)


async def sipp_call(
    caller_gw: SipTarget,
    callee_gw: Gateway,
    caller: tuple[str, str],
    callee: tuple[str, str],
    caller_xml: str,
    callee_xml: str,
) -> None:
    """The callee phone registers on ``callee_gw`` and waits; the caller dials it through ``caller_gw``."""
    answering = await start_phone(callee_gw, callee_xml, await register_phone(callee_gw, callee), callee[0])
    try:
        calling = await asyncio.to_thread(
            run, *sipp_args(caller_gw, caller_xml, free_port(), callee[0], "-au", caller[0], "-ap", caller[1])
        )
        assert calling.returncode == 0, calling.stdout[-2000:] + calling.stderr[-2000:]
        assert await asyncio.wait_for(answering.wait(), 30) == 0
    finally:
        await stop_phones(answering)
