"""One service process: ``pbxmesh serve SERVICE -c CONFIG``, ready when its gRPC health says so.

Readiness is the Health/Check answer SERVING for the service's own gRPC name, asked at the
address its config gives: each process sets that only once it has started (the registry once it
has read the group, the gateway once its SIP sockets are open). Stopping is SIGTERM, a bounded
wait, then SIGKILL: a service once lingered for minutes after SIGTERM.

Log lines are read by a thread, so that a process's log keeps being collected whether or not
an event loop runs (``make up`` and the benches block in places; tests do not).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pbxmesh.callstate.v1 import callstate_pb2
from pbxmesh.media.v1 import media_pb2
from pbxmesh.registry.v1 import registry_pb2
from pbxmesh.sipgw.v1 import sipgw_pb2
from services.runtime.config import ConfigError, load_config
from tests.harness.tls import channel as tls_channel

REPO = Path(__file__).resolve().parents[2]
STOP_GRACE = 10.0  # seconds between SIGTERM and SIGKILL; a gateway drains calls for up to a few seconds

# The gRPC service each process serves (its health name) and the listen key of its address.
HEALTH_NAMES = {
    "registry": registry_pb2.DESCRIPTOR.services_by_name["RegistryService"].full_name,
    "sipgw": sipgw_pb2.DESCRIPTOR.services_by_name["SipGatewayService"].full_name,
    "callstate": callstate_pb2.DESCRIPTOR.services_by_name["CallStateService"].full_name,
    "media": media_pb2.DESCRIPTOR.services_by_name["MediaService"].full_name,
}

# No proxy for loopback; reconnect fast, so that a poll started before the server listens sees
# it as soon as the port opens (the default backoff adds up to a second).
CLIENT_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.enable_http_proxy", 0),
    ("grpc.initial_reconnect_backoff_ms", 10),
    ("grpc.max_reconnect_backoff_ms", 50),
]

SERVING = health_pb2.HealthCheckResponse.SERVING


class ServiceError(RuntimeError):
    """A service process exited or did not become ready in time; the message ends with its log."""


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without PBXMESH_* variables (servers reject unknown ones)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PBXMESH_")}
    env.update(extra or {})
    return env


def with_own_code(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` with this checkout's code first on PYTHONPATH: its services and its generated
    ``pbxmesh`` stubs, whatever checkout the virtualenv was installed from."""
    paths = [str(REPO), str(REPO / "gen"), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    return {**env, "PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))}


def grpc_address(service: str, config: Path, env: Mapping[str, str]) -> str:
    """Where ``service`` serves gRPC with this config (and the PBXMESH_* overrides in ``env``)."""
    listen = load_config(config, environ=env).listen
    address = str(getattr(listen, service))
    if not address or address.endswith(":0"):
        raise ServiceError(f"{config}: listen.{service} needs a fixed port ({address!r}) to be checked for health")
    return address


class ServiceProcess:
    """One ``pbxmesh serve SERVICE -c CONFIG`` process.

    ``log_file`` sends its output to that file instead of collecting lines in ``log``;
    ``keep_log=False`` drops it (a bench at thousands of calls a second). ``on_line`` sees each
    collected line as it comes (``make up`` shows them). ``python`` is the interpreter and its
    options (a bench adds ``-m cProfile``).
    """

    def __init__(
        self,
        service: str,
        config: Path,
        *,
        name: str = "",
        env: Mapping[str, str] | None = None,
        log_file: Path | None = None,
        keep_log: bool = True,
        on_line: Callable[[str], None] | None = None,
        python: Sequence[str] = (sys.executable,),
    ):
        self.service = service
        self.config = Path(config)
        self.name = name or f"{self.config.stem} {service}"
        self.env = with_own_code(env if env is not None else child_env())
        self.log_file = log_file
        self.keep_log = keep_log
        self.on_line = on_line
        self.python = list(python)
        self.lines: list[str] = []
        self.popen: subprocess.Popen[bytes] | None = None
        self.spawned = 0.0  # time.perf_counter() when it was started
        self._reader: threading.Thread | None = None

    @property
    def address(self) -> str:
        """The gRPC address from the config."""
        return grpc_address(self.service, self.config, self.env)

    @property
    def log(self) -> list[str]:
        """The lines it logged so far (read from ``log_file`` when it writes there)."""
        if self.log_file is not None:
            with contextlib.suppress(OSError):
                return self.log_file.read_text("utf-8", "replace").splitlines(keepends=True)
            return []
        return self.lines

    def log_tail(self, lines: int = 30) -> str:
        return "".join(self.log[-lines:]) or "(nothing logged)\n"

    @property
    def pid(self) -> int:
        assert self.popen is not None, f"{self.name} was not started"
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        """None while it runs."""
        return None if self.popen is None else self.popen.poll()

    def spawn(self) -> ServiceProcess:
        """Starts the process and its log reader; does not wait for anything."""
        if self.returncode is None and self.popen is not None:
            raise ServiceError(f"{self.name} runs already (pid {self.popen.pid})")
        argv = [*self.python, "-m", "services.cli", "serve", self.service, "-c", str(self.config)]
        out: IO[bytes] | int
        if self.log_file is not None:
            out = self.log_file.open("wb")
        else:
            out = subprocess.PIPE if self.keep_log else subprocess.DEVNULL
        self.lines = []
        try:
            self.spawned = time.perf_counter()
            # Its own session: a Ctrl-C in the terminal reaches only the script, which stops it.
            self.popen = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=out,
                cwd=REPO, env=self.env, start_new_session=True,
            )  # fmt: skip
        finally:
            if not isinstance(out, int):
                out.close()
        if self.popen.stderr is not None:
            self._reader = threading.Thread(
                target=self._read, args=(self.popen.stderr,), name=f"log of {self.name}", daemon=True
            )
            self._reader.start()
        return self

    def _read(self, stream: IO[bytes]) -> None:
        for raw in stream:
            line = raw.decode(errors="replace")
            self.lines.append(line)
            if self.on_line is not None:
                self.on_line(line)
        stream.close()

    async def start(self, timeout: float = 15.0) -> ServiceProcess:
        """Starts it and waits until it serves."""
        self.spawn()
        await self.wait_ready(timeout)
        return self

    async def wait_ready(self, timeout: float = 15.0) -> float:
        """Waits for SERVING on its health service; returns time.perf_counter() when it was seen.
        Raises ServiceError, with the log, if it exits first or ``timeout`` runs out."""
        try:
            address = self.address
        except ConfigError as exc:
            await self.wait_exit(timeout)
            raise ServiceError(f"{self.name}: {exc}\n{self.log_tail()}") from None
        try:
            return await wait_serving(address, HEALTH_NAMES[self.service], lambda: self.returncode is None, timeout)
        except ServiceError as exc:
            await self._drain_log()
            code = self.returncode
            why = f"exited with {code}" if code is not None else str(exc)
            raise ServiceError(f"{self.name} {why}:\n{self.log_tail()}") from None

    def send(self, sig: signal.Signals) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send(signal.SIGKILL)

    async def wait_exit(self, timeout: float = 10.0) -> int:
        """Its exit code; raises TimeoutError if it still runs after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while (code := self.returncode) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} still runs after {timeout} s")
            await asyncio.sleep(0.02)
        await self._drain_log()
        return code

    async def _drain_log(self) -> None:
        if self._reader is not None:
            await asyncio.to_thread(self._reader.join, 2)

    async def stop(self, grace: float = STOP_GRACE) -> int | None:
        """SIGTERM, up to ``grace`` seconds to exit, then SIGKILL; returns the exit code."""
        if self.popen is None:
            return None
        self.send(signal.SIGTERM)
        try:
            return await self.wait_exit(grace)
        except TimeoutError:
            self.kill()
            return await self.wait_exit(5)

    def stop_blocking(self, grace: float = STOP_GRACE) -> int | None:
        """``stop`` for code without an event loop."""
        if self.popen is None:
            return None
        return stop_popen(self.popen, grace)


async def wait_serving(
    address: str, health_name: str = "", alive: Callable[[], bool] = lambda: True, timeout: float = 15.0
) -> float:
    """Polls Health/Check for ``health_name`` at ``address`` until SERVING; returns
    time.perf_counter() when it was seen. Raises ServiceError once ``alive()`` is false (the
    process exited) or after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    async with tls_channel(address, options=CLIENT_OPTIONS) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest(service=health_name)
        while True:
            if not alive():
                raise ServiceError(f"the process serving {address} exited")
            left = deadline - time.monotonic()
            if left <= 0:
                raise ServiceError(f"not serving at {address} after {timeout} s")
            with contextlib.suppress(grpc.aio.AioRpcError):
                answer = await stub.Check(request, timeout=min(1.0, left))
                if answer.status == SERVING:
                    return time.perf_counter()
            await asyncio.sleep(0.01)


def stop_popen(popen: subprocess.Popen[Any], grace: float = STOP_GRACE) -> int:
    """SIGTERM, up to ``grace`` seconds to exit, then SIGKILL; returns the exit code."""
    if popen.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            popen.send_signal(signal.SIGTERM)
    try:
        return popen.wait(grace)
    except subprocess.TimeoutExpired:
        print(f"pid {popen.pid} ignored SIGTERM for {grace} s: SIGKILL", file=sys.stderr, flush=True)
        popen.kill()
        return popen.wait(5)


async def start_all(processes: Sequence[ServiceProcess], timeout: float = 15.0) -> None:
    """Starts the processes together and waits until all serve; if one fails, all are stopped
    and its error raised."""
    try:
        for process in processes:
            process.spawn()
        await asyncio.gather(*(p.wait_ready(timeout) for p in processes))
    except BaseException:
        await stop_all(processes)
        raise


async def stop_all(processes: Sequence[ServiceProcess], grace: float = STOP_GRACE) -> None:
    """Stops the processes together (SIGTERM to all first, then each waited for)."""
    await asyncio.gather(*(p.stop(grace) for p in processes), return_exceptions=True)
