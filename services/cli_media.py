"""``pbxmesh recordings``: a media service's recordings, listed or fetched."""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from typing import Any

from google.protobuf.json_format import MessageToDict

from services.cli_output import RPC_TIMEOUT, table
from services.cli_tls import open_channel

DEFAULT_MEDIA = "127.0.0.1:50081"


def add_recordings_command(sub: Any) -> None:
    recordings = sub.add_parser(
        "recordings",
        help="list a server's recordings, or fetch one: recordings get SEGMENT_ID -o FILE",
        usage="pbxmesh recordings [--call ID] [--media HOST:PORT] [--json]\n"
        "       pbxmesh recordings get SEGMENT_ID -o FILE [--media HOST:PORT]",
    )
    recordings.add_argument("action", nargs="*", metavar="get SEGMENT_ID", help="fetch one recording's WAV")
    recordings.add_argument("--media", default=DEFAULT_MEDIA, metavar="HOST:PORT", help="media service to ask")
    recordings.add_argument("--call", default="", metavar="ID", help="one call's recordings")
    recordings.add_argument("-o", "--output", default="", metavar="FILE", help="where `get` writes the WAV")
    recordings.add_argument("--json", action="store_true", help="print JSON instead of a table")
    recordings.set_defaults(func=_recordings)


def _recordings(args: argparse.Namespace) -> int:
    from pbxmesh.media.v1 import media_pb2 as md
    from pbxmesh.media.v1 import media_pb2_grpc as md_grpc

    if args.action and (args.action[0] != "get" or len(args.action) != 2 or not args.output):
        print("pbxmesh: usage: pbxmesh recordings get SEGMENT_ID -o FILE [--media HOST:PORT]", file=sys.stderr)
        return 2
    with open_channel(args.media, args) as channel:
        stub = md_grpc.MediaServiceStub(channel)
        if args.action:
            return _fetch_recording(stub, args.action[1], args.output)
        found = stub.ListRecordings(md.ListRecordingsRequest(call_id=args.call), timeout=RPC_TIMEOUT).recordings
    if args.json:
        print(json.dumps([MessageToDict(r, always_print_fields_with_no_presence=True) for r in found], indent=2))
        return 0
    rows = []
    for r in found:
        started = datetime.datetime.fromtimestamp(r.started_at.ToMicroseconds() / 1e6).strftime("%Y-%m-%d %H:%M:%S")
        parties = f"{r.local_number} <-> {r.remote_number}"
        state = r.error or ("recording" if not r.sha256 else "")
        rows.append(
            [r.segment_id, started, f"{r.duration_ms / 1000:.2f}s", "held" if r.held else "", parties, r.file, state]
        )
    if rows:
        table(rows, ["SEGMENT", "STARTED", "DURATION", "HELD", "PARTIES", "FILE", "NOTE"])
    else:
        print("no recordings" + (f" of call {args.call}" if args.call else ""))
    return 0


def _fetch_recording(stub: Any, segment_id: str, output: str) -> int:
    from pbxmesh.media.v1 import media_pb2 as md

    written = 0
    with open(output, "wb") as file:
        for part in stub.GetRecording(md.GetRecordingRequest(segment_id=segment_id), timeout=60):
            if part.WhichOneof("part") == "chunk":
                file.write(part.chunk)
                written += len(part.chunk)
    print(f"{segment_id}: {written} bytes written to {output}")
    return 0
