"""Who may call what, once TLS says who the client is (services/runtime/tls.py).

- This server's own services (its certificate) may call everything.
- Another server of the group may call only what servers ask of each other (a callstate's
  ShareParty), and only while it is a live member; the callstate also checks that the share is
  for a call whose peer it is.
- A client certificate's role: ``read`` lists, reads and watches; ``control`` also places and ends
  calls, changes numbers and lifts lockouts. Neither reaches what only servers call.
- Health checks and reflection are open to any client of the port (probes).

Refusals answer UNAUTHENTICATED (a certificate that names no pbxmesh server or client) or
PERMISSION_DENIED, are logged with the client's identity and address, and counted.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable

import grpc.aio

from services.runtime.errors import PermissionDenied, Unauthenticated, caller
from services.runtime.pki import Identity
from services.runtime.tls import peer_identity

_log = logging.getLogger(__name__)

OPEN = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)
CONTROL = frozenset({
    "/pbxmesh.sipgw.v1.SipGatewayService/PlaceCall",
    "/pbxmesh.sipgw.v1.SipGatewayService/HangUpCall",
    "/pbxmesh.sipgw.v1.SipGatewayService/Unlock",
    "/pbxmesh.registry.v1.RegistryService/UpsertNumber",
    "/pbxmesh.registry.v1.RegistryService/RemoveNumber",
})  # fmt: skip
# Between the services of one server only.
OWN_SERVER = frozenset({
    "/pbxmesh.callstate.v1.CallStateService/ReportCalls",
    "/pbxmesh.media.v1.MediaService/Attach",
    "/pbxmesh.registry.v1.RegistryService/SetProviderState",
})  # fmt: skip
# What another server of the group calls.
PEERS = frozenset({"/pbxmesh.callstate.v1.CallStateService/ShareParty"})


def current_caller() -> Identity | None:
    """The identity of the client of the RPC being served (None on a plain port)."""
    found = caller.get()
    return found if isinstance(found, Identity) else None


class Guard:
    """Checks each RPC against the rules above; ``is_member`` says whether a server id is a live
    member of the group (None: this service does not follow the membership, so no peer passes)."""

    def __init__(self, server_id: str, is_member: Callable[[str], bool] | None = None):
        self.server_id = server_id
        self.is_member = is_member
        self.refused: Counter[tuple[str, str]] = Counter()  # (status, method) -> count

    def check(self, context: grpc.aio.ServicerContext[object, object], method: str) -> Identity | None:
        if method.startswith(OPEN):
            return None
        identity = peer_identity(context)
        if identity is None:
            self._refuse(context, method, "UNAUTHENTICATED", "a certificate that names no pbxmesh server or client")
            raise Unauthenticated("the client certificate names no pbxmesh server or client")
        why = self._why_not(identity, method)
        if why:
            self._refuse(context, method, "PERMISSION_DENIED", f"{identity}: {why}")
            raise PermissionDenied(f"{identity} may not call {method.rsplit('/', 1)[-1]}: {why}")
        return identity

    def _why_not(self, identity: Identity, method: str) -> str:
        if identity.kind == "server":
            if identity.name == self.server_id:
                return ""
            if method not in PEERS:
                return "not a call between servers"
            if self.is_member is None or not self.is_member(identity.name):
                return "not a live member of the group"
            return ""
        if method in OWN_SERVER or method in PEERS:
            return "only servers call it"
        if method in CONTROL and identity.role != "control":
            return "needs the control role"
        return ""

    def _refuse(self, context: grpc.aio.ServicerContext[object, object], method: str, status: str, who: str) -> None:
        self.refused[(status, method)] += 1
        _log.warning("refused %s from %s (%s): %s", method, context.peer(), who, status)

    def counts(self) -> list[tuple[float, dict[str, str]]]:
        """For the metric: refusals by status and method."""
        return [(float(n), {"status": status, "method": method}) for (status, method), n in self.refused.items()]
