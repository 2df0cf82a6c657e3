"""`make demo`: a scripted cross-server call on the group `make up` runs, with hold and transfer.

Alice (100, on alpha) is connected to Carol (200, on beta) through alpha's API; Carol puts the call
on hold, resumes it and transfers it to Dave (201, on beta); then the call is hung up. The phones
are SIPp; what alpha's callstate streams about the call is printed as it changes: the party behind
beta, the hold, the new party after the transfer, the end. Then the call's recordings on alpha's and
beta's media services: one WAV per segment of the call (answer, hold, resume, transfer), the same
segments on both servers. SIPp phones send no audio: the recordings are silence.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "gen"))
sys.path.insert(0, str(ROOT))

from services.cli_tls import open_channel  # noqa: E402
from services.runtime.config import load_config  # noqa: E402
from services.runtime.embedded_etcd import free_port  # noqa: E402
from tests.harness.sipp import wait_phone_bound  # noqa: E402
from tests.harness.wait import wait_until  # noqa: E402

SIPP_DIR = ROOT / "tests" / "integration" / "sipp"
# Where `make up` runs alpha and beta (examples/alpha.yaml, examples/beta.yaml).
ALPHA_SIP, BETA_SIP = 5060, 5062
ALPHA_SIPGW, ALPHA_CALLSTATE = "127.0.0.1:50061", "127.0.0.1:50071"
MEDIA = [("alpha", "127.0.0.1:50081"), ("beta", "127.0.0.1:50082")]  # (server, its media service's API)
PHONES = [  # (number, password, SIP port of its server, scenario, extra SIPp arguments)
    ("100", "alice-demo-100", ALPHA_SIP, "talker.xml", []),
    ("201", "dave-demo-201", BETA_SIP, "talker.xml", []),
    ("200", "carol-demo-200", BETA_SIP, "callee_hold_refer.xml", ["-key", "refer_to", "201"]),
]


def sipp(server_port: int, scenario: str, port: int, number: str, *extra: str) -> list[str]:
    return [
        shutil.which("sipp") or "sipp", f"127.0.0.1:{server_port}", "-sf", str(SIPP_DIR / scenario),
        "-i", "127.0.0.1", "-p", str(port), "-m", "1", "-s", number, "-nostdin", "-timeout", "40s", *extra,
    ]  # fmt: skip


def use_local_pki() -> None:
    """`make up`'s ports take mutual TLS: the command line presents the certificate it made."""
    pki = ROOT / ".pbxmesh" / "pki"
    if (pki / "client-operator.pem").exists():
        os.environ.setdefault("PBXMESH_CA", str(pki / "ca.pem"))
        os.environ.setdefault("PBXMESH_CERT", str(pki / "client-operator.pem"))
        os.environ.setdefault("PBXMESH_KEY", str(pki / "client-operator-key.pem"))


def api(address: str) -> Any:
    """A channel to one of the group's gRPC ports, with the command line's certificate if any."""
    env = os.environ
    tls = argparse.Namespace(
        ca=env.get("PBXMESH_CA", ""), cert=env.get("PBXMESH_CERT", ""), key=env.get("PBXMESH_KEY", ""), server_name=""
    )
    return open_channel(address, tls)


def pbxmesh(*args: str) -> list[str]:
    return [sys.executable, "-m", "services.cli", *args]


def main() -> int:
    if shutil.which("sipp") is None:
        print("demo: SIPp is missing (Debian package sip-tester; `make test` installs it)", file=sys.stderr)
        return 1
    use_local_pki()
    listed = subprocess.run(pbxmesh("parties", "--callstate", ALPHA_CALLSTATE), capture_output=True, cwd=ROOT)
    if listed.returncode != 0:
        print("demo: the local group does not answer; run `make up` in another terminal first", file=sys.stderr)
        return 1
    phones: list[subprocess.Popen[bytes]] = []
    watch = subprocess.Popen(pbxmesh("parties", "--watch", "--callstate", ALPHA_CALLSTATE), cwd=ROOT)
    try:
        for number, password, server_port, scenario, extra in PHONES:
            port = free_port()
            registered = subprocess.run(
                sipp(server_port, "register.xml", port, number, "-au", number, "-ap", password),
                capture_output=True, timeout=30,
            )  # fmt: skip
            if registered.returncode != 0:
                print(f"demo: phone {number} could not register", file=sys.stderr)
                return 1
            phones.append(
                subprocess.Popen(
                    sipp(server_port, scenario, port, number, *extra),
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            wait_phone_bound(phones[-1].pid, port)  # it answers from the port it registered from
        print("== alpha's callstate, as the call goes: Alice (alpha) -> Carol (beta), hold, resume, transfer to Dave")
        dialed = subprocess.run(
            pbxmesh("dial", "100", "200", "--sipgw", ALPHA_SIPGW, "--json"), capture_output=True, text=True, cwd=ROOT
        )
        if dialed.returncode != 0:
            print(f"demo: {dialed.stderr.strip()}", file=sys.stderr)
            return 1
        call_id = dialed.stdout.split('"callId": "', 1)[1].split('"', 1)[0]
        phones[2].wait(30)  # Carol's scenario: answer, hold, resume, transfer; it ends with her BYE
        subprocess.run(pbxmesh("calls", "--sipgw", ALPHA_SIPGW), cwd=ROOT)

        from pbxmesh.sipgw.v1 import sipgw_pb2 as pb
        from pbxmesh.sipgw.v1 import sipgw_pb2_grpc as pb_grpc

        with api(ALPHA_SIPGW) as channel:
            pb_grpc.SipGatewayServiceStub(channel).HangUpCall(pb.HangUpCallRequest(call_id=call_id), timeout=5)
        for phone in phones:
            phone.wait(20)
        wait_until(lambda: _ended(call_id), 5, "the call's end on alpha's callstate")
        ok = all(phone.returncode == 0 for phone in phones)
        ok = show_recordings(call_id) and ok
        print("== done" if ok else "== a phone's scenario failed", file=sys.stderr if not ok else sys.stdout)
        return 0 if ok else 1
    finally:
        for phone in phones:
            if phone.poll() is None:
                phone.terminate()
        watch.terminate()
        watch.wait(5)


def _recordings(media: str, call_id: str) -> list[Any]:
    from pbxmesh.media.v1 import media_pb2 as md
    from pbxmesh.media.v1 import media_pb2_grpc as md_grpc

    with api(media) as channel:
        stub = md_grpc.MediaServiceStub(channel)
        return list(stub.ListRecordings(md.ListRecordingsRequest(call_id=call_id), timeout=5).recordings)


def show_recordings(call_id: str) -> bool:
    """Lists the call's recordings on alpha and beta, once each is finished; False if none."""
    import grpc

    found = True
    for server, media in MEDIA:
        try:
            # The last segment's file is closed when its end reaches the media service: soon after.
            recordings = wait_until(partial(_finished, media, call_id), 10, f"{server}'s recordings of the call", 0.2)
        except (grpc.RpcError, AssertionError) as exc:
            print(f"== {server}: no recordings of the call ({exc})", file=sys.stderr)
            found = False
            continue
        folder = ROOT / load_config(ROOT / "examples" / f"{server}.yaml", environ={}).recording.dir
        print(f"== the call's recordings on {server} ({media}): channel 1 {server}'s party, channel 2 the other")
        print(f"   {'SEGMENT':<40} {'DURATION':>9}  {'HELD':<5} {'PARTIES':<12} FILE")
        for r in recordings:
            parties = f"{r.local_number} <-> {r.remote_number}"
            note = f"  ({r.error})" if r.error else ""
            held = "held" if r.held else ""
            print(
                f"   {r.segment_id:<40} {r.duration_ms / 1000:>8.2f}s  {held:<5} {parties:<12} {folder / r.file}{note}"
            )
    if found:
        first = _recordings(MEDIA[0][1], call_id)[0].segment_id
        print("== listen: play the WAV files above, or fetch one from its server's media service:")
        print(f"   .venv/bin/pbxmesh recordings get {first} -o segment.wav --media {MEDIA[0][1]}")
        print(f"   .venv/bin/pbxmesh recordings --call {call_id} --media {MEDIA[1][1]}")
        print("   (SIPp phones send no audio: these recordings are silence)")
    return found


def _finished(media: str, call_id: str) -> list[Any]:
    """The call's recordings on that media service once each is closed (a hash or an error); else []."""
    recordings = _recordings(media, call_id)
    return recordings if all(r.sha256 or r.error for r in recordings) else []


def _ended(call_id: str) -> bool:

    from pbxmesh.callstate.v1 import callstate_pb2 as cs
    from pbxmesh.callstate.v1 import callstate_pb2_grpc as cs_grpc

    with api(ALPHA_CALLSTATE) as channel:
        call = cs_grpc.CallStateServiceStub(channel).GetCall(cs.GetCallRequest(call_id=call_id), timeout=5).call
    return bool(call.phase == cs.CALL_PHASE_ENDED)


if __name__ == "__main__":
    sys.exit(main())
