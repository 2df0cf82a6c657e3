"""A request a provider challenged (401 or 407), sent again with credentials (RFC 3261 22.2):
the same request with a new branch, the next CSeq and the answer to the best challenge of the
response. A nonce is answered once, unless the provider says it went stale, and a request is
answered at most MAX_ANSWERS times: a provider that challenges the answer again (with the same
nonce or a fresh one) does not take the credentials, and sending them again would loop."""

from __future__ import annotations

from services.sipgw.auth.digest_client import answer_challenge, choose_challenge
from services.sipgw.sip import Request, Response
from services.sipgw.sip.headers import Headers
from services.sipgw.sip.transaction import new_branch

_REPLACED = ("via", "cseq", "authorization", "proxy-authorization")
MAX_ANSWERS = 2  # a first challenge, and one more for a nonce gone stale


def with_credentials(
    request: Request, response: Response, username: str, password: str, cseq: int, answered: set[str]
) -> Request | None:
    """``request`` again with CSeq ``cseq`` and the answer to ``response``'s challenge; None when
    its nonce was answered already or the request was answered MAX_ANSWERS times (``answered``
    collects the nonces). Raises DigestError when the challenge cannot be answered."""
    challenge = choose_challenge(response)
    if len(answered) >= MAX_ANSWERS or (challenge.nonce in answered and not challenge.stale):
        return None
    credentials = answer_challenge(challenge.value, request.method, str(request.uri), username, password, request.body)
    answered.add(challenge.nonce)
    headers = Headers()
    via = request.headers.get_lines("Via")[0].split(";branch=")[0]
    headers.add("Via", f"{via};branch={new_branch()};rport")
    for name, value in request.headers:
        if name.lower() not in _REPLACED:
            headers.add(name, value)
    headers.add("CSeq", f"{cseq} {request.method}")
    headers.add(challenge.answer_header, credentials)
    return Request(request.method, request.uri, headers, request.body)
