"""`make up`: a local group on an embedded etcd: per config file given, a registry, (when the
file has listen.callstate) a callstate, (when it has listen.media) a media service that relays and
records the calls, and (when it has listen.sip) a SIP gateway.

Each service is started through the test harness's process layer (tests/harness/process.py):
ready once its gRPC health says SERVING, stopped with SIGTERM, a bounded wait, then SIGKILL.
Prints where each server listens; Ctrl-C (or SIGTERM) stops everything: each server leaves the
group, then etcd stops and its data folder is removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "gen"))
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from services.runtime.config import Config, load_config  # noqa: E402
from services.runtime.embedded_etcd import EmbeddedEtcd  # noqa: E402
from services.runtime.pki import init_ca, issue  # noqa: E402
from tests.harness.process import ServiceError, ServiceProcess, stop_all  # noqa: E402
from tests.harness.tls import secure  # noqa: E402

ETCD_PORT = 2379
LABELS = {"registry": "registry", "sipgw": "SIP     ", "callstate": "calls   ", "media": "media   "}


def services_of(config: Config) -> list[str]:
    # callstate before media (which follows its segments) and both before sipgw: the gateway's report
    # stream and its media control stream find them at once.
    services = ["registry"] + (["callstate"] if config.listen.callstate else [])
    services += ["media"] if config.listen.media else []
    return services + (["sipgw"] if config.listen.sip else [])


def shown_address(service: str, config: Config) -> str:
    """What a user reaches: the gateway's SIP address, the others' gRPC address."""
    return str(config.listen.sip if service == "sipgw" else getattr(config.listen, service))


def ensure_pki(paths: list[str]) -> Path | None:
    """The local group's throwaway CA and certificates, made where the files' ``tls`` sections say
    (once: kept across runs), with a client certificate (role control) for the command line."""
    folder = None
    for path in paths:
        document = yaml.safe_load(Path(path).read_text()) or {}
        tls = document.get("tls") or {}
        if not tls.get("ca_file"):
            continue
        folder = Path(tls["ca_file"]).parent
        if not (folder / "ca.pem").exists():
            init_ca(folder, "local")
        server_id = document["server"]["id"]
        if not Path(tls["cert_file"]).exists():
            issue(folder, "server", server_id, hosts=("127.0.0.1", "localhost"))
        if not (folder / "client-operator.pem").exists():
            issue(folder, "client", "operator", role="control")
    return folder


def relay(prefix: str) -> Callable[[str], None]:
    def write(line: str) -> None:
        sys.stderr.write(f"[{prefix}] {line}")

    return write


async def main(paths: list[str]) -> int:
    """Runs the group of these config files (absolute paths) until a signal or a server's exit."""
    pki = ensure_pki(paths)
    configs = [load_config(p, environ={}) for p in paths]
    if pki is not None:
        for config in configs:
            listen = config.listen
            secure([listen.registry, listen.sipgw, listen.callstate, listen.media], pki, "operator")
    etcd = EmbeddedEtcd(client_port=ETCD_PORT, peer_port=ETCD_PORT + 1)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    processes: list[ServiceProcess] = []
    try:
        etcd.start()
        print(f"etcd            {etcd.endpoint}  (embedded, data in {etcd.data_dir})")
        for path, config in zip(paths, configs, strict=True):
            for service in services_of(config):
                name = f"{config.server.id} {service}"
                process = ServiceProcess(service, Path(path), name=name, env=os.environ, on_line=relay(name))
                processes.append(process)
                try:
                    await process.start(timeout=30)
                except ServiceError as exc:
                    print(f"a server could not start: {exc}", file=sys.stderr)
                    return 1
                where = shown_address(service, config)
                print(f"{config.server.id:<15} {LABELS[service]} {where}  ({config.server.name})")
                if service == "media":
                    recording = config.recording
                    kept = "off" if not recording.enabled else f"recordings in {recording.dir}/"
                    print(f"{'':<15} RTP      {config.media.rtp_address} ports {config.media.rtp_ports}, {kept}")
            if config.sip.accounts:
                # Demo accounts from the example files: what a softphone needs to register here.
                for account in config.sip.accounts:
                    print(
                        f"{'':<15} phone    user {account.number}, password {account.password.value}, "
                        f"registrar sip:{config.listen.sip} (UDP or TCP)"
                    )
            if stop.is_set():
                return 0
        print()
        if pki is not None:
            tls_hint = f"PBXMESH_CA={pki}/ca.pem PBXMESH_CERT={pki}/client-operator.pem"
            print("Every gRPC port takes mutual TLS (the group's CA: pbxmesh ca). The command line's certificate:")
            print(f"      export {tls_hint} PBXMESH_KEY={pki}/client-operator-key.pem")
        print("Try:  .venv/bin/pbxmesh members --registry 127.0.0.1:50051")
        print("      .venv/bin/pbxmesh numbers --conflicts --registry 127.0.0.1:50052")
        print("      .venv/bin/pbxmesh resolve 300 --registry 127.0.0.1:50051")
        print("      .venv/bin/pbxmesh parties --watch --callstate 127.0.0.1:50071")
        print("      .venv/bin/pbxmesh recordings --media 127.0.0.1:50081  (alpha's recorded call segments)")
        print("      a softphone registered as 100 on alpha can call 200 on beta (over the trunk)")
        print("      make demo    (in another terminal: a scripted call alpha -> beta with hold and transfer)")
        print("Ctrl-C stops the group.", flush=True)
        while not stop.is_set():
            exited = [p for p in processes if p.returncode is not None]
            if exited:
                print(f"{exited[0].name} exited with code {exited[0].returncode}; stopping", file=sys.stderr)
                return 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
        return 0
    finally:
        await stop_all(processes)
        etcd.close()
        print("stopped")


if __name__ == "__main__":
    given = sys.argv[1:] or sorted(str(p) for p in Path("examples").glob("*.yaml"))
    sys.exit(asyncio.run(main([str(Path(p).resolve()) for p in given])))
