"""Over TLS the gateway's URIs are sips (RFC 5630: TLS on every hop), over UDP and TCP sip."""

from __future__ import annotations

from services.sipgw.routing import Outgoing, Router
from services.sipgw.sip.transport import Address, scheme


class Link:
    def __init__(self, name: str):
        self.name = name
        self.local: Address = ("127.0.0.1", 5070)

    def send(self, data: bytes, address: Address) -> None:
        raise AssertionError("not sent in this test")


def test_a_request_over_tls_names_sips_and_one_over_udp_sip() -> None:
    out = Outgoing("100", "Alice", 70, "c1")
    tls, udp = Link("TLS"), Link("UDP")
    assert (scheme(tls), scheme(udp), scheme(Link("TCP"))) == ("sips", "sip", "sip")
    over_tls = Router.invite("200", f"{scheme(tls)}:200@127.0.0.1:5072", tls, out)
    assert str(over_tls.uri) == "sips:200@127.0.0.1:5072"
    assert over_tls.headers.get("Contact") == "<sips:100@127.0.0.1:5070>"
    assert (over_tls.headers.get("Via") or "").startswith("SIP/2.0/TLS ")
    over_udp = Router.invite("200", "sip:200@127.0.0.1:5072", udp, out)
    assert over_udp.headers.get("Contact") == "<sip:100@127.0.0.1:5070>"
    # A phone on TLS registered a sip URI: it is called at it, with a sip Contact.
    to_phone = Router.invite("200", "sip:200@127.0.0.1:40000;transport=tls", tls, out)
    assert to_phone.headers.get("Contact") == "<sip:100@127.0.0.1:5070>"
