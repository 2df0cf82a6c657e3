"""The ``pbxmesh`` command: run a service, or ask a running registry about the group."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict

from pbxmesh.registry.v1 import registry_pb2 as pb
from pbxmesh.registry.v1 import registry_pb2_grpc as pb_grpc
from services.cli_media import add_recordings_command
from services.cli_output import RPC_TIMEOUT, print_json, table
from services.cli_tls import add_ca_commands, add_client_options, open_channel
from services.runtime import ConfigError, error_info, load_config

_log = logging.getLogger("pbxmesh")

DEFAULT_REGISTRY = "127.0.0.1:50051"
DEFAULT_SIPGW = "127.0.0.1:50061"
DEFAULT_CALLSTATE = "127.0.0.1:50071"


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except grpc.RpcError as exc:
        return _report_rpc_error(exc)
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pbxmesh", description="Joins PBX servers into one group.")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run a service of this server")
    serve.add_argument("service", choices=["registry", "sipgw", "callstate", "media"])
    serve.add_argument("-c", "--config", required=True, help="server config file (YAML)")
    serve.set_defaults(func=_serve)

    def client(name: str, help_text: str, func: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--registry", default=DEFAULT_REGISTRY, metavar="HOST:PORT", help="registry to ask")
        p.add_argument("--json", action="store_true", help="print JSON instead of a table")
        p.set_defaults(func=func)
        return p

    client("members", "list the live members of the group", _members)
    numbers = client("numbers", "list the merged numbering plan", _numbers)
    numbers.add_argument("--conflicts", action="store_true", help="list conflicts and who wins them")
    resolve = client("resolve", "show where a number lives (or which routes an external number takes)", _resolve)
    resolve.add_argument("number")
    client("routes", "list the group's merged external routes (to the PSTN)", _routes)
    providers = sub.add_parser("providers", help="list a gateway's provider trunks and their registrations")
    providers.add_argument("--sipgw", default=DEFAULT_SIPGW, metavar="HOST:PORT", help="gateway to ask")
    providers.add_argument("--json", action="store_true", help="print JSON instead of a table")
    providers.set_defaults(func=_providers)
    calls = sub.add_parser("calls", help="list a gateway's calls in progress")
    calls.add_argument("--sipgw", default=DEFAULT_SIPGW, metavar="HOST:PORT", help="gateway to ask")
    calls.add_argument("--watch", action="store_true", help="then print every change until Ctrl-C")
    calls.add_argument("--json", action="store_true", help="print JSON (one object per line with --watch)")
    calls.set_defaults(func=_calls)
    dial = sub.add_parser("dial", help="ring a phone of a server, then connect it to a number or URI")
    dial.add_argument("from_number", metavar="FROM", help="a number of the gateway's server: rung first")
    dial.add_argument("to", metavar="TO", help="a number of the group, or sip:number@ip:port")
    dial.add_argument("--sipgw", default=DEFAULT_SIPGW, metavar="HOST:PORT", help="gateway of FROM's server")
    dial.add_argument("--caller-id", default="", help="the number TO is shown (default FROM)")
    dial.add_argument("--called-id", default="", help="the number FROM is shown while it rings (default TO)")
    dial.add_argument("--json", action="store_true", help="print the call as JSON")
    dial.set_defaults(func=_dial)
    lockouts = sub.add_parser("lockouts", help="list a gateway's accounts and addresses locked out by failed logins")
    lockouts.add_argument("--sipgw", default=DEFAULT_SIPGW, metavar="HOST:PORT", help="gateway to ask")
    lockouts.add_argument("--all", action="store_true", help="also those with failures on record, not locked")
    lockouts.add_argument("--json", action="store_true", help="print JSON instead of a table")
    lockouts.set_defaults(func=_lockouts)
    unlock = sub.add_parser("unlock", help="lift the lockout of an account or an address at once")
    unlock.add_argument("target", metavar="NUMBER|ADDRESS", help="a number, or a source IP address")
    unlock.add_argument("--sipgw", default=DEFAULT_SIPGW, metavar="HOST:PORT", help="gateway to ask")
    unlock.set_defaults(func=_unlock)
    parties = sub.add_parser("parties", help="who is on each end of a server's calls (its callstate)")
    parties.add_argument("--callstate", default=DEFAULT_CALLSTATE, metavar="HOST:PORT", help="callstate to ask")
    parties.add_argument("--call", default="", metavar="ID", help="one call only")
    parties.add_argument("--watch", action="store_true", help="then print every change until Ctrl-C")
    parties.add_argument("--json", action="store_true", help="print JSON (one object per line with --watch)")
    parties.set_defaults(func=_parties)
    add_recordings_command(sub)
    for name, command in sub.choices.items():
        if name != "serve":
            add_client_options(command)
    add_ca_commands(sub)
    return parser


def _serve(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"pbxmesh: config error: {exc}", file=sys.stderr)
        return 2
    from services.runtime import setup_logging

    setup_logging(config.telemetry.log_level, config.telemetry.log_format)
    import uvloop

    # Each service is imported only when it is the one asked for.
    service_main: Coroutine[Any, Any, int]
    if args.service == "sipgw":
        from pathlib import Path

        from services.sipgw.serve import serve_sipgw

        service_main = serve_sipgw(config, Path(args.config))  # the file is watched for the trunk's secrets
    elif args.service == "callstate":
        from services.callstate.serve import serve_callstate

        service_main = serve_callstate(config)
    elif args.service == "media":
        from services.media.serve import serve_media

        service_main = serve_media(config)
    else:
        from services.registry.serve import serve_registry

        service_main = serve_registry(config)
    try:
        return uvloop.run(service_main)
    except ConfigError as exc:  # a check that needs more than the file (an address the service requires)
        print(f"pbxmesh: config error: {exc}", file=sys.stderr)
        return 2


def _stub(args: argparse.Namespace) -> tuple[grpc.Channel, pb_grpc.RegistryServiceStub]:
    channel = open_channel(args.registry, args)
    return channel, pb_grpc.RegistryServiceStub(channel)


def _members(args: argparse.Namespace) -> int:
    channel, stub = _stub(args)
    with channel:
        response = stub.ListMembers(pb.ListMembersRequest(), timeout=RPC_TIMEOUT)
    if args.json:
        print_json(response)
        return 0
    if not response.connected:
        print("this server is cut off from the group: it lists only itself")
    rows = [
        [
            m.server_id + (" *" if m.local else ""),
            m.name,
            str(m.join_revision),
            m.registry_address,
            m.trunk_address or "-",
        ]
        for m in response.members
    ]
    table(rows, ["SERVER", "NAME", "JOINED", "REGISTRY", "TRUNK"])
    return 0


def _numbers(args: argparse.Namespace) -> int:
    channel, stub = _stub(args)
    with channel:
        if args.conflicts:
            conflicts = stub.ListConflicts(pb.ListConflictsRequest(), timeout=RPC_TIMEOUT)
            if args.json:
                print_json(conflicts)
                return 0
            reason = {
                pb.CONFLICT_REASON_OWN_NUMBER: "own number",
                pb.CONFLICT_REASON_EARLIER_JOIN: "joined earlier",
            }
            rows = [
                [
                    c.number,
                    c.winner.server_id,
                    reason.get(c.reason, "?"),
                    ", ".join(x.server_id for x in c.losers),
                ]
                for c in conflicts.conflicts
            ]
            table(rows, ["NUMBER", "WINNER", "WHY", "SHADOWED"])
            return 0
        numbers = pb.ListNumbersResponse()
        page = stub.ListNumbers(pb.ListNumbersRequest(), timeout=RPC_TIMEOUT)
        numbers.routes.extend(page.routes)
        while page.next_page_token:
            page = stub.ListNumbers(pb.ListNumbersRequest(page_token=page.next_page_token), timeout=RPC_TIMEOUT)
            numbers.routes.extend(page.routes)
    if args.json:
        print_json(numbers)
        return 0
    rows = [
        [
            r.number,
            r.display_name,
            r.department_id or "-",
            _kind(r.kind),
            r.server_id + (" *" if r.local else ""),
        ]
        for r in numbers.routes
    ]
    table(rows, ["NUMBER", "NAME", "DEPARTMENT", "KIND", "SERVER"])
    return 0


def _resolve(args: argparse.Namespace) -> int:
    channel, stub = _stub(args)
    with channel:
        response = stub.ResolveNumber(pb.ResolveNumberRequest(number=args.number), timeout=RPC_TIMEOUT)
    if args.json:
        print_json(response)
        return 0
    if not response.HasField("route"):
        print(f"{args.number} is external: routes in the order they are tried")
        _externaltable(response.external)
        return 0
    r = response.route
    for label, value in [
        ("number", r.number),
        ("name", r.display_name),
        ("department", r.department_id or "-"),
        ("kind", _kind(r.kind)),
        ("server", f"{r.server_id} ({r.server_name})" + (", local" if r.local else "")),
        ("trunk", r.trunk_address or "-"),
    ]:
        print(f"{label:<11} {value}")
    return 0


def _routes(args: argparse.Namespace) -> int:
    channel, stub = _stub(args)
    with channel:
        response = stub.ListExternalRoutes(pb.ListExternalRoutesRequest(), timeout=RPC_TIMEOUT)
    if args.json:
        print_json(response)
        return 0
    if not response.connected:
        print("this server is cut off from the group: it lists only its own routes")
    _externaltable(response.routes)
    return 0


def _externaltable(routes: Sequence[pb.ExternalRoute]) -> None:
    rows = [
        [
            r.pattern,
            r.server_id + (" *" if r.local else ""),
            r.provider,
            str(r.priority),
            "yes" if r.live else "no (provider down)",
        ]
        for r in routes
    ]
    table(rows, ["PATTERN", "SERVER", "PROVIDER", "PRIORITY", "LIVE"])


def _calls(args: argparse.Namespace) -> int:
    from pbxmesh.sipgw.v1 import sipgw_pb2 as gw
    from pbxmesh.sipgw.v1 import sipgw_pb2_grpc as gw_grpc

    def show(call: gw.Call) -> None:
        if args.json:
            print(json.dumps(MessageToDict(call, always_print_fields_with_no_presence=True)))
            return
        state = gw.CallState.Name(call.state).removeprefix("CALL_STATE_").lower()
        kind = gw.CallKind.Name(call.kind).removeprefix("CALL_KIND_").lower().replace("_", " ")
        ended = f"  ({call.end_reason})" if call.end_reason else ""
        print(f"{call.call_id[:12]}  {call.caller:>8} -> {call.callee:<8}  {state:<9} {kind}{ended}")

    with open_channel(args.sipgw, args) as channel:
        stub = gw_grpc.SipGatewayServiceStub(channel)
        if not args.watch:
            response = stub.ListCalls(gw.ListCallsRequest(), timeout=RPC_TIMEOUT)
            if args.json:
                print_json(response)
                return 0
            for call in response.calls:
                show(call)
            if not response.calls:
                print("no calls in progress")
            return 0
        for message in stub.WatchCalls(gw.WatchCallsRequest()):
            for call in message.calls:
                show(call)
    return 0


def _dial(args: argparse.Namespace) -> int:
    from pbxmesh.sipgw.v1 import sipgw_pb2 as gw
    from pbxmesh.sipgw.v1 import sipgw_pb2_grpc as gw_grpc

    request = gw.PlaceCallRequest(
        from_number=args.from_number, to=args.to, caller_id=args.caller_id, called_id=args.called_id
    )
    with open_channel(args.sipgw, args) as channel:
        call = gw_grpc.SipGatewayServiceStub(channel).PlaceCall(request, timeout=RPC_TIMEOUT).call
    if args.json:
        print_json(call)
    else:
        print(f"call {call.call_id}: ringing {args.from_number}, then {args.to}")
    return 0


def _providers(args: argparse.Namespace) -> int:
    from pbxmesh.sipgw.v1 import sipgw_pb2 as gw
    from pbxmesh.sipgw.v1 import sipgw_pb2_grpc as gw_grpc

    with open_channel(args.sipgw, args) as channel:
        response = gw_grpc.SipGatewayServiceStub(channel).ListProviders(gw.ListProvidersRequest(), timeout=RPC_TIMEOUT)
    if args.json:
        print_json(response)
        return 0
    if not response.providers:
        print("this server has no provider")
        return 0

    def registration(p: gw.Provider) -> str:
        if not p.register:
            return "-"
        state = gw.RegistrationState.Name(p.registration).removeprefix("REGISTRATION_STATE_").lower()
        return f"{state} ({p.last_status} {p.last_reason})" if p.last_status and state != "registered" else state

    rows = [
        [
            p.name,
            ", ".join(p.targets) or f"{p.address} (not resolved)",
            registration(p),
            "yes" if p.live else "no",
            f"{p.lines_in_use}/{p.lines}",
            f"{p.calls_in}/{p.calls_out}",
        ]
        for p in response.providers
    ]
    table(rows, ["PROVIDER", "AT", "REGISTRATION", "LIVE", "LINES", "CALLS IN/OUT"])
    return 0


def _lockouts(args: argparse.Namespace) -> int:
    from pbxmesh.sipgw.v1 import sipgw_pb2 as gw
    from pbxmesh.sipgw.v1 import sipgw_pb2_grpc as gw_grpc

    request = gw.ListLockoutsRequest(include_failing=args.all)
    with open_channel(args.sipgw, args) as channel:
        response = gw_grpc.SipGatewayServiceStub(channel).ListLockouts(request, timeout=RPC_TIMEOUT)
    if args.json:
        print_json(response)
        return 0
    if not response.lockouts:
        print("nothing locked out" if not args.all else "no failed logins on record")
        return 0
    rows = [
        [
            gw.LockoutKind.Name(e.kind).removeprefix("LOCKOUT_KIND_").lower(),
            e.key,
            str(e.failures),
            f"{e.locked_for} s" if e.locked_for else "-",
            f"{e.delay_ms} ms" if e.delay_ms and not e.locked_for else "-",
        ]
        for e in response.lockouts
    ]
    table(rows, ["KIND", "NUMBER/ADDRESS", "FAILURES", "LOCKED FOR", "DELAY"])
    if response.truncated:
        print(f"(only the first {len(rows)} are listed)")
    return 0


def _unlock(args: argparse.Namespace) -> int:
    from pbxmesh.sipgw.v1 import sipgw_pb2 as gw
    from pbxmesh.sipgw.v1 import sipgw_pb2_grpc as gw_grpc

    with open_channel(args.sipgw, args) as channel:
        response = gw_grpc.SipGatewayServiceStub(channel).Unlock(
            gw.UnlockRequest(target=args.target), timeout=RPC_TIMEOUT
        )
    kinds = " and ".join(gw.LockoutKind.Name(k).removeprefix("LOCKOUT_KIND_").lower() for k in response.cleared)
    print(f"{args.target}: failures and lock of the {kinds} cleared")
    return 0


def _parties(args: argparse.Namespace) -> int:
    from pbxmesh.callstate.v1 import callstate_pb2 as cs
    from pbxmesh.callstate.v1 import callstate_pb2_grpc as cs_grpc

    def party(p: cs.Party) -> str:
        where = f"{p.department}@{p.server_name or p.server_id}" if p.department else p.server_name or p.server_id
        if p.external:
            where = f"PSTN via {p.provider or '?'}@{p.router_server_id or '?'}"
        name = f" {p.display_name}" if p.display_name else ""
        return f"{p.number}{name} ({where})" if where else f"{p.number}{name}"

    def show(call: cs.Call) -> None:
        if args.json:
            print(json.dumps(MessageToDict(call, always_print_fields_with_no_presence=True)))
            return
        phase = cs.CallPhase.Name(call.phase).removeprefix("CALL_PHASE_").lower()
        held = f" by {call.held_by}" if call.held_by else ""
        reason = f"  ({call.end_reason})" if call.end_reason else ""
        segments = f"  segments {len(call.segments)}" if call.segments else ""
        ends = f"{party(call.local_party)} <-> {party(call.remote_party)}"
        print(f"{call.call_id[:12]}  {ends}  {phase}{held}{segments}{reason}")

    with open_channel(args.callstate, args) as channel:
        stub = cs_grpc.CallStateServiceStub(channel)
        if not args.watch:
            if args.call:
                calls = [stub.GetCall(cs.GetCallRequest(call_id=args.call), timeout=RPC_TIMEOUT).call]
            else:
                calls = list(stub.ListCalls(cs.ListCallsRequest(), timeout=RPC_TIMEOUT).calls)
            for call in calls:
                show(call)
            if not calls and not args.json:
                print("no calls in progress")
            return 0
        for message in stub.WatchCalls(cs.WatchCallsRequest(call_id=args.call)):
            for call in message.calls:
                show(call)
    return 0


def _kind(kind: int) -> str:
    return pb.NumberKind.Name(pb.NumberKind.ValueType(kind)).removeprefix("NUMBER_KIND_").lower()


def _report_rpc_error(exc: Any) -> int:
    code = exc.code() if hasattr(exc, "code") else None
    if code == grpc.StatusCode.UNAVAILABLE:
        print(
            "pbxmesh: the service did not answer (is it running? see --registry / --sipgw / --callstate / --media;"
            " a server with `tls` in its config takes only clients with a certificate of its group's CA:"
            " --ca/--cert/--key or PBXMESH_CA/PBXMESH_CERT/PBXMESH_KEY)",
            file=sys.stderr,
        )
        return 2
    info = error_info(exc)
    reason = f" [{info.reason}]" if info is not None else ""
    print(f"pbxmesh: {exc.details()}{reason}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
