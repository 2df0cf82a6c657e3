"""SIP messages (RFC 3261 section 7): the model, the parser and the serializer.

    parse(datagram) -> Request | Response        one UDP datagram
    StreamFramer().feed(chunk) -> [messages]      a TCP/TLS byte stream
    message.check()                               the rules a receiver must enforce
    message.to_bytes()                            canonical wire form

Every failure is a ``ParseError(reason, can_reply, status)``.
"""

from services.sipgw.sip.errors import ParseError
from services.sipgw.sip.fields import (
    MAGIC_COOKIE,
    URI,
    AbsoluteURI,
    CSeq,
    NameAddr,
    Params,
    SipURI,
    Via,
    parse_cseq,
    parse_name_addr,
    parse_uri,
    parse_via,
)
from services.sipgw.sip.headers import COMPACT_FORMS, Headers, canonical_name, split_list
from services.sipgw.sip.message import SIP_VERSION, Message, Request, Response
from services.sipgw.sip.parser import MAX_HEADER_FIELDS, MAX_MESSAGE_BYTES, StreamFramer, parse

__all__ = [
    "COMPACT_FORMS",
    "MAGIC_COOKIE",
    "MAX_HEADER_FIELDS",
    "MAX_MESSAGE_BYTES",
    "SIP_VERSION",
    "URI",
    "AbsoluteURI",
    "CSeq",
    "Headers",
    "Message",
    "NameAddr",
    "Params",
    "ParseError",
    "Request",
    "Response",
    "SipURI",
    "StreamFramer",
    "Via",
    "canonical_name",
    "parse",
    "parse_cseq",
    "parse_name_addr",
    "parse_uri",
    "parse_via",
    "split_list",
]
