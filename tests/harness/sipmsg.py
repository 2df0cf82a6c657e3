"""The SIP message pieces hand-written phones share: header lookup, responses, digest answers.

The phones themselves stay apart: the bench's is an asyncio protocol answering thousands of
calls, the tests' are short blocking scripts for one flow SIPp cannot run (an attended
transfer, a phone that keeps one TCP connection). Text in, text out, RFC 3261 names.
"""

from __future__ import annotations

import hashlib
import re


def header(message: str, name: str) -> str:
    """The first value of header ``name`` (any case), or "" if the message has none."""
    found = re.search(rf"\r\n{name}: ([^\r]*)", message, re.IGNORECASE)
    return found.group(1) if found else ""


def via_lines(request: str) -> str:
    """The request's Via headers as lines, in order (a response copies them, RFC 3261 8.2.6.2)."""
    return "".join(f"Via: {v}\r\n" for v in re.findall(r"\r\nVia: ([^\r]*)", request))


def response(request: str, status: str, *, to_tag: str = "", extra: str = "", body: str = "") -> str:
    """A response to ``request``: its Vias, From, To (with ``to_tag`` when it has no tag yet),
    Call-ID and CSeq, then ``extra`` header lines and ``body``."""
    to = header(request, "To")
    if to_tag and "tag=" not in to:
        to += f";tag={to_tag}"
    return (
        f"SIP/2.0 {status}\r\n{via_lines(request)}From: {header(request, 'From')}\r\nTo: {to}\r\n"
        f"Call-ID: {header(request, 'Call-ID')}\r\nCSeq: {header(request, 'CSeq')}\r\n{extra}"
        f"Content-Length: {len(body)}\r\n\r\n{body}"
    )


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def digest_authorization(
    challenge: str, method: str, uri: str, user: str, password: str, cnonce: str, field: str = "Authorization"
) -> str:
    """The ``field`` header line answering a 401/407's MD5 digest challenge (qop=auth, nc 1;
    RFC 2617 3.2.2)."""
    realm = re.search(r'realm="([^"]+)"', challenge)
    nonce = re.search(r'nonce="([^"]+)"', challenge)
    assert realm and nonce, challenge
    ha1 = md5(f"{user}:{realm.group(1)}:{password}")
    answer = md5(f"{ha1}:{nonce.group(1)}:00000001:{cnonce}:auth:{md5(f'{method}:{uri}')}")
    return (
        f'{field}: Digest username="{user}", realm="{realm.group(1)}", nonce="{nonce.group(1)}", uri="{uri}", '
        f'response="{answer}", algorithm=MD5, qop=auth, nc=00000001, cnonce="{cnonce}"\r\n'
    )
