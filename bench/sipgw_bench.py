"""SIP gateway figures: local calls through one gateway at rising rates, with SIPp on both ends.

Prints, per rate: calls attempted, succeeded, failed, and the call-setup time (from the call's
first INVITE, through the 407 challenge and the authenticated INVITE, to the 200 OK: SIPp's
response time 1, in whole milliseconds) p50/p99, measured by SIPp itself. Not part of `make test`.

    .venv/bin/python bench/sipgw_bench.py [--rates 100,300,500] [--calls 1000]
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from services.runtime.embedded_etcd import free_port  # noqa: E402

SIPP_DIR = ROOT / "tests" / "integration" / "sipp"
CONFIG = """
server: {{id: bench}}
listen: {{registry: "127.0.0.1:{registry}", sip: "127.0.0.1:{sip}", sipgw: "127.0.0.1:{api}"}}
numbering: {{numbers: [{{number: "100"}}, {{number: "101"}}]}}
sip: {{accounts: [{{number: "100", password: "bench-pw-100"}}, {{number: "101", password: "bench-pw-101"}}]}}
"""
# A UAS for many calls: rings, answers each INVITE at once and takes its BYE.
UAS = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="bench uas">
  <recv request="INVITE" crlf="true"/>
  <send>
    <![CDATA[
      SIP/2.0 180 Ringing
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]SIPpUas[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0

    ]]>
  </send>
  <send>
    <![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]SIPpUas[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      Contact: <sip:[service]@[local_ip]:[local_port]>
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=uas 1 1 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP 0

    ]]>
  </send>
  <recv request="ACK" crlf="true"/>
  <recv request="BYE"/>
  <send>
    <![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0

    ]]>
  </send>
</scenario>
"""


def sipp(*args: str, seconds: float) -> subprocess.CompletedProcess[str]:
    command = ["timeout", str(int(seconds)), shutil.which("sipp") or "sipp", *args, "-nostdin", "-buff_size", "4194304"]
    return subprocess.run(command, capture_output=True, text=True, cwd=tempfile.gettempdir())


def run_load(target: str, scenario: Path, rate: int, calls: int, extra: list[str]) -> dict[str, str]:
    """One SIPp UAC run; returns the last row of its statistics file."""
    workdir = Path(tempfile.mkdtemp(prefix="sipgw-bench-"))
    stats = workdir / "stats.csv"
    port = free_port()
    sipp(
        target, "-sf", str(scenario), "-i", "127.0.0.1", "-p", str(port), "-s", "101",
        "-r", str(rate), "-m", str(calls), "-l", str(rate * 2), "-timeout", "60s",
        "-trace_stat", "-stf", str(stats), "-fd", "1", "-trace_rtt", "-rtt_freq", "1", *extra,
        seconds=calls / rate + 60,
    )  # fmt: skip
    rows = list(csv.DictReader(stats.open(), delimiter=";")) if stats.exists() else []
    rtt = sorted(_rtts(workdir))
    result = rows[-1] if rows else {}
    result["p50"] = f"{rtt[len(rtt) // 2]:.1f}" if rtt else "-"
    result["p99"] = f"{rtt[min(len(rtt) - 1, int(len(rtt) * 0.99))]:.1f}" if rtt else "-"
    shutil.rmtree(workdir, ignore_errors=True)
    return result


def _rtts(workdir: Path) -> list[float]:
    values: list[float] = []
    for path in list(workdir.glob("*_rtt.csv")) + list(Path(tempfile.gettempdir()).glob("*_rtt.csv")):
        for row in csv.DictReader(path.open(), delimiter=";"):
            text = row.get("response_time_ms", "")
            if text:
                values.append(float(text))
        path.unlink()
    return values


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rates", default="100,300,500,800")
    parser.add_argument("--calls", type=int, default=1000)
    args = parser.parse_args()
    rates = [int(r) for r in args.rates.split(",")]
    print(f"== machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}")
    ports = {"registry": free_port(), "sip": free_port(), "api": free_port()}
    config = Path(tempfile.mkdtemp()) / "bench.yaml"
    config.write_text(CONFIG.format(**ports))
    uas_file = Path(tempfile.mkdtemp()) / "uas.xml"
    uas_file.write_text(UAS)
    gateway = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "serve", "sipgw", "-c", str(config)],
        cwd=ROOT, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    uas_port = free_port()
    uas: subprocess.Popen[bytes] | None = None
    try:
        time.sleep(2)
        target = f"127.0.0.1:{ports['sip']}"
        registered = sipp(
            target, "-sf", str(SIPP_DIR / "register.xml"), "-i", "127.0.0.1", "-p", str(uas_port), "-m", "1",
            "-s", "101", "-au", "101", "-ap", "bench-pw-101", "-timeout", "10s", seconds=20,
        )  # fmt: skip
        if registered.returncode != 0:
            print("the UAS could not register:", registered.stdout[-500:])
            return 1
        uas = subprocess.Popen(
            ["sipp", "-sf", str(uas_file), "-i", "127.0.0.1", "-p", str(uas_port), "-s", "101", "-nostdin",
             "-buff_size", "4194304"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tempfile.gettempdir(),
        )  # fmt: skip
        time.sleep(0.5)
        print("\n== local calls through one gateway (caller authenticates with 407 each call)")
        print(f"{'rate/s':>7} {'calls':>6} {'ok':>6} {'failed':>7} {'setup p50 ms':>13} {'setup p99 ms':>13}")
        for rate in rates:
            row = run_load(target, SIPP_DIR / "caller.xml", rate, args.calls, ["-au", "100", "-ap", "bench-pw-100"])
            print(
                f"{rate:>7} {row.get('TotalCallCreated', '-'):>6} {row.get('SuccessfulCall(C)', '-'):>6} "
                f"{row.get('FailedCall(C)', '-'):>7} {row['p50']:>13} {row['p99']:>13}"
            )
    finally:
        if uas is not None:
            uas.terminate()
            uas.wait(10)
        gateway.terminate()
        gateway.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
