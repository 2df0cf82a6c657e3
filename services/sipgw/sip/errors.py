"""The one error the SIP message layer raises (RFC 3261 sections 7, 18.3 and 25).

    ParseError      the bytes are not a SIP message we accept, or a parsed message breaks a rule
                    that RFC 3261 / RFC 4475 says a receiver must reject

``can_reply`` tells the transport whether enough was understood to answer (a request whose start
line and Via/From/To/Call-ID/CSeq are readable); ``status`` is the answer to send then (400,
or 505 for an unsupported SIP version). Everything else is dropped silently, as RFC 3261 18.1.2
and 18.2.2 ask for malformed responses and unreadable requests.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from services.sipgw.sip.headers import Headers


class ParseError(ValueError):
    """A message could not be parsed or is invalid; ``reason`` is safe to put in a reason phrase.

    When ``can_reply`` is set, ``headers`` holds the request's fields, to copy into the answer.
    """

    def __init__(self, reason: str, can_reply: bool = False, status: int = 400, headers: Headers | None = None):
        super().__init__(reason)
        self.reason = reason
        self.can_reply = can_reply
        self.status = status
        self.headers = headers if can_reply else None

    def replyable(self, can_reply: bool, headers: Headers | None = None) -> ParseError:
        """The same error with ``can_reply`` decided by the caller, who knows the whole message."""
        return ParseError(self.reason, can_reply, self.status, headers)
