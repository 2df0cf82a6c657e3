"""The group changes its trunk secret while a call crosses the trunk: no gateway restarts, the
call goes on (its hold, resume and hang-up cross after the change), and at the end a proof signed
with the old secret is refused."""

from __future__ import annotations

import asyncio
import os
import socket

import yaml

from pbxmesh.sipgw.v1 import sipgw_pb2 as pb
from pbxmesh.sipgw.v1 import sipgw_pb2_grpc as pb_grpc
from services.runtime.embedded_etcd import free_port
from services.sipgw.auth.trunk_proof import TrunkProof
from tests.harness.servers import Gateway, Group
from tests.harness.sipp import phones_done, register_phone, run, sipp_args, sipp_call, start_phone, stop_phones
from tests.harness.site import SECRET, Site, running_sites
from tests.harness.tls import channel
from tests.integration.test_sipgw import _invite
from tests.integration.test_trunk import ALICE, CAROL, spec
from tests.support import wait_for

NEW = "the-group-trunk-secret-2027-next"


def set_trunk(site: Site, secret: str, accepted: list[str]) -> None:
    """Writes the site's config file as an operator would: a new file renamed over the old one."""
    path = site.registry.config_path
    document = yaml.safe_load(path.read_text())
    document["trunk"] = {**document["trunk"], "secret": secret, "accept_secrets": accepted}
    written = path.with_suffix(".next")
    written.write_text(yaml.safe_dump(document))
    os.replace(written, path)


async def changes_taken(gateway: Gateway, count: int) -> None:
    async def taken() -> bool:
        return "".join(gateway.log).count("trunk secrets changed") >= count

    await wait_for(taken, timeout=10, what=f"{count} change(s) of the trunk secrets taken")


async def answered_on(gateway: Gateway) -> bool:
    async with channel(gateway.api) as ch:
        calls = (await pb_grpc.SipGatewayServiceStub(ch).ListCalls(pb.ListCallsRequest(), timeout=5)).calls
    return any(call.state == pb.CALL_STATE_ANSWERED for call in calls)


def answer_to(data: bytes, trunk: str) -> bytes:
    host, port = trunk.split(":")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(3)
        sock.sendto(data, (host, int(port)))
        while True:
            answer = sock.recv(65536)
            if not answer.startswith(b"SIP/2.0 1"):
                return answer


def signed_invite(trunk: str, secret: str, branch: str) -> bytes:
    identity = "<sip:100@alpha.pbxmesh.invalid>"
    proof = TrunkProof(secret).sign(
        "INVITE", f"sip:{CAROL[0]}@{trunk}", f"{branch}@127.0.0.1", "1 INVITE", f"a{branch}", f"z9hG4bK{branch}",
        b"", f"{identity}\n\n\n\n\n",
    )  # fmt: skip
    return _invite(
        CAROL[0], branch, host=trunk, extra=f"P-Asserted-Identity: {identity}\r\nX-Pbxmesh-Trunk: {proof}\r\n"
    )


async def test_the_group_changes_its_trunk_secret_during_a_call(group: Group) -> None:
    async with running_sites(group, {"alpha": spec(ALICE), "beta": spec(CAROL)}, {"alpha": {"200"}}) as sites:
        alpha, beta = sites["alpha"], sites["beta"]
        carol = await register_phone(beta.gateway, CAROL)
        phone = await start_phone(beta.gateway, "callee_hold.xml", carol, CAROL[0])
        caller = asyncio.create_task(
            asyncio.to_thread(
                run,
                *sipp_args(alpha.gateway, "caller_hold_later.xml", free_port(), CAROL[0], "-au", ALICE[0],
                           "-ap", ALICE[1], "-d", "12000"),
            )
        )  # fmt: skip
        try:
            await wait_for(lambda: answered_on(beta.gateway), timeout=10, what="the call answered")
            # 1. Every server accepts the new secret (and still signs with the old one).
            for site in (alpha, beta):
                set_trunk(site, SECRET, [NEW])
            for site in (alpha, beta):
                await changes_taken(site.gateway, 1)
            # 2. Server by server, the new secret signs (the old one still accepted).
            set_trunk(alpha, NEW, [SECRET])
            await changes_taken(alpha.gateway, 2)
            set_trunk(beta, NEW, [SECRET])
            await changes_taken(beta.gateway, 2)
            # 3. The old secret goes.
            for site in (alpha, beta):
                set_trunk(site, NEW, [])
            for site in (alpha, beta):
                await changes_taken(site.gateway, 3)
            # The call held up all along: its hold, resume and BYE cross the trunk now.
            calling = await caller
            assert calling.returncode == 0, calling.stdout[-3000:]
            assert await phones_done(phone) == [0]
        finally:
            await stop_phones(phone)
            if not caller.done():
                caller.cancel()
        assert beta.gateway.process.returncode is None and alpha.gateway.process.returncode is None
        # A new call crosses with the new secret; a proof made with the old one is refused.
        await sipp_call(alpha.gateway, beta.gateway, ALICE, CAROL, "caller.xml", "callee.xml")
        refused = await asyncio.to_thread(answer_to, signed_invite(beta.trunk, SECRET, "old1"), beta.trunk)
        assert refused.startswith(b"SIP/2.0 403"), refused[:80]
        log = "".join(beta.gateway.log + alpha.gateway.log)
        assert SECRET not in log and NEW not in log
