"""`make up`: a local group on an embedded etcd: per config file given, a registry and (when the
file has listen.sip) a SIP gateway.

Prints where each server listens; Ctrl-C (or SIGTERM) stops everything: each server leaves the
group, then etcd stops and its data folder is removed.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from services.runtime.config import load_config
from services.runtime.embedded_etcd import EmbeddedEtcd

ETCD_PORT = 2379
READY = {
    "registry": re.compile(r"listening on (\S+), group"),
    "sipgw": re.compile(r"SIP on (\S+) \(UDP, TCP\)"),
    "callstate": re.compile(r"callstate of \S+ listening on (\S+)"),
}


def main(paths: list[str]) -> int:
    configs = [load_config(p, environ={}) for p in paths]
    etcd = EmbeddedEtcd(client_port=ETCD_PORT, peer_port=ETCD_PORT + 1)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    processes: list[subprocess.Popen[str]] = []
    try:
        etcd.start()
        print(f"etcd            {etcd.endpoint}  (embedded, data in {etcd.data_dir})")
        for path, config in zip(paths, configs, strict=True):
            # callstate before sipgw: the gateway's report stream finds it at once.
            services = ["registry"] + (["callstate"] if config.listen.callstate else [])
            services += ["sipgw"] if config.listen.sip else []
            for service in services:
                process = subprocess.Popen(
                    [sys.executable, "-m", "services.cli", "serve", service, "-c", path],
                    stderr=subprocess.PIPE,
                    text=True,
                    start_new_session=True,
                )
                processes.append(process)
                address = _wait_ready(process, READY[service])
                what = {"registry": "registry", "sipgw": "SIP     ", "callstate": "calls   "}[service]
                print(f"{config.server.id:<15} {what} {address}  ({config.server.name})")
                threading.Thread(target=_relay, args=(f"{config.server.id} {service}", process), daemon=True).start()
            if config.sip.accounts:
                # Demo accounts from the example files: what a softphone needs to register here.
                for account in config.sip.accounts:
                    print(
                        f"{'':<15} phone    user {account.number}, password {account.password.value}, "
                        f"registrar sip:{config.listen.sip} (UDP or TCP)"
                    )
        print()
        print("Try:  .venv/bin/pbxmesh members --registry 127.0.0.1:50051")
        print("      .venv/bin/pbxmesh numbers --conflicts --registry 127.0.0.1:50052")
        print("      .venv/bin/pbxmesh resolve 300 --registry 127.0.0.1:50051")
        print("      .venv/bin/pbxmesh parties --watch --callstate 127.0.0.1:50071")
        print("      a softphone registered as 100 on alpha can call 200 on beta (over the trunk)")
        print("      make demo    (in another terminal: a scripted call alpha -> beta with hold and transfer)")
        print("Ctrl-C stops the group.")
        while not stop.wait(0.5):
            for process in processes:
                if process.poll() is not None:
                    print(f"a server exited with code {process.returncode}; stopping", file=sys.stderr)
                    return 1
        return 0
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for process in processes:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
        etcd.close()
        print("stopped")


def _wait_ready(process: subprocess.Popen[str], ready: re.Pattern[str]) -> str:
    assert process.stderr is not None
    for line in process.stderr:
        sys.stderr.write(line)
        match = ready.search(line)
        if match:
            return match.group(1)
    raise SystemExit(f"a server exited before it was ready (code {process.wait()})")


def _relay(name: str, process: subprocess.Popen[str]) -> None:
    assert process.stderr is not None
    for line in process.stderr:
        sys.stderr.write(f"[{name}] {line}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or [str(p) for p in sorted(Path("examples").glob("*.yaml"))]))
