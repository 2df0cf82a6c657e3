"""The command line's TLS: ``pbxmesh ca ...`` (the group's CA), and the client certificate the
other commands present to a server whose ports take mutual TLS (``tls`` in its config)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import grpc

from services.runtime.pki import ROLES, PkiError, init_ca, issue


def add_client_options(parser: argparse.ArgumentParser) -> None:
    """--ca/--cert/--key (or PBXMESH_CA, PBXMESH_CERT, PBXMESH_KEY) and --server-name."""
    env = os.environ
    group = parser.add_argument_group("TLS (a server with `tls` in its config)")
    group.add_argument("--ca", default=env.get("PBXMESH_CA", ""), metavar="FILE", help="the group's CA (PEM)")
    group.add_argument("--cert", default=env.get("PBXMESH_CERT", ""), metavar="FILE", help="client certificate")
    group.add_argument("--key", default=env.get("PBXMESH_KEY", ""), metavar="FILE", help="its key")
    group.add_argument(
        "--server-name",
        default=env.get("PBXMESH_SERVER_NAME", ""),
        metavar="SERVER_ID",
        help="the server id its certificate must name (default: the host of the address)",
    )


def open_channel(address: str, args: argparse.Namespace) -> grpc.Channel:
    """A plain channel, or mutual TLS when --ca is given."""
    if not getattr(args, "ca", ""):
        return grpc.insecure_channel(address)
    try:
        ca = Path(args.ca).read_bytes()
        cert = Path(args.cert).read_bytes() if args.cert else None
        key = Path(args.key).read_bytes() if args.key else None
    except OSError as error:
        raise SystemExit(f"pbxmesh: cannot read {error.filename}: {error.strerror}") from None
    if (cert is None) != (key is None):
        raise SystemExit("pbxmesh: --cert and --key go together")
    options = [("grpc.ssl_target_name_override", args.server_name)] if args.server_name else []
    return grpc.secure_channel(address, grpc.ssl_channel_credentials(ca, key, cert), options=options)


def add_ca_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ca = sub.add_parser("ca", help="the group's certificate authority: init, issue, client")
    steps = ca.add_subparsers(dest="step", required=True)
    init = steps.add_parser("init", help="make the group's CA (ca.pem, ca-key.pem) in --dir")
    init.add_argument("--dir", default="pki", help="where the CA lives (default ./pki)")
    init.add_argument("--group", default="main", help="the group's name, in the CA's name")
    init.add_argument("--force", action="store_true", help="replace an existing CA")
    init.set_defaults(func=_init)
    server = steps.add_parser("issue", help="a server's certificate: SERVER_ID.pem and SERVER_ID-key.pem")
    server.add_argument("server_id")
    server.add_argument("--dir", default="pki", help="where the CA lives (default ./pki)")
    server.add_argument("--host", action="append", default=[], help="a host name or address clients dial (repeat it)")
    server.add_argument("--days", type=int, default=397, help="validity (default 397)")
    server.set_defaults(func=_issue)
    client = steps.add_parser("client", help="an API client's certificate: client-NAME.pem and its key")
    client.add_argument("name")
    client.add_argument("--role", choices=ROLES, required=True, help="read: lists and watches; control: also acts")
    client.add_argument("--dir", default="pki", help="where the CA lives (default ./pki)")
    client.add_argument("--days", type=int, default=397, help="validity (default 397)")
    client.set_defaults(func=_client)


def _done(paths: tuple[Path, Path]) -> int:
    print(f"{paths[0]}\n{paths[1]}")
    return 0


def _failed(error: PkiError) -> int:
    print(f"pbxmesh ca: {error}", file=sys.stderr)
    return 1


def _init(args: argparse.Namespace) -> int:
    try:
        return _done(init_ca(Path(args.dir), args.group, args.force))
    except PkiError as error:
        return _failed(error)


def _issue(args: argparse.Namespace) -> int:
    try:
        return _done(issue(Path(args.dir), "server", args.server_id, hosts=tuple(args.host), days=args.days))
    except PkiError as error:
        return _failed(error)


def _client(args: argparse.Namespace) -> int:
    try:
        return _done(issue(Path(args.dir), "client", args.name, role=args.role, days=args.days))
    except PkiError as error:
        return _failed(error)
