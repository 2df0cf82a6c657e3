"""A provider that challenges the requests it gets inside a call (a BYE, a re-INVITE): the gateway
answers with the provider's account and sends the request again, and ACKs the 2xx of a re-INVITE
sent again with its new CSeq. The provider is a phone of the in-memory switch whose leg is marked
as a provider's."""

from __future__ import annotations

from services.sipgw.auth.digest import parse_credentials, verify_response
from services.sipgw.call import Side
from services.sipgw.challenged import MAX_ANSWERS
from services.sipgw.sip import Request, Response
from services.sipgw.sip.transport import Address, response_to
from tests.unit.sipgw.switch import Gateway, Network, Phone, settle

ACCOUNT = ("r1", "r1-secret")


class ChallengingProvider(Phone):
    """Answers 407 to an in-dialog INVITE or BYE without right credentials, once per nonce."""

    def __init__(self, *args: object, password: str = ACCOUNT[1], **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.password = password
        self.challenged: list[Request] = []
        self.accepted: list[Request] = []

    def _receive(self, message: Request | Response, source: Address) -> None:
        in_dialog = isinstance(message, Request) and message.to_addr.tag and message.method in ("INVITE", "BYE")
        if in_dialog:
            assert isinstance(message, Request)
            credentials = message.headers.get("Proxy-Authorization")
            right = credentials is not None and verify_response(
                parse_credentials(credentials), message.method, self.password
            )
            if not right:
                self.challenged.append(message)
                challenge = response_to(message.headers, 407, "Proxy Authentication Required")
                nonce = f"nonce-{len(self.challenged)}"
                challenge.headers.add("Proxy-Authenticate", f'Digest realm="carrier", nonce="{nonce}", algorithm=MD5')
                self._send(challenge.to_bytes())
                return
            self.accepted.append(message)
        super()._receive(message, source)


async def provider_call(password: str = ACCOUNT[1]) -> tuple[Gateway, Phone, ChallengingProvider]:
    net = Network()
    alpha = Gateway(net, "alpha", ["100", "101"])
    alice = Phone(net, alpha, "100")
    carrier = ChallengingProvider(net, alpha, "101", password=password)
    alpha.calls.table.credentials = lambda provider: ACCOUNT if provider == "carrier-a" else None
    alice.call("101")
    await settle(lambda: any(r.status == 200 for r in alice.responses), "the call answered")
    alice.ack_answer()
    await settle(lambda: bool(carrier.got("ACK")), "the provider's ACK")
    alpha.calls.active()[0].legs[Side.CALLEE].provider = "carrier-a"
    return alpha, alice, carrier


async def test_a_challenged_reinvite_goes_again_with_credentials_and_its_2xx_is_acked_with_the_new_cseq() -> None:
    _, alice, carrier = await provider_call()
    alice.in_dialog("INVITE", sdp=alice.sdp())
    await settle(lambda: bool(carrier.accepted), "the re-INVITE accepted with credentials")
    (challenged,), (accepted,) = carrier.challenged, carrier.accepted
    assert accepted.cseq.number == challenged.cseq.number + 1
    assert parse_credentials(accepted.headers.get("Proxy-Authorization") or "")["username"] == ACCOUNT[0]
    await settle(lambda: any(a.cseq.number == accepted.cseq.number for a in carrier.got("ACK")), "the 2xx ACKed")
    await settle(lambda: any(r.status == 200 and r.cseq.number == 2 for r in alice.responses), "Alice's 200")
    # The provider's 2xx ACKed once, with the CSeq it was sent with: no ACK for the challenged one
    # but the transaction's own (the 407's).
    assert [a.cseq.number for a in carrier.got("ACK")][-2:] == [challenged.cseq.number, accepted.cseq.number]


async def test_a_challenged_bye_goes_again_with_credentials() -> None:
    alpha, alice, carrier = await provider_call()
    alice.hang_up()
    await settle(lambda: bool(carrier.accepted), "the BYE accepted with credentials")
    assert [r.method for r in carrier.challenged] == ["BYE"] and carrier.accepted[0].method == "BYE"
    await settle(lambda: not alpha.calls.active(), "the call over")


async def test_credentials_the_provider_refuses_are_sent_at_most_twice_even_for_fresh_nonces() -> None:
    alpha, alice, carrier = await provider_call(password="not-what-the-gateway-has")
    alice.hang_up()
    # The BYE, then the BYE with credentials twice (a new nonce each time): three challenges.
    await settle(lambda: len(carrier.challenged) == 1 + MAX_ANSWERS, "the BYE challenged three times")
    await settle(lambda: not alpha.calls.active(), "the call over all the same")
    # Every BYE the gateway has sent has its final answer: it has decided on the last challenge
    # (a BYE sent again would be a transaction still waiting for one).
    await settle(lambda: not _waiting_byes(alpha), "the gateway's BYEs answered")
    assert len(carrier.challenged) == 1 + MAX_ANSWERS and not carrier.accepted


def _waiting_byes(gateway: Gateway) -> list[object]:
    """The gateway's BYE transactions with no final answer yet."""
    clients = gateway.core.transactions.clients
    return [t for key, t in clients.items() if key[-1] == "BYE" and t.state in ("Trying", "Proceeding")]
