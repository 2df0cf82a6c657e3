"""Callstate figures: two servers (registry, callstate, sipgw each) on an embedded etcd.

1. Transfer to the far phone: alpha's phone 100 is connected to beta's 200 (a call placed through
   alpha's API); 200 transfers it blind to 201. Timed from 200 sending REFER to (a) the UPDATE with
   the new party reaching 100 and (b) the event with the new party on alpha's callstate
   WatchCalls stream. One transfer at a time, p50/p99 over --transfers.
2. Cost of callstate: --concurrent cross-server calls held open with a WatchCalls stream open on
   alpha; CPU seconds both callstates spent setting the calls up, holding them and ending them,
   and their RSS.
3. Hand-over: alpha's 100 talks to beta's 203, who transfers it blind to gamma's 300; beta, left
   in the middle, hands the call over. Timed on beta's WatchCalls stream from the transfer (the
   call's callee becomes 300) to the call's end there (its trunk lines free), and from 203's
   REFER; p50/p99 over --handovers, one at a time.

    .venv/bin/python bench/callstate_bench.py [--transfers 1000] [--concurrent 200] [--handovers 200]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

import grpc.aio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "gen"))
sys.path.insert(0, str(ROOT))

from bench._phones import Phone  # noqa: E402
from bench.sipgw_bench import Rig, cpu_seconds, listen_of, rss_mib, server_config  # noqa: E402
from pbxmesh.callstate.v1 import callstate_pb2 as cs  # noqa: E402
from pbxmesh.callstate.v1 import callstate_pb2_grpc as cs_grpc  # noqa: E402
from pbxmesh.sipgw.v1 import sipgw_pb2 as pb  # noqa: E402
from pbxmesh.sipgw.v1 import sipgw_pb2_grpc as pb_grpc  # noqa: E402
from services.runtime.addresses import parse_host_port  # noqa: E402
from services.runtime.embedded_etcd import free_port  # noqa: E402

A1, B1, B2, B3 = ("100", "bench-pw-100"), ("200", "bench-pw-200"), ("201", "bench-pw-201"), ("202", "bench-pw-202")
B4, C1 = ("203", "bench-pw-203"), ("300", "bench-pw-300")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


class AlphaStream:
    """alpha's callstate WatchCalls: when each call was first seen with a given remote party."""

    def __init__(self, address: str):
        self.address = address
        self.seen: dict[tuple[str, str], float] = {}
        self.synced = asyncio.Event()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async with grpc.aio.insecure_channel(self.address) as channel:
            async for message in cs_grpc.CallStateServiceStub(channel).WatchCalls(cs.WatchCallsRequest()):
                at = time.perf_counter()
                for call in message.calls:
                    self.seen.setdefault((call.call_id, call.remote_party.number), at)
                self.synced.set()


async def wait_until(check: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return True
        await asyncio.sleep(0.001)
    return False


async def transfers(count: int, alpha_api: str, stream: AlphaStream, a1: Phone, b1: Phone) -> None:
    print(f"\n== 1. blind transfer on beta -> the phone and the stream on alpha ({count} transfers, one at a time)")
    refers: list[float] = []
    updates: list[float] = []
    b1.listeners.append(lambda what, call, at: refers.append(at) if what == "refer" else None)
    a1.listeners.append(
        lambda what, call, at: updates.append(at) if what.startswith("update") and "201@" in what else None
    )
    to_update: list[float] = []
    to_stream: list[float] = []
    lost: list[int] = []
    async with grpc.aio.insecure_channel(alpha_api) as channel:
        stub = pb_grpc.SipGatewayServiceStub(channel)
        for index in range(count):
            refers.clear()
            updates.clear()
            call = (await stub.PlaceCall(pb.PlaceCallRequest(from_number=A1[0], to=B1[0]), timeout=5)).call
            key = (call.call_id, B2[0])
            ok = await wait_until(lambda key=key: refers and updates and key in stream.seen, 5)
            if ok:
                to_update.append((updates[0] - refers[0]) * 1000)
                to_stream.append((stream.seen[key] - refers[0]) * 1000)
            else:
                lost.append(index)
                missing = [
                    name
                    for name, ok in (("REFER", refers), ("UPDATE", updates), ("event", key in stream.seen))
                    if not ok
                ]
                print(f"transfer {index}: no {', '.join(missing)} within 5 s")
            await stub.HangUpCall(pb.HangUpCallRequest(call_id=call.call_id), timeout=5)
            await asyncio.sleep(0.005)
    print(f"{'measure':<38} {'n':>5} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for name, values in (
        ("REFER -> UPDATE at the phone on alpha", to_update),
        ("REFER -> event on alpha's stream", to_stream),
    ):
        if values:
            print(
                f"{name:<38} {len(values):>5} {pct(values, 0.5):>8.2f} {pct(values, 0.9):>8.2f} "
                f"{pct(values, 0.99):>8.2f} {max(values):>8.2f}"
            )
    print(f"transfers not seen complete within 5 s: {len(lost)} (at {lost[:10]})   target: p99 < 20 ms")


async def concurrent(count: int, alpha_api: str, rig: Rig, a1: Phone, b3: Phone) -> None:
    print(f"\n== 2. callstate cost: {count} concurrent cross-server calls, a WatchCalls stream open on alpha")
    answered: set[str] = set()
    b3.listeners.append(lambda what, call, at: answered.add(call) if what == "ack" else None)
    pair = rig.callstates[:2]  # alpha's and beta's: the servers of these calls
    before_cpu, before_rss = cpu_seconds(pair), rss_mib(pair)
    started = time.perf_counter()
    async with grpc.aio.insecure_channel(alpha_api) as channel:
        stub = pb_grpc.SipGatewayServiceStub(channel)
        ids = []
        for _ in range(count):
            ids.append((await stub.PlaceCall(pb.PlaceCallRequest(from_number=A1[0], to=B3[0]), timeout=5)).call.call_id)
            await asyncio.sleep(0.005)
        await wait_until(lambda: len(answered) >= count, 30)
        setup_cpu, setup_s = cpu_seconds(pair) - before_cpu, time.perf_counter() - started
        held_rss = rss_mib(pair)
        hold_start = cpu_seconds(pair)
        await asyncio.sleep(10)
        hold_cpu = cpu_seconds(pair) - hold_start
        end_start = cpu_seconds(pair)
        for call_id in ids:
            await stub.HangUpCall(pb.HangUpCallRequest(call_id=call_id), timeout=5)
        await asyncio.sleep(2)
        end_cpu = cpu_seconds(pair) - end_start
    print(f"calls answered: {len(answered)} of {count}, set up in {setup_s:.1f} s")
    print(f"callstate CPU (both servers): set-up {setup_cpu:.2f} s ({setup_cpu * 1000 / count:.2f} ms/call), "
          f"holding 10 s {hold_cpu:.2f} s, ending {end_cpu:.2f} s ({end_cpu * 1000 / count:.2f} ms/call)")  # fmt: skip
    print(f"callstate RSS (both servers): {before_rss:.0f} MiB idle, {held_rss:.0f} MiB with {count} calls")


class BetaCalls:
    """beta's gateway WatchCalls: when each call was first seen transferred to 300, and ended."""

    def __init__(self, address: str):
        self.address = address
        self.transferred: dict[str, float] = {}
        self.ended: dict[str, float] = {}
        self.synced = asyncio.Event()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async with grpc.aio.insecure_channel(self.address) as channel:
            async for message in pb_grpc.SipGatewayServiceStub(channel).WatchCalls(pb.WatchCallsRequest()):
                at = time.perf_counter()
                for call in message.calls:
                    if call.callee == C1[0]:
                        self.transferred.setdefault(call.call_id, at)
                    if call.state == pb.CALL_STATE_ENDED:
                        self.ended.setdefault(call.call_id, at)
                self.synced.set()


async def handovers(count: int, alpha_api: str, beta: BetaCalls, b4: Phone) -> None:
    print(f"\n== 3. hand-over: alpha -> beta, transferred on beta to gamma; beta steps out ({count}, one at a time)")
    refers: list[float] = []
    b4.listeners.append(lambda what, call, at: refers.append(at) if what == "refer" else None)
    to_free: list[float] = []
    from_refer: list[float] = []
    lost = 0
    async with grpc.aio.insecure_channel(alpha_api) as channel:
        stub = pb_grpc.SipGatewayServiceStub(channel)
        for _ in range(count):
            refers.clear()
            call = (await stub.PlaceCall(pb.PlaceCallRequest(from_number=A1[0], to=B4[0]), timeout=5)).call
            key = call.call_id
            if await wait_until(lambda key=key: key in beta.ended and key in beta.transferred and refers, 5):
                to_free.append((beta.ended[key] - beta.transferred[key]) * 1000)
                from_refer.append((beta.ended[key] - refers[0]) * 1000)
            else:
                lost += 1
            await stub.HangUpCall(pb.HangUpCallRequest(call_id=call.call_id), timeout=5)
            await asyncio.sleep(0.005)
    print(f"{'measure':<38} {'n':>5} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for name, values in (("transfer done -> beta's lines free", to_free), ("REFER -> beta's lines free", from_refer)):
        if values:
            print(
                f"{name:<38} {len(values):>5} {pct(values, 0.5):>8.2f} {pct(values, 0.9):>8.2f} "
                f"{pct(values, 0.99):>8.2f} {max(values):>8.2f}"
            )
    print(f"hand-overs not seen complete within 5 s: {lost}")


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--transfers", type=int, default=1000)
    parser.add_argument("--concurrent", type=int, default=200)
    parser.add_argument("--handovers", type=int, default=200)
    args = parser.parse_args()
    print(f"== machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}")
    rig = Rig()
    phones: list[Phone] = []
    try:
        alpha = server_config("alpha", "ETCD", [A1], f"127.0.0.1:{free_port()}", callstate=True)
        beta = server_config("beta", "ETCD", [B1, B2, B3, B4], f"127.0.0.1:{free_port()}", callstate=True)
        gamma = server_config("gamma", "ETCD", [C1], f"127.0.0.1:{free_port()}", callstate=True)
        configs = {"alpha": alpha, "beta": beta, "gamma": gamma}
        await rig.servers(configs, ("registry", "callstate", "sipgw"))
        sip = {name: listen_of(config, "sip") for name, config in configs.items()}

        def at(name: str) -> tuple[str, int]:
            return parse_host_port(sip[name])

        a1, b1 = Phone(*A1, at("alpha")), Phone(*B1, at("beta"), refer_to=B2[0])
        b2, b3 = Phone(*B2, at("beta")), Phone(*B3, at("beta"))
        b4, c1 = Phone(*B4, at("beta"), refer_to=C1[0]), Phone(*C1, at("gamma"))
        phones = [a1, b1, b2, b3, b4, c1]
        for phone in phones:
            await phone.start()
        stream = AlphaStream(listen_of(alpha, "callstate"))
        await asyncio.wait_for(stream.synced.wait(), 5)
        api = listen_of(alpha, "sipgw")
        await transfers(args.transfers, api, stream, a1, b1)
        await concurrent(args.concurrent, api, rig, a1, b3)
        stream.task.cancel()
        beta_calls = BetaCalls(listen_of(beta, "sipgw"))
        await asyncio.wait_for(beta_calls.synced.wait(), 5)
        await handovers(args.handovers, api, beta_calls, b4)
        beta_calls.task.cancel()
    finally:
        for phone in phones:
            phone.close()
        await rig.close()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
