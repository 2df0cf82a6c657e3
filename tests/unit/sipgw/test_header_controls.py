"""Display names written into SIP headers: no control character and no quote reaches the wire,
whatever comes from the plan (the registry refuses them already; this is the last line)."""

from __future__ import annotations

import dataclasses
import re

import pytest

from services.sipgw.auth.trunk_proof import TrunkProof
from services.sipgw.routing import Outgoing, Router
from services.sipgw.sip.headers import Headers
from services.sipgw.trunk import IDENTITY, Trunk
from services.sipgw.trunk_lines import TrunkLines

CONTROL_RE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
HOSTILE = [
    "Eve\r\nVia: SIP/2.0/UDP 6.6.6.6;branch=z9hG4bKevil",
    "Eve\nContact: <sip:eve@6.6.6.6>",
    "nul\x00byte",
    'quote" <sip:eve@6.6.6.6>',
    "line\u2028separator\x85next",
]


@dataclasses.dataclass
class FakeLink:
    name: str = "UDP"
    local: tuple[str, int] = ("127.0.0.1", 5060)


def _clean(value: str) -> None:
    assert not CONTROL_RE.search(value), repr(value)


@pytest.mark.parametrize("display", HOSTILE)
def test_invite_from_header_holds_no_control_character(display: str) -> None:
    out = Outgoing(caller="100", display=display, max_forwards=70, correlation="c1")
    request = Router.invite("200", "sip:200@127.0.0.1:5062", FakeLink(), out)  # type: ignore[arg-type]
    value = request.headers.get("From")
    assert value is not None
    _clean(value)
    name, _, rest = value.rpartition("<")
    assert name.startswith('"') and name.count('"') == 2 and rest.startswith("sip:100@127.0.0.1:5060>;tag=")
    assert [v for n, v in request.headers if n.lower() == "via"] == [request.headers.get("Via")]


@pytest.mark.parametrize("display", HOSTILE)
def test_trunk_identity_holds_no_control_character(display: str) -> None:
    trunk = Trunk("alpha", TrunkProof("s" * 16), TrunkLines(1))
    headers = Headers()
    trunk.identity(headers, "100", display, "c1")
    value = headers.get(IDENTITY)
    assert value is not None
    _clean(value)
    name, _, rest = value.rpartition("<")
    assert name.startswith('"') and name.count('"') == 2 and rest == "sip:100@alpha.pbxmesh.invalid>"
