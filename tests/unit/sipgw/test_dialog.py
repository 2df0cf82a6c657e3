"""Dialog state (RFC 3261 section 12): creation on both sides, requests inside, CSeq, refresh."""

from __future__ import annotations

from services.sipgw.sip import Request, Response, parse
from services.sipgw.sip.dialog import Dialog

VIA = "SIP/2.0/UDP 127.0.0.1:5060"

INVITE = (
    "INVITE sip:100@127.0.0.1 SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:5099;branch=z9hG4bKinv1\r\n"
    "Record-Route: <sip:127.0.0.5;lr>, <sip:127.0.0.6;lr>\r\n"
    'Max-Forwards: 70\r\nFrom: "Bob" <sip:200@127.0.0.1>;tag=bob1\r\nTo: <sip:100@127.0.0.1>\r\n'
    "Call-ID: dlg-1\r\nCSeq: 7 INVITE\r\nContact: <sip:200@127.0.0.1:5099>\r\nContent-Length: 0\r\n\r\n"
)
OK = (
    "SIP/2.0 200 OK\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:5099;branch=z9hG4bKinv1\r\n"
    "Record-Route: <sip:127.0.0.5;lr>, <sip:127.0.0.6;lr>\r\n"
    'From: "Bob" <sip:200@127.0.0.1>;tag=bob1\r\nTo: <sip:100@127.0.0.1>;tag=alice1\r\n'
    "Call-ID: dlg-1\r\nCSeq: 7 INVITE\r\nContact: <sip:100@127.0.0.1:5061>\r\nContent-Length: 0\r\n\r\n"
)


def req(text: str) -> Request:
    message = parse(text.encode())
    assert isinstance(message, Request)
    return message


def resp(text: str) -> Response:
    message = parse(text.encode())
    assert isinstance(message, Response)
    return message


def in_dialog(method: str, cseq: int, contact: str = "") -> Request:
    extra = f"Contact: <{contact}>\r\n" if contact else ""
    return req(
        f"{method} sip:100@127.0.0.1:5061 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5099;branch=z9hG4bK{method}{cseq}\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:200@127.0.0.1>;tag=bob1\r\nTo: <sip:100@127.0.0.1>;tag=alice1\r\n"
        f"Call-ID: dlg-1\r\nCSeq: {cseq} {method}\r\n{extra}Content-Length: 0\r\n\r\n"
    )


def test_uas_dialog_from_an_invite() -> None:
    dialog = Dialog.as_uas(req(INVITE), "alice1", "<sip:100@127.0.0.1:5061>")
    assert dialog.key == ("dlg-1", "alice1", "bob1")
    assert str(dialog.remote_target) == "sip:200@127.0.0.1:5099"
    assert dialog.route_set == ["<sip:127.0.0.5;lr>", "<sip:127.0.0.6;lr>"]
    bye = dialog.request("BYE", VIA)
    assert str(bye.uri) == "sip:200@127.0.0.1:5099"
    assert bye.headers.get_lines("Route") == ["<sip:127.0.0.5;lr>", "<sip:127.0.0.6;lr>"]
    assert bye.from_addr.tag == "alice1" and bye.to_addr.tag == "bob1" and bye.call_id == "dlg-1"
    assert bye.cseq.method == "BYE" and dialog.request("INFO", VIA).cseq.number == bye.cseq.number + 1
    assert bye.top_via.branch is not None and bye.top_via.branch.startswith("z9hG4bK")
    assert "Contact" not in bye.headers


def test_uac_dialog_from_a_2xx_and_the_end_to_end_ack() -> None:
    dialog = Dialog.as_uac(req(INVITE), resp(OK))
    assert dialog.key == ("dlg-1", "bob1", "alice1")
    assert dialog.route_set == ["<sip:127.0.0.6;lr>", "<sip:127.0.0.5;lr>"]  # reversed for the UAC
    ack = dialog.ack(VIA, 7)
    assert ack.method == "ACK" and ack.cseq.number == 7 and str(ack.uri) == "sip:100@127.0.0.1:5061"
    reinvite = dialog.request("INVITE", VIA, b"v=0\r\n", "application/sdp")
    assert reinvite.cseq.number == 8 and reinvite.headers.get("Content-Type") == "application/sdp"
    assert reinvite.headers.get("Contact") == "<sip:200@127.0.0.1:5099>"


def test_incoming_requests_keep_cseq_order_and_refresh_the_target() -> None:
    dialog = Dialog.as_uas(req(INVITE), "alice1", "<sip:100@127.0.0.1:5061>")
    assert not dialog.receive(in_dialog("BYE", 7))  # not above the INVITE's 7: 500
    assert dialog.receive(in_dialog("INVITE", 8, "sip:200@127.0.0.1:6000"))
    assert str(dialog.remote_target) == "sip:200@127.0.0.1:6000"
    assert dialog.receive(in_dialog("UPDATE", 9, "sip:200@127.0.0.1:6001"))
    assert str(dialog.remote_target) == "sip:200@127.0.0.1:6001"
    assert dialog.receive(in_dialog("ACK", 8))  # ACK does not move the counter
    assert dialog.receive(in_dialog("BYE", 10)) and dialog.remote_cseq == 10


def test_a_strict_router_becomes_the_request_uri() -> None:
    invite = req(
        INVITE.replace("Record-Route: <sip:127.0.0.5;lr>, <sip:127.0.0.6;lr>", "Record-Route: <sip:127.0.0.5>")
    )
    dialog = Dialog.as_uas(invite, "alice1", "<sip:100@127.0.0.1:5061>")
    bye = dialog.request("BYE", VIA)
    assert str(bye.uri) == "sip:127.0.0.5"
    assert bye.headers.get_lines("Route") == ["<sip:200@127.0.0.1:5099>"]
