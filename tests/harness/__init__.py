"""What tests, benches and scripts start: real service processes, sites and phones.

- ``process``: one ``pbxmesh serve SERVICE`` process, ready when its gRPC health says SERVING;
  stopped with SIGTERM, a bounded wait, then SIGKILL; its log lines kept.
- ``config``: config files with every listen port fixed (and free) before the start.
- ``servers``: the registry (``Server``, ``Group``), the gateway and the callstate as tests use them.
- ``site``: a server's registry, callstate and gateway together (``Spec``, ``running_sites``).
- ``sipp``: SIPp phones (register, wait for a call once ready, place a call, wait for the end).
- ``baresip``: a real softphone driven over its control port.
- ``sipmsg``: the pieces of SIP that hand-written phones share (headers, replies, digest).
- ``wait``: waiting on conditions, never on fixed sleeps.
- ``dns``: a tiny authoritative DNS server on 127.0.0.1 (``DnsServer``), for DNS lookups' tests.

Scripts and benches import it with the repository root on ``sys.path``; it needs nothing but
the product's own dependencies (no pytest).
"""

from tests.harness.config import fixed_ports, lone_gateway_config, loopback, write_config
from tests.harness.process import REPO, ServiceError, ServiceProcess, child_env, start_all, stop_all
from tests.harness.servers import (
    CallState,
    Gateway,
    Group,
    Server,
    has_numbers,
    lacks_number,
    member_ids_are,
    owner_is,
    start_gateway,
    stop_gateway,
)
from tests.harness.sipp import phones_done, register_phone, run, sipp_args, sipp_call, start_phone, stop_phones, tool
from tests.harness.site import SECRET, Site, Spec, logs_of, make_site, running_sites, stop_sites
from tests.harness.wait import wait_for, wait_until

__all__ = [
    "REPO",
    "SECRET",
    "CallState",
    "Gateway",
    "Group",
    "Server",
    "ServiceError",
    "ServiceProcess",
    "Site",
    "Spec",
    "child_env",
    "fixed_ports",
    "has_numbers",
    "lacks_number",
    "logs_of",
    "lone_gateway_config",
    "loopback",
    "make_site",
    "member_ids_are",
    "owner_is",
    "phones_done",
    "register_phone",
    "run",
    "running_sites",
    "sipp_args",
    "sipp_call",
    "start_all",
    "start_gateway",
    "start_phone",
    "stop_all",
    "stop_gateway",
    "stop_phones",
    "stop_sites",
    "tool",
    "wait_for",
    "wait_until",
    "write_config",
]
