"""`make up` as a user runs it: the three example servers on an embedded etcd, every gRPC port
taking mutual TLS with the throwaway CA it makes, the command line using the certificate it
prints. (It takes the examples' fixed ports: 2379, 5060-5074, 50051-50083.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=30
    )


def test_make_up_runs_the_group_over_mutual_tls() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PBXMESH_")}
    group = subprocess.Popen(
        [sys.executable, "scripts/local_group.py"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True,
    )  # fmt: skip
    printed: list[str] = []
    try:
        assert group.stdout is not None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = group.stdout.readline()
            if not line:
                break
            printed.append(line)
            if line.startswith("Ctrl-C stops"):
                break
        assert printed and printed[-1].startswith("Ctrl-C stops"), "".join(printed)
        export = next(line for line in printed if "export PBXMESH_CA=" in line)
        tls = dict(item.split("=", 1) for item in export.split()[1:])
        members = cli("members", "--registry", "127.0.0.1:50051", "--json", env={**env, **tls})
        assert members.returncode == 0, members.stderr
        assert all(server in members.stdout for server in ('"alpha"', '"beta"', '"gamma"'))
        refused = cli("members", "--registry", "127.0.0.1:50051", env=env)  # no certificate
        assert refused.returncode == 2 and "certificate" in refused.stderr
    finally:
        os.killpg(group.pid, signal.SIGINT)
        group.wait(60)
