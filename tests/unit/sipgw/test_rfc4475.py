"""RFC 4475 torture messages against the SIP parser (services.sipgw.sip).

The messages are transcribed below as bytes (section numbers in each name's comment): the RFC
prints them with bare line ends, ``sip()`` turns those into CRLF as they travel; non-printable
and non-ASCII octets are written as escapes; very long values are built from their repeating
parts, as the RFC itself describes them (section 2.3). Valid messages must parse and pass
``check()``; invalid ones must fail in ``parse`` or in ``check`` the way the RFC asks a receiver
to react (400 possible or not, 505 for the version).
"""

from __future__ import annotations

import pytest

from services.sipgw.sip import AbsoluteURI, ParseError, Request, Response, SipURI, parse


def sip(text: bytes) -> bytes:
    """The message with CRLF line ends."""
    return text.replace(b"\n", b"\r\n")


def sdp(origin: bytes, connection: bytes | None = None, timing: bytes = b"0 0") -> bytes:
    """The SDP body most torture messages carry."""
    return sip(
        b"v=0\no=mhandley 29739 7272939 IN IP4 " + origin + b"\ns=-\nc=IN IP4 " + (connection or origin) + b"\n"
        b"t=" + timing + b"\nm=audio 49217 RTP/AVP 0 12\nm=video 3227 RTP/AVP 31\na=rtpmap:31 LPC\n"
    )


# 3.1.1.1 A Short Tortuous INVITE
WSINV = sip(
    b"INVITE sip:vivekg@chair-dnrc.example.com;unknownparam SIP/2.0\n"
    b"TO :\n"
    b" sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n\n"
    b'from   : "J Rosenberg \\\\\\""       <sip:jdrosen@example.com>\n'
    b"  ;\n"
    b"  tag = 98asjd8\n"
    b"MaX-fOrWaRdS: 0068\n"
    b"Call-ID: wsinv.ndaksdj@192.0.2.1\n"
    b"Content-Length   : 150\n"
    b"cseq: 0009\n"
    b"  INVITE\n"
    b"Via  : SIP  /   2.0\n"
    b" /UDP\n"
    b"    192.0.2.2;branch=390skdjuw\n"
    b"s :\n"
    b"NewFangledHeader:   newfangled value\n"
    b" continued newfangled value\n"
    b"UnknownHeaderWithUnusualValue: ;;,,;;,;\n"
    b"Content-Type: application/sdp\n"
    b"Route:\n"
    b" <sip:services.example.com;lr;unknownwith=value;unknown-no-value>\n"
    b"v:  SIP  / 2.0  / TCP     spindle.example.com   ;\n"
    b"  branch  =   z9hG4bK9ikj8  ,\n"
    b" SIP  /    2.0   / UDP  192.168.255.111   ; branch=\n"
    b" z9hG4bK30239\n"
    b'm:"Quoted string \\"\\"" <sip:jdrosen@example.com> ; newparam =\n'
    b"      newvalue ;\n"
    b"  secondparam ; q = 0.33\n"
    b"\n"
) + sdp(b"192.0.2.3", b"192.0.2.4")

# 3.1.1.2 Wide Range of Valid Characters
INTMETH = sip(
    b"!interesting-Method0123456789_*+`.%indeed'~ sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    b":&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@example.com SIP/2.0\n"
    b"Via: SIP/2.0/TCP host1.example.com;branch=z9hG4bK-.!%66*_+`'~\n"
    b'To: "BEL:\\\x07 NUL:\\\x00 DEL:\\\x7f" <sip:1_unusual.URI~(to-be!sure)&isn\'t+it$/crazy?,/;;*@example.com>\n'
    b"From: token1~` token2'+_ token3*%!.- <sip:mundane@example.com>;fromParam''~+*_!.-%="
    b'"\xd1\x80\xd0\xb0\xd0\xb1\xd0\xbe\xd1\x82\xd0\xb0\xd1\x8e\xd1\x89\xd0\xb8\xd0\xb9"'
    b";tag=_token~1'+`*%!-.\n"
    b"Call-ID: intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{\n"
    b"CSeq: 139122385 !interesting-Method0123456789_*+`.%indeed'~\n"
    b"Max-Forwards: 255\n"
    b"extensionHeader-!.%*+_`'~:\xef\xbb\xbf\xe5\xa4\xa7\xe5\x81\x9c\xe9\x9b\xbb\n"
    b"Content-Length: 0\n"
    b"\n"
)

# 3.1.1.3 Valid Use of the % Escaping Mechanism
ESC01 = sip(
    b"INVITE sip:sips%3Auser%40example.com@example.net SIP/2.0\n"
    b"To: sip:%75se%72@example.com\n"
    b"From: <sip:I%20have%20spaces@example.net>;tag=938\n"
    b"Max-Forwards: 87\n"
    b"i: esc01.239409asdfakjkn23onasd0-3234\n"
    b"CSeq: 234234 INVITE\n"
    b"Via: SIP/2.0/UDP host5.example.net;branch=z9hG4bKkdjuw\n"
    b"C: application/sdp\n"
    b"Contact:\n"
    b"  <sip:cal%6Cer@host5.example.net;%6C%72;n%61me=v%61lue%25%34%31>\n"
    b"Content-Length: 150\n"
    b"\n"
) + sdp(b"192.0.2.1")

# 3.1.1.4 Escaped Nulls in URIs
ESCNULL = sip(
    b"REGISTER sip:example.com SIP/2.0\n"
    b"To: sip:null-%00-null@example.com\n"
    b"From: sip:null-%00-null@example.com;tag=839923423\n"
    b"Max-Forwards: 70\n"
    b"Call-ID: escnull.39203ndfvkjdasfkq3w4otrq0adsfdfnavd\n"
    b"CSeq: 14398234 REGISTER\n"
    b"Via: SIP/2.0/UDP host5.example.com;branch=z9hG4bKkdjuw\n"
    b"Contact: <sip:%00@host5.example.com>\n"
    b"Contact: <sip:%00%00@host5.example.com>\n"
    b"L:0\n"
    b"\n"
)

# 3.1.1.5 Use of % When It Is Not an Escape
ESC02 = sip(
    b"RE%47IST%45R sip:registrar.example.com SIP/2.0\n"
    b'To: "%Z%45" <sip:resource@example.com>\n'
    b'From: "%Z%45" <sip:resource@example.com>;tag=f232jadfj23\n'
    b"Call-ID: esc02.asdfnqwo34rq23i34jrjasdcnl23nrlknsdf\n"
    b"Via: SIP/2.0/TCP host.example.com;branch=z9hG4bK209%fzsnel234\n"
    b"CSeq: 29344 RE%47IST%45R\n"
    b"Max-Forwards: 70\n"
    b"Contact: <sip:alias1@host1.example.com>\n"
    b"C%6Fntact: <sip:alias2@host2.example.com>\n"
    b"Contact: <sip:alias3@host3.example.com>\n"
    b"l: 0\n"
    b"\n"
)

# 3.1.1.6 Message with No LWS between Display Name and <
LWSDISP = sip(
    b"OPTIONS sip:user@example.com SIP/2.0\n"
    b"To: sip:user@example.com\n"
    b"From: caller<sip:caller@example.com>;tag=323\n"
    b"Max-Forwards: 70\n"
    b"Call-ID: lwsdisp.1234abcd@funky.example.com\n"
    b"CSeq: 60 OPTIONS\n"
    b"Via: SIP/2.0/UDP funky.example.com;branch=z9hG4bKkdjuw\n"
    b"l: 0\n"
    b"\n"
)

# 3.1.1.7 Long Values in Header Fields
LONG_DISPLAY = b"I have a user name of " + b"extreme" * 10 + b" proportion"
LONG_TAG = b"1" + b"298" * 50 + b"2424"
LONG_CALLER = b"amazinglylongcallername" * 5
LONG_BRANCH = b"very" + b"long" * 50 + b"branchvalue"
LONGREQ = (
    sip(
        b"INVITE sip:user@example.com SIP/2.0\n"
        b'To: "' + LONG_DISPLAY + b'"<sip:user@example.com:6000;unknownparam1=very' + b"long" * 20 + b"value;"
        b"longparam" + b"name" * 25 + b"=shortvalue;very" + b"long" * 25 + b"ParameterNameWithNoValue>\n"
        b"F: sip:" + LONG_CALLER + b"@example.net;tag=" + LONG_TAG + b";unknownheaderparam" + b"name" * 20 + b"="
        b"unknowheaderparam" + b"value" * 15 + b";unknownValueless" + b"paramname" * 10 + b"\n"
        b"Call-ID: longreq.one" + b"really" * 20 + b"longcallid\n"
        b"CSeq: 3882340 INVITE\n"
        b"Unknown-" + b"Long" * 20 + b"-Name: unknown-" + b"long" * 20 + b"-value; unknown-" + b"long" * 20 + b""
        b"-parameter-name = unknown-" + b"long" * 20 + b"-parameter-value\n"
        b"Via: SIP/2.0/TCP sip33.example.com\n"
        b"v: SIP/2.0/TCP sip32.example.com\n"
        b"V: SIP/2.0/TCP sip31.example.com\n"
        b"Via: SIP/2.0/TCP sip30.example.com\n"
        b"ViA: SIP/2.0/TCP sip29.example.com\n"
        b"VIa: SIP/2.0/TCP sip28.example.com\n"
        b"VIA: SIP/2.0/TCP sip27.example.com\n"
        b"via: SIP/2.0/TCP sip26.example.com\n"
        b"viA: SIP/2.0/TCP sip25.example.com\n"
        b"vIa: SIP/2.0/TCP sip24.example.com\n"
        b"vIA: SIP/2.0/TCP sip23.example.com\n"
        b"V :  SIP/2.0/TCP sip22.example.com\n"
        b"v :  SIP/2.0/TCP sip21.example.com\n"
        b"V  : SIP/2.0/TCP sip20.example.com\n"
        b"v  : SIP/2.0/TCP sip19.example.com\n"
        b"Via : SIP/2.0/TCP sip18.example.com\n"
        b"Via  : SIP/2.0/TCP sip17.example.com\n"
    )
    + b"".join(b"Via: SIP/2.0/TCP sip%d.example.com\r\n" % n for n in range(16, 0, -1))
    + sip(
        b"Via: SIP/2.0/TCP host.example.com;received=192.0.2.5;branch=" + LONG_BRANCH + b"\n"
        b"Max-Forwards: 70\n"
        b"Contact: <sip:" + LONG_CALLER + b"@host5.example.net>\n"
        b"Content-Type: application/sdp\n"
        b"l: 150\n"
        b"\n"
    )
    + sdp(b"192.0.2.1")
)

# 3.1.1.8 Extra Trailing Octets in a UDP Datagram
DBLREQ = sip(
    b"REGISTER sip:example.com SIP/2.0\n"
    b"To: sip:j.user@example.com\n"
    b"From: sip:j.user@example.com;tag=43251j3j324\n"
    b"Max-Forwards: 8\n"
    b"I: dblreq.0ha0isndaksdj99sdfafnl3lk233412\n"
    b"Contact: sip:j.user@host.example.com\n"
    b"CSeq: 8 REGISTER\n"
    b"Via: SIP/2.0/UDP 192.0.2.125;branch=z9hG4bKkdjuw23492\n"
    b"Content-Length: 0\n"
    b"\n"
    b"INVITE sip:joe@example.com SIP/2.0\n"
    b"t: sip:joe@example.com\n"
    b"From: sip:caller@example.net;tag=141334\n"
    b"Max-Forwards: 8\n"
    b"Call-ID: dblreq.0ha0isnda977644900765@192.0.2.15\n"
    b"CSeq: 8 INVITE\n"
    b"Via: SIP/2.0/UDP 192.0.2.15;branch=z9hG4bKkdjuw380234\n"
    b"Content-Type: application/sdp\n"
    b"Content-Length: 150\n"
    b"\n"
) + sdp(b"192.0.2.15")

# 3.1.1.9 Semicolon-Separated Parameters in URI User Part
SEMIURI = sip(
    b"OPTIONS sip:user;par=u%40example.net@example.com SIP/2.0\n"
    b"To: sip:j_user@example.com\n"
    b"From: sip:caller@example.org;tag=33242\n"
    b"Max-Forwards: 3\n"
    b"Call-ID: semiuri.0ha0isndaksdj\n"
    b"CSeq: 8 OPTIONS\n"
    b"Accept: application/sdp, application/pkcs7-mime,\n"
    b"        multipart/mixed, multipart/signed,\n"
    b"        message/sip, message/sipfrag\n"
    b"Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKkdjuw\n"
    b"l: 0\n"
    b"\n"
)

# 3.1.1.10 Varied and Unknown Transport Types
TRANSPORTS = sip(
    b"OPTIONS sip:user@example.com SIP/2.0\n"
    b"To: sip:user@example.com\n"
    b"From: <sip:caller@example.com>;tag=323\n"
    b"Max-Forwards: 70\n"
    b"Call-ID:  transports.kijh4akdnaqjkwendsasfdj\n"
    b"Accept: application/sdp\n"
    b"CSeq: 60 OPTIONS\n"
    b"Via: SIP/2.0/UDP t1.example.com;branch=z9hG4bKkdjuw\n"
    b"Via: SIP/2.0/SCTP t2.example.com;branch=z9hG4bKklasjdhf\n"
    b"Via: SIP/2.0/TLS t3.example.com;branch=z9hG4bK2980unddj\n"
    b"Via: SIP/2.0/UNKNOWN t4.example.com;branch=z9hG4bKasd0f3en\n"
    b"Via: SIP/2.0/TCP t5.example.com;branch=z9hG4bK0a9idfnee\n"
    b"l: 0\n"
    b"\n"
)

# 3.1.1.11 Multipart MIME Message. The binary part (a CMS signature in the RFC) cannot be copied
# from the text; a stand-in of the same framing, with NUL and CR/LF octets, fills it to 553 octets.
_MPART_TEXT = sip(b"--7a9cbec02ceef655\nContent-Type: text/plain\nContent-Transfer-Encoding: binary\n\nHello\n")
_MPART_BINARY_HEAD = sip(
    b"--7a9cbec02ceef655\nContent-Type: application/octet-stream\nContent-Transfer-Encoding: binary\n\n"
)
_MPART_TAIL = sip(b"\n--7a9cbec02ceef655--\n")
_MPART_FILL = 553 - len(_MPART_TEXT) - len(_MPART_BINARY_HEAD) - len(_MPART_TAIL)
MPART01_BODY = _MPART_TEXT + _MPART_BINARY_HEAD + (b"0\x82\x00\r\n\x00\xff" * 100)[:_MPART_FILL] + _MPART_TAIL
MPART01 = (
    sip(
        b"MESSAGE sip:kumiko@example.org SIP/2.0\n"
        b"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-d87543-4dade06d0bdb11ee-1--d87543-;rport\n"
        b"Max-Forwards: 70\n"
        b"Route: <sip:127.0.0.1:5080>\n"
        b"Identity: r5mwreLuyDRYBi/0TiPwEsY3rEVsk/G2WxhgTV1PF7hHuLIK0YWVKZhKv9Mj8UeXqkMVbnVq37CD+813gvYjcBUaZngQmXc9"
        b"WNZSDNGCzA+fWl9MEUHWIZo1CeJebdY/XlgKeTa0Olvq0rt70Q5jiSfbqMJmQFteeivUhkMWYUA=\n"
        b"Contact: <sip:fluffy@127.0.0.1:5070>\n"
        b"To: <sip:kumiko@example.org>\n"
        b"From: <sip:fluffy@example.com>;tag=2fb0dcc9\n"
        b"Call-ID: 3d9485ad0c49859b@Zmx1ZmZ5LW1hYy0xNi5sb2NhbA..\n"
        b"CSeq: 1 MESSAGE\n"
        b"Content-Transfer-Encoding: binary\n"
        b"Content-Type: multipart/mixed;boundary=7a9cbec02ceef655\n"
        b"Date: Sat, 15 Oct 2005 04:44:56 GMT\n"
        b"User-Agent: SIPimp.org/0.2.5 (curses)\n"
        b"Content-Length: 553\n"
        b"\n"
    )
    + MPART01_BODY
)

# 3.1.1.12 Unusual Reason Phrase
UNREASON_PHRASE = (
    b"= 2**3 * 5**2 \xd0\xbd\xd0\xbe \xd1\x81\xd1\x82\xd0\xbe \xd0\xb4\xd0\xb5\xd0\xb2\xd1\x8f\xd0\xbd\xd0\xbe"
    b"\xd1\x81\xd1\x82\xd0\xbe \xd0\xb4\xd0\xb5\xd0\xb2\xd1\x8f\xd1\x82\xd1\x8c - "
    b"\xd0\xbf\xd1\x80\xd0\xbe\xd1\x81\xd1\x82\xd0\xbe\xd0\xb5"
)
UNREASON = sip(
    b"SIP/2.0 200 " + UNREASON_PHRASE + b"\n"
    b"Via: SIP/2.0/UDP 192.0.2.198;branch=z9hG4bK1324923\n"
    b"Call-ID: unreason.1234ksdfak3j2erwedfsASdf\n"
    b"CSeq: 35 INVITE\n"
    b"From: sip:user@example.com;tag=11141343\n"
    b"To: sip:user@example.edu;tag=2229\n"
    b"Content-Length: 154\n"
    b"Content-Type: application/sdp\n"
    b"Contact: <sip:user@host198.example.com>\n"
    b"\n"
) + sdp(b"192.0.2.198")

# 3.1.1.13 Empty Reason Phrase
NOREASON = sip(
    b"SIP/2.0 100 \n"
    b"Via: SIP/2.0/UDP 192.0.2.105;branch=z9hG4bK2398ndaoe\n"
    b"Call-ID: noreason.asndj203insdf99223ndf\n"
    b"CSeq: 35 INVITE\n"
    b"From: <sip:user@example.com>;tag=39ansfi3\n"
    b"To: <sip:user@example.edu>;tag=902jndnke3\n"
    b"Content-Length: 0\n"
    b"Contact: <sip:user@host105.example.com>\n"
    b"\n"
)


# 3.1.2.1 Extraneous Header Field Separators
BADINV01 = sip(
    b"INVITE sip:user@example.com SIP/2.0\n"
    b"To: sip:j.user@example.com\n"
    b"From: sip:caller@example.net;tag=134161461246\n"
    b"Max-Forwards: 7\n"
    b"Call-ID: badinv01.0ha0isndaksdjasdf3234nas\n"
    b"CSeq: 8 INVITE\n"
    b"Via: SIP/2.0/UDP 192.0.2.15;;,;,,\n"
    b'Contact: "Joe" <sip:joe@example.org>;;;;\n'
    b"Content-Length: 152\n"
    b"Content-Type: application/sdp\n"
    b"\n"
) + sdp(b"192.0.2.15")

# 3.1.2.2 Content Length Larger Than Message
CLERR = sip(
    b"INVITE sip:user@example.com SIP/2.0\n"
    b"Max-Forwards: 80\n"
    b"To: sip:j.user@example.com\n"
    b"From: sip:caller@example.net;tag=93942939o2\n"
    b"Contact: <sip:caller@hungry.example.net>\n"
    b"Call-ID: clerr.0ha0isndaksdjweiafasdk3\n"
    b"CSeq: 8 INVITE\n"
    b"Via: SIP/2.0/UDP host5.example.com;branch=z9hG4bK-39234-23523\n"
    b"Content-Type: application/sdp\n"
    b"Content-Length: 9999\n"
    b"\n"
) + sdp(b"192.0.2.155")

# 3.1.2.3 Negative Content-Length
NCL = sip(
    b"INVITE sip:user@example.com SIP/2.0\n"
    b"Max-Forwards: 254\n"
    b"To: sip:j.user@example.com\n"
    b"From: sip:caller@example.net;tag=32394234\n"
    b"Call-ID: ncl.0ha0isndaksdj2193423r542w35\n"
    b"CSeq: 0 INVITE\n"
    b"Via: SIP/2.0/UDP 192.0.2.53;branch=z9hG4bKkdjuw\n"
    b"Contact: <sip:caller@example53.example.net>\n"
    b"Content-Type: application/sdp\n"
    b"Content-Length: -999\n"
    b"\n"
) + sdp(b"192.0.2.53")

# 3.1.2.4 Request Scalar Fields with Overlarge Values
SCALAR02 = sip(
    b"REGISTER sip:example.com SIP/2.0\n"
    b"Via: SIP/2.0/TCP host129.example.com;branch=z9hG4bK342sdfoi3\n"
    b"To: <sip:user@example.com>\n"
    b"From: <sip:user@example.com>;tag=239232jh3\n"
    b"CSeq: 36893488147419103232 REGISTER\n"
    b"Call-ID: scalar02.23o0pd9vanlq3wnrlnewofjas9ui32\n"
    b"Max-Forwards: 300\n"
    b"Expires: 1" + b"0" * 100 + b"\n"
    b"Contact: <sip:user@host129.example.com>\n"
    b"  ;expires=280297596632815\n"
    b"Content-Length: 0\n"
    b"\n"
)

# 3.1.2.5 Response Scalar Fields with Overlarge Values
SCALARLG = sip(
    b"SIP/2.0 503 Service Unavailable\n"
    b"Via: SIP/2.0/TCP host129.example.com;branch=z9hG4bKzzxdiwo34sw;received=192.0.2.129\n"
    b"To: <sip:user@example.com>\n"
    b"From: <sip:other@example.net>;tag=2easdjfejw\n"
    b"CSeq: 9292394834772304023312 OPTIONS\n"
    b"Call-ID: scalarlg.noase0of0234hn2qofoaf0232aewf2394r\n"
    b"Retry-After: 949302838503028349304023988\n"
    b'Warning: 1812 overture "In Progress"\n'
    b"Content-Length: 0\n"
    b"\n"
)

# 3.1.2.6 Unterminated Quoted String in Display Name
QUOTBAL = sip(
    b"INVITE sip:user@example.com SIP/2.0\n"
    b'To: "Mr. J. User <sip:j.user@example.com>\n'
    b"From: sip:caller@example.net;tag=93334\n"
    b"Max-Forwards: 10\n"
    b"Call-ID: quotbal.aksdj\n"
    b"Contact: <sip:caller@host59.example.net>\n"
    b"CSeq: 8 INVITE\n"
    b"Via: SIP/2.0/UDP 192.0.2.59:5050;branch=z9hG4bKkdjuw39234\n"
    b"Content-Type: application/sdp\n"
    b"Content-Length: 152\n"
    b"\n"
) + sdp(b"192.0.2.15")


def _invite_with_sdp(request_line: bytes, fields: bytes, origin: bytes, timing: bytes = b"0 0") -> bytes:
    body = sdp(origin, timing=timing)
    return sip(request_line + b"\n" + fields + b"Content-Length: %d\n\n" % len(body)) + body


# 3.1.2.7 <> Enclosing Request-URI
LTGTRURI = _invite_with_sdp(
    b"INVITE <sip:user@example.com> SIP/2.0",
    b"To: sip:user@example.com\nFrom: sip:caller@example.net;tag=39291\nMax-Forwards: 23\n"
    b"Call-ID: ltgtruri.1@192.0.2.5\nCSeq: 1 INVITE\nVia: SIP/2.0/UDP 192.0.2.5\n"
    b"Contact: <sip:caller@host5.example.net>\nContent-Type: application/sdp\n",
    b"192.0.2.5",
    b"3149328700 0",
)

# 3.1.2.8 Malformed SIP Request-URI (embedded LWS)
LWSRURI = _invite_with_sdp(
    b"INVITE sip:user@example.com; lr SIP/2.0",
    b"To: sip:user@example.com;tag=3xfe-9921883-z9f\nFrom: sip:caller@example.net;tag=231413434\n"
    b"Max-Forwards: 5\nCall-ID: lwsruri.asdfasdoeoi2323-asdfwrn23-asd834rk423\nCSeq: 2130706432 INVITE\n"
    b"Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKkdjuw2395\nContact: <sip:caller@host1.example.net>\n"
    b"Content-Type: application/sdp\n",
    b"192.0.2.1",
    b"3149328700 0",
)

# 3.1.2.9 Multiple SP Separating Request-Line Elements
LWSSTART = _invite_with_sdp(
    b"INVITE  sip:user@example.com  SIP/2.0",
    b"Max-Forwards: 8\nTo: sip:user@example.com\nFrom: sip:caller@example.net;tag=8814\n"
    b"Call-ID: lwsstart.dfknq234oi243099adsdfnawe3@example.com\nCSeq: 1893884 INVITE\n"
    b"Via: SIP/2.0/UDP host1.example.com;branch=z9hG4bKkdjuw3923\nContact: <sip:caller@host1.example.net>\n"
    b"Content-Type: application/sdp\n",
    b"192.0.2.1",
)

# 3.1.2.10 SP Characters at End of Request-Line
TRWS = sip(
    b"OPTIONS sip:remote-target@example.com SIP/2.0  \n"
    b"Via: SIP/2.0/TCP host1.examle.com;branch=z9hG4bK299342093\n"
    b"To: <sip:remote-target@example.com>\n"
    b"From: <sip:local-resource@example.com>;tag=329429089\n"
    b"Call-ID: trws.oicu34958239neffasdhr2345r\n"
    b"Accept: application/sdp\n"
    b"CSeq: 238923 OPTIONS\n"
    b"Max-Forwards: 70\n"
    b"Content-Length: 0\n"
    b"\n"
)

# 3.1.2.11 Escaped Headers in SIP Request-URI
ESCRURI = _invite_with_sdp(
    b"INVITE sip:user@example.com?Route=%3Csip:example.com%3E SIP/2.0",
    b"To: sip:user@example.com\nFrom: sip:caller@example.net;tag=341518\nMax-Forwards: 7\n"
    b"Contact: <sip:caller@host39923.example.net>\nCall-ID: escruri.23940-asdfhj-aje3br-234q098w-fawerh2q-h4n5\n"
    b"CSeq: 149209342 INVITE\nVia: SIP/2.0/UDP host-of-the-hour.example.com;branch=z9hG4bKkdjuw\n"
    b"Content-Type: application/sdp\n",
    b"192.0.2.1",
)

# 3.1.2.12 Invalid Time Zone in Date Header Field
BADDATE = _invite_with_sdp(
    b"INVITE sip:user@example.com SIP/2.0",
    b"To: sip:user@example.com\nFrom: sip:caller@example.net;tag=2234923\nMax-Forwards: 70\n"
    b"Call-ID: baddate.239423mnsadf3j23lj42--sedfnm234\nCSeq: 1392934 INVITE\n"
    b"Via: SIP/2.0/UDP host.example.com;branch=z9hG4bKkdjuw\nDate: Fri, 01 Jan 2010 16:00:00 EST\n"
    b"Contact: <sip:caller@host5.example.net>\nContent-Type: application/sdp\n",
    b"192.0.2.5",
)

# 3.1.2.13 Failure to Enclose name-addr URI in <>
REGBADCT = sip(
    b"REGISTER sip:example.com SIP/2.0\n"
    b"To: sip:user@example.com\n"
    b"From: sip:user@example.com;tag=998332\n"
    b"Max-Forwards: 70\n"
    b"Call-ID: regbadct.k345asrl3fdbv@10.0.0.1\n"
    b"CSeq: 1 REGISTER\n"
    b"Via: SIP/2.0/UDP 135.180.130.133:5060;branch=z9hG4bKkdjuw\n"
    b"Contact: sip:user@example.com?Route=%3Csip:sip.example.com%3E\n"
    b"l: 0\n"
    b"\n"
)

# 3.1.2.14 Spaces within addr-spec
BADASPEC = sip(
    b"OPTIONS sip:user@example.org SIP/2.0\n"
    b"Via: SIP/2.0/UDP host4.example.com:5060;branch=z9hG4bKkdju43234\n"
    b"Max-Forwards: 70\n"
    b'From: "Bell, Alexander" <sip:a.g.bell@example.com>;tag=433423\n'
    b'To: "Watson, Thomas" < sip:t.watson@example.org >\n'
    b"Call-ID: badaspec.sdf0234n2nds0a099u23h3hnnw009cdkne3\n"
    b"Accept: application/sdp\n"
    b"CSeq: 3923239 OPTIONS\n"
    b"l: 0\n"
    b"\n"
)

# 3.1.2.15 Non-token Characters in Display Name
BADDN = sip(
    b"OPTIONS sip:t.watson@example.org SIP/2.0\n"
    b"Via:     SIP/2.0/UDP c.example.com:5060;branch=z9hG4bKkdjuw\n"
    b"Max-Forwards:      70\n"
    b"From:    Bell, Alexander <sip:a.g.bell@example.com>;tag=43\n"
    b"To:      Watson, Thomas <sip:t.watson@example.org>\n"
    b"Call-ID: baddn.31415@c.example.com\n"
    b"Accept: application/sdp\n"
    b"CSeq:    3923239 OPTIONS\n"
    b"l: 0\n"
    b"\n"
)

# 3.1.2.16 Unknown Protocol Version
BADVERS = sip(
    b"OPTIONS sip:t.watson@example.org SIP/7.0\n"
    b"Via:     SIP/7.0/UDP c.example.com;branch=z9hG4bKkdjuw\n"
    b"Max-Forwards:     70\n"
    b"From:    A. Bell <sip:a.g.bell@example.com>;tag=qweoiqpe\n"
    b"To:      T. Watson <sip:t.watson@example.org>\n"
    b"Call-ID: badvers.31417@c.example.com\n"
    b"CSeq:    1 OPTIONS\n"
    b"l: 0\n"
    b"\n"
)

# 3.1.2.17 Start Line and CSeq Method Mismatch
MISMATCH01 = sip(
    b"OPTIONS sip:user@example.com SIP/2.0\n"
    b"To: sip:j.user@example.com\n"
    b"From: sip:caller@example.net;tag=34525\n"
    b"Max-Forwards: 6\n"
    b"Call-ID: mismatch01.dj0234sxdfl3\n"
    b"CSeq: 8 INVITE\n"
    b"Via: SIP/2.0/UDP host.example.com;branch=z9hG4bKkdjuw\n"
    b"l: 0\n"
    b"\n"
)

# 3.1.2.18 Unknown Method with CSeq Method Mismatch
MISMATCH02 = sip(
    b"NEWMETHOD sip:user@example.com SIP/2.0\n"
    b"To: sip:j.user@example.com\n"
    b"From: sip:caller@example.net;tag=34525\n"
    b"Max-Forwards: 6\n"
    b"Call-ID: mismatch02.dj0234sxdfl3\n"
    b"CSeq: 8 INVITE\n"
    b"Contact: <sip:caller@host.example.net>\n"
    b"Via: SIP/2.0/UDP host.example.net;branch=z9hG4bKkdjuw\n"
    b"Content-Type: application/sdp\n"
    b"l: 138\n"
    b"\n"
    b"v=0\n"
    b"o=mhandley 29739 7272939 IN IP4 192.0.2.1\n"
    b"c=IN IP4 192.0.2.1\n"
    b"m=audio 49217 RTP/AVP 0 12\n"
    b"m=video 3227 RTP/AVP 31\n"
    b"a=rtpmap:31 LPC\n"
)

# 3.1.2.19 Overlarge Response Code
BIGCODE = sip(
    b"SIP/2.0 4294967301 better not break the receiver\n"
    b"Via: SIP/2.0/UDP 192.0.2.105;branch=z9hG4bK2398ndaoe\n"
    b"Call-ID: bigcode.asdof3uj203asdnf3429uasdhfas3ehjasdfas9i\n"
    b"CSeq: 353494 INVITE\n"
    b"From: <sip:user@example.com>;tag=39ansfi3\n"
    b"To: <sip:user@example.edu>;tag=902jndnke3\n"
    b"Content-Length: 0\n"
    b"Contact: <sip:user@host105.example.com>\n"
    b"\n"
)

# 3.2.1 Missing Transaction Identifier (branch is only the magic cookie)
BADBRANCH = sip(
    b"OPTIONS sip:user@example.com SIP/2.0\n"
    b"To: sip:user@example.com\n"
    b"From: sip:caller@example.org;tag=33242\n"
    b"Max-Forwards: 3\n"
    b"Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK\n"
    b"Accept: application/sdp\n"
    b"Call-ID: badbranch.sadonfo23i420jv0as0derf3j3n\n"
    b"CSeq: 8 OPTIONS\n"
    b"l: 0\n"
    b"\n"
)

# 3.3.1 Missing Required Header Fields
INSUF = sip(
    b"INVITE sip:user@example.com SIP/2.0\n"
    b"CSeq: 193942 INVITE\n"
    b"Via: SIP/2.0/UDP 192.0.2.95;branch=z9hG4bKkdj.insuf\n"
    b"Content-Type: application/sdp\n"
    b"l: 152\n"
    b"\n"
) + sdp(b"192.0.2.95")

# 3.3.2 Request-URI with Unknown Scheme
UNKSCM = sip(
    b"OPTIONS nobodyKnowsThisScheme:totallyopaquecontent SIP/2.0\n"
    b"To: sip:user@example.com\n"
    b"From: sip:caller@example.net;tag=384\n"
    b"Max-Forwards: 3\n"
    b"Call-ID: unkscm.nasdfasser0q239nwsdfasdkl34\n"
    b"CSeq: 3923423 OPTIONS\n"
    b"Via: SIP/2.0/TCP host9.example.com;branch=z9hG4bKkdjuw39234\n"
    b"Content-Length: 0\n"
    b"\n"
)

# 3.3.3 Request-URI with Known but Atypical Scheme
NOVELSC = sip(
    b"OPTIONS soap.beep://192.0.2.103:3002 SIP/2.0\n"
    b"To: sip:user@example.com\n"
    b"From: sip:caller@example.net;tag=384\n"
    b"Max-Forwards: 3\n"
    b"Call-ID: novelsc.asdfasser0q239nwsdfasdkl34\n"
    b"CSeq: 3923423 OPTIONS\n"
    b"Via: SIP/2.0/TCP host9.example.com;branch=z9hG4bKkdjuw39234\n"
    b"Content-Length: 0\n"
    b"\n"
)

# 3.3.4 Unknown URI Schemes in Header Fields
UNKSM2 = sip(
    b"REGISTER sip:example.com SIP/2.0\n"
    b"To: isbn:2983792873\n"
    b"From: <http://www.example.com>;tag=3234233\n"
    b"Call-ID: unksm2.daksdj@hyphenated-host.example.com\n"
    b"CSeq: 234902 REGISTER\n"
    b"Max-Forwards: 70\n"
    b"Via: SIP/2.0/UDP 192.0.2.21:5060;branch=z9hG4bKkdjuw\n"
    b"Contact: <name:John_Smith>\n"
    b"l: 0\n"
    b"\n"
)

# 3.3.5 Proxy-Require and Require
BEXT01 = sip(
    b"OPTIONS sip:user@example.com SIP/2.0\n"
    b"To: sip:j_user@example.com\n"
    b"From: sip:caller@example.net;tag=242etr\n"
    b"Max-Forwards: 6\n"
    b"Call-ID: bext01.0ha0isndaksdj\n"
    b"Require: nothingSupportsThis, nothingSupportsThisEither\n"
    b"Proxy-Require: noProxiesSupportThis, norDoAnyProxiesSupportThis\n"
    b"CSeq: 8 OPTIONS\n"
    b"Via: SIP/2.0/TLS fold-and-staple.example.com;branch=z9hG4bKkdjuw\n"
    b"Content-Length: 0\n"
    b"\n"
)

# 3.3.6 Unknown Content-Type
INVUT = sip(
    b"INVITE sip:user@example.com SIP/2.0\n"
    b"Contact: <sip:caller@host5.example.net>\n"
    b"To: sip:j.user@example.com\n"
    b"From: sip:caller@example.net;tag=8392034\n"
    b"Max-Forwards: 70\n"
    b"Call-ID: invut.0ha0isndaksdjadsfij34n23d\n"
    b"CSeq: 235448 INVITE\n"
    b"Via: SIP/2.0/UDP somehost.example.com;branch=z9hG4bKkdjuw\n"
    b"Content-Type: application/unknownformat\n"
    b"Content-Length: 40\n"
    b"\n"
    b"<audio>\n"
    b' <pcmu port="443"/>\n'
    b"</audio>\n"
)

# 3.3.7 Unknown Authorization Scheme
REGAUT01 = sip(
    b"REGISTER sip:example.com SIP/2.0\n"
    b"To: sip:j.user@example.com\n"
    b"From: sip:j.user@example.com;tag=87321hj23128\n"
    b"Max-Forwards: 8\n"
    b"Call-ID: regaut01.0ha0isndaksdj\n"
    b"CSeq: 9338 REGISTER\n"
    b"Via: SIP/2.0/TCP 192.0.2.253;branch=z9hG4bKkdjuw\n"
    b"Authorization: NoOneKnowsThisScheme opaque-data=here\n"
    b"Content-Length:0\n"
    b"\n"
)

# 3.3.8 Multiple Values in Single Value Required Fields
MULTI01 = (
    sip(
        b"INVITE sip:user@company.com SIP/2.0\n"
        b"Contact: <sip:caller@host25.example.net>\n"
        b"Via: SIP/2.0/UDP 192.0.2.25;branch=z9hG4bKkdjuw\n"
        b"Max-Forwards: 70\n"
        b"CSeq: 5 INVITE\n"
        b"Call-ID: multi01.98asdh@192.0.2.1\n"
        b"CSeq: 59 INVITE\n"
        b"Call-ID: multi01.98asdh@192.0.2.2\n"
        b"From: sip:caller@example.com;tag=3413415\n"
        b"To: sip:user@example.com\n"
        b"To: sip:other@example.net\n"
        b"From: sip:caller@example.net;tag=2923420123\n"
        b"Content-Type: application/sdp\n"
        b"l: 154\n"
        b"Contact: <sip:caller@host36.example.net>\n"
        b"Max-Forwards: 5\n"
        b"\n"
    )
    + sdp(b"192.0.2.25")
    + b"\r\n"
)

# 3.3.9 Multiple Content-Length Values
MCL01 = sip(
    b"OPTIONS sip:user@example.com SIP/2.0\n"
    b"Via: SIP/2.0/UDP host5.example.net;branch=z9hG4bK293423\n"
    b"To: sip:user@example.com\n"
    b"From: sip:other@example.net;tag=3923942\n"
    b"Call-ID: mcl01.fhn2323orihawfdoa3o4r52o3irsdf\n"
    b"CSeq: 15932 OPTIONS\n"
    b"Content-Length: 13\n"
    b"Max-Forwards: 60\n"
    b"Content-Length: 5\n"
    b"Content-Type: text/plain\n"
    b"\n"
    b"There's no way to know how many octets are supposed to be here.\n"
)

# 3.3.10 200 OK Response with Broadcast Via Header Field Value
BCAST = sip(
    b"SIP/2.0 200 OK\n"
    b"Via: SIP/2.0/UDP 192.0.2.198;branch=z9hG4bK1324923\n"
    b"Via: SIP/2.0/UDP 255.255.255.255;branch=z9hG4bK1saber23\n"
    b"Call-ID: bcast.0384840201234ksdfak3j2erwedfsASdf\n"
    b"CSeq: 35 INVITE\n"
    b"From: sip:user@example.com;tag=11141343\n"
    b"To: sip:user@example.edu;tag=2229\n"
    b"Content-Length: 154\n"
    b"Content-Type: application/sdp\n"
    b"Contact: <sip:user@host28.example.com>\n"
    b"\n"
) + sdp(b"192.0.2.198")

# 3.3.11 Max-Forwards of Zero
ZEROMF = sip(
    b"OPTIONS sip:user@example.com SIP/2.0\n"
    b"To: sip:user@example.com\n"
    b"From: sip:caller@example.net;tag=3ghsd41\n"
    b"Call-ID: zeromf.jfasdlfnm2o2l43r5u0asdfas\n"
    b"CSeq: 39234321 OPTIONS\n"
    b"Via: SIP/2.0/UDP host1.example.com;branch=z9hG4bKkdjuw2349i\n"
    b"Max-Forwards: 0\n"
    b"Content-Length: 0\n"
    b"\n"
)

# 3.3.12 REGISTER with a Contact Header Parameter
CPARAM01 = sip(
    b"REGISTER sip:example.com SIP/2.0\n"
    b"Via: SIP/2.0/UDP saturn.example.com:5060;branch=z9hG4bKkdjuw\n"
    b"Max-Forwards: 70\n"
    b"From: sip:watson@example.com;tag=DkfVgjkrtMwaerKKpe\n"
    b"To: sip:watson@example.com\n"
    b"Call-ID: cparam01.70710@saturn.example.com\n"
    b"CSeq: 2 REGISTER\n"
    b"Contact: sip:+19725552222@gw1.example.net;unknownparam\n"
    b"l: 0\n"
    b"\n"
)

# 3.3.13 REGISTER with a url-parameter
CPARAM02 = (
    CPARAM01.replace(b"tag=DkfVgjkrtMwaerKKpe", b"tag=838293")
    .replace(b"cparam01", b"cparam02")
    .replace(
        b"CSeq: 2 REGISTER\r\nContact: sip:+19725552222@gw1.example.net;unknownparam",
        b"CSeq: 3 REGISTER\r\nContact: <sip:+19725552222@gw1.example.net;unknownparam>",
    )
)

# 3.3.14 REGISTER with a URL Escaped Header
REGESCRT = sip(
    b"REGISTER sip:example.com SIP/2.0\n"
    b"To: sip:user@example.com\n"
    b"From: sip:user@example.com;tag=8\n"
    b"Max-Forwards: 70\n"
    b"Call-ID: regescrt.k345asrl3fdbv@192.0.2.1\n"
    b"CSeq: 14398234 REGISTER\n"
    b"Via: SIP/2.0/UDP host5.example.com;branch=z9hG4bKkdjuw\n"
    b"M: <sip:user@example.com?Route=%3Csip:sip.example.com%3E>\n"
    b"L:0\n"
    b"\n"
)

# 3.3.15 Unacceptable Accept Offering
SDP01 = sip(
    b"INVITE sip:user@example.com SIP/2.0\n"
    b"To: sip:j_user@example.com\n"
    b"Contact: <sip:caller@host15.example.net>\n"
    b"From: sip:caller@example.net;tag=234\n"
    b"Max-Forwards: 5\n"
    b"Call-ID: sdp01.ndaksdj9342dasdd\n"
    b"Accept: text/nobodyKnowsThis\n"
    b"CSeq: 8 INVITE\n"
    b"Via: SIP/2.0/UDP 192.0.2.15;branch=z9hG4bKkdjuw\n"
    b"Content-Length: 150\n"
    b"Content-Type: application/sdp\n"
    b"\n"
) + sdp(b"192.0.2.5")

# 3.4.1 INVITE with RFC 2543 Syntax (no branch, no Max-Forwards, no Content-Length over UDP)
INV2543 = sip(
    b"INVITE sip:UserB@example.com SIP/2.0\n"
    b"Via: SIP/2.0/UDP iftgw.example.com\n"
    b"From: <sip:+13035551111@ift.client.example.net;user=phone>\n"
    b"Record-Route: <sip:UserB@example.com;maddr=ss1.example.com>\n"
    b"To: sip:+16505552222@ss1.example.net;user=phone\n"
    b"Call-ID: inv2543.1717@ift.client.example.com\n"
    b"CSeq: 56 INVITE\n"
    b"Content-Type: application/sdp\n"
    b"\n"
    b"v=0\n"
    b"o=mhandley 29739 7272939 IN IP4 192.0.2.5\n"
    b"s=-\n"
    b"c=IN IP4 192.0.2.5\n"
    b"t=0 0\n"
    b"m=audio 49217 RTP/AVP 0\n"
)

# The messages RFC 4475 calls well formed, and those outside 3.1 that a parser must accept too.
VALID = {
    "wsinv": WSINV,
    "intmeth": INTMETH,
    "esc01": ESC01,
    "escnull": ESCNULL,
    "esc02": ESC02,
    "lwsdisp": LWSDISP,
    "longreq": LONGREQ,
    "dblreq": DBLREQ,
    "semiuri": SEMIURI,
    "transports": TRANSPORTS,
    "mpart01": MPART01,
    "unreason": UNREASON,
    "noreason": NOREASON,
    "badbranch": BADBRANCH,
    "unkscm": UNKSCM,
    "novelsc": NOVELSC,
    "unksm2": UNKSM2,
    "bext01": BEXT01,
    "invut": INVUT,
    "regaut01": REGAUT01,
    "bcast": BCAST,
    "zeromf": ZEROMF,
    "cparam01": CPARAM01,
    "cparam02": CPARAM02,
    "regescrt": REGESCRT,
    "sdp01": SDP01,
    "inv2543": INV2543,
}

# name -> (message, rejected by parse() or by check(), can_reply, status)
INVALID = {
    "badinv01": (BADINV01, "check", True, 400),
    "clerr": (CLERR, "parse", True, 400),
    "ncl": (NCL, "parse", True, 400),
    "scalar02": (SCALAR02, "check", True, 400),
    "scalarlg": (SCALARLG, "check", False, 400),
    "quotbal": (QUOTBAL, "check", True, 400),
    "ltgtruri": (LTGTRURI, "parse", True, 400),
    "lwsruri": (LWSRURI, "parse", True, 400),
    "lwsstart": (LWSSTART, "parse", True, 400),
    "trws": (TRWS, "parse", True, 400),
    "escruri": (ESCRURI, "check", True, 400),
    "baddate": (BADDATE, "check", True, 400),
    "regbadct": (REGBADCT, "check", True, 400),
    "badaspec": (BADASPEC, "check", True, 400),
    "baddn": (BADDN, "check", True, 400),
    "badvers": (BADVERS, "check", True, 505),
    "mismatch01": (MISMATCH01, "check", True, 400),
    "mismatch02": (MISMATCH02, "check", True, 400),
    "bigcode": (BIGCODE, "parse", False, 400),
    "insuf": (INSUF, "parse", False, 400),
    "multi01": (MULTI01, "check", True, 400),
    "mcl01": (MCL01, "parse", True, 400),
}


def test_declared_lengths_match_the_transcribed_bodies() -> None:
    # Guards the transcription: every body is exactly as long as the RFC's Content-Length says.
    for name, message in {**VALID, **{k: v[0] for k, v in INVALID.items()}}.items():
        if name in ("clerr", "ncl", "mcl01", "dblreq", "inv2543", "multi01"):
            continue
        head, _, body = message.partition(b"\r\n\r\n")
        fields = [line.split(b":", 1) for line in head.split(b"\r\n")[1:] if b":" in line]
        [length] = [value for name, value in fields if name.strip().lower() in (b"l", b"content-length")]
        assert int(length) == len(body), name


@pytest.mark.parametrize("name", VALID)
def test_valid_message_parses_checks_and_round_trips(name: str) -> None:
    message = parse(VALID[name])
    message.check()
    wire = message.to_bytes()
    again = parse(wire)
    again.check()
    assert again.to_bytes() == wire
    assert again.body == message.body


@pytest.mark.parametrize("name", INVALID)
def test_invalid_message_is_rejected(name: str) -> None:
    data, stage, can_reply, status = INVALID[name]
    with pytest.raises(ParseError) as caught:
        parse(data).check()
    if stage == "check":
        parse(data)  # readable: the rule breaks only show when the fields are examined
    assert caught.value.can_reply is can_reply
    assert caught.value.status == status


def _request(data: bytes) -> Request:
    message = parse(data)
    assert isinstance(message, Request)
    return message


def _response(data: bytes) -> Response:
    message = parse(data)
    assert isinstance(message, Response)
    return message


def test_wsinv_folding_compact_forms_and_odd_spacing() -> None:
    message = _request(WSINV)
    assert message.method == "INVITE"
    assert isinstance(message.uri, SipURI)
    assert (message.uri.user, message.uri.host, message.uri.params) == (
        "vivekg",
        "chair-dnrc.example.com",
        {"unknownparam": None},
    )
    assert message.to_addr.tag == "1918181833n"
    assert message.to_addr.display_name is None
    assert message.from_addr.display_name == 'J Rosenberg \\"'
    assert message.from_addr.tag == "98asjd8"
    assert message.max_forwards == 68
    assert message.call_id == "wsinv.ndaksdj@192.0.2.1"
    assert (message.cseq.number, message.cseq.method) == (9, "INVITE")
    assert [(v.transport, v.host, v.branch) for v in message.vias] == [
        ("UDP", "192.0.2.2", "390skdjuw"),
        ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", "z9hG4bK30239"),
    ]
    assert message.headers.get("Subject") == ""
    assert message.headers.get("newfangledheader") == "newfangled value continued newfangled value"
    assert message.headers.get_all("UnknownHeaderWithUnusualValue") == [";;,,;;,;"]
    [contact] = message.contacts
    assert contact.display_name == 'Quoted string ""'
    assert contact.params == {"newparam": "newvalue", "secondparam": None, "q": "0.33"}
    assert len(message.body) == 150


def test_intmeth_unusual_characters() -> None:
    message = _request(INTMETH)
    assert message.method == "!interesting-Method0123456789_*+`.%indeed'~"
    assert message.cseq.method == message.method
    assert isinstance(message.uri, SipURI)
    assert message.uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert message.uri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    assert message.top_via.branch == "z9hG4bK-.!%66*_+`'~"
    assert message.to_addr.display_name == "BEL:\x07 NUL:\x00 DEL:\x7f"
    assert message.from_addr.display_name == "token1~` token2'+_ token3*%!.-"
    assert message.from_addr.tag == "_token~1'+`*%!-."
    working = "\u0440\u0430\u0431\u043e\u0442\u0430\u044e\u0449\u0438\u0439"
    assert message.from_addr.param("fromParam''~+*_!.-%") == f'"{working}"'
    assert message.call_id == "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"
    assert message.headers.get("extensionHeader-!.%*+_`'~") == "\ufeff\u5927\u505c\u96fb"
    assert message.max_forwards == 255


def test_escapes_stay_as_written() -> None:
    esc01 = _request(ESC01)
    assert isinstance(esc01.uri, SipURI)
    assert (esc01.uri.user, esc01.uri.host) == ("sips%3Auser%40example.com", "example.net")
    assert esc01.call_id == "esc01.239409asdfakjkn23onasd0-3234"
    assert esc01.headers.get("Content-Type") == "application/sdp"
    contact_uri = esc01.contacts[0].uri
    assert isinstance(contact_uri, SipURI)
    assert contact_uri.params == {"%6C%72": None, "n%61me": "v%61lue%25%34%31"}

    escnull = _request(ESCNULL)
    users = [c.uri.user for c in escnull.contacts if isinstance(c.uri, SipURI)]
    assert users == ["%00", "%00%00"]

    esc02 = _request(ESC02)
    assert esc02.method == "RE%47IST%45R"
    assert esc02.to_addr.display_name == "%Z%45"
    assert [str(c.uri) for c in esc02.contacts] == ["sip:alias1@host1.example.com", "sip:alias3@host3.example.com"]
    assert esc02.headers.get("C%6Fntact") == "<sip:alias2@host2.example.com>"


def test_lwsdisp_longreq_dblreq_semiuri_transports() -> None:
    assert _request(LWSDISP).from_addr.display_name == "caller"

    longreq = _request(LONGREQ)
    assert len(longreq.vias) == 34
    assert [v.host for v in longreq.vias[:33]] == [f"sip{n}.example.com" for n in range(33, 0, -1)]
    assert longreq.vias[-1].received == "192.0.2.5"
    assert longreq.vias[-1].branch == LONG_BRANCH.decode()
    assert longreq.from_addr.tag == LONG_TAG.decode()
    assert longreq.to_addr.display_name == LONG_DISPLAY.decode()
    assert isinstance(longreq.to_addr.uri, SipURI)
    assert longreq.to_addr.uri.port == 6000
    assert len(longreq.to_addr.uri.params) == 3

    dblreq = _request(DBLREQ)
    assert (dblreq.method, dblreq.body) == ("REGISTER", b"")
    assert b"INVITE" not in dblreq.to_bytes()

    semiuri = _request(SEMIURI)
    assert isinstance(semiuri.uri, SipURI)
    assert (semiuri.uri.user, semiuri.uri.params) == ("user;par=u%40example.net", {})
    assert len(semiuri.headers.get_all("Accept")) == 6

    transports = _request(TRANSPORTS)
    assert [v.transport for v in transports.vias] == ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]


def test_mpart01_binary_body_and_date() -> None:
    message = _request(MPART01)
    assert message.body == MPART01_BODY
    assert b"\x00" in message.body
    assert message.top_via.has_rport and message.top_via.rport is None
    assert (message.top_via.host, message.top_via.port) == ("127.0.0.1", 5070)
    assert message.headers.get("Date") == "Sat, 15 Oct 2005 04:44:56 GMT"


def test_reason_phrases() -> None:
    unreason = _response(UNREASON)
    assert (unreason.status, unreason.reason) == (200, UNREASON_PHRASE.decode())
    assert unreason.to_bytes().startswith(b"SIP/2.0 200 " + UNREASON_PHRASE + b"\r\n")
    noreason = _response(NOREASON)
    assert (noreason.status, noreason.reason) == (100, "")


def test_application_layer_messages_parse_as_written() -> None:
    assert _request(BADBRANCH).top_via.branch == "z9hG4bK"
    unkscm = _request(UNKSCM)
    assert unkscm.uri == AbsoluteURI("nobodyKnowsThisScheme", "totallyopaquecontent")
    assert _request(NOVELSC).uri == AbsoluteURI("soap.beep", "//192.0.2.103:3002")
    unksm2 = _request(UNKSM2)
    assert unksm2.to_addr.uri == AbsoluteURI("isbn", "2983792873")
    assert unksm2.contacts[0].uri == AbsoluteURI("name", "John_Smith")
    assert _request(BEXT01).headers.get_all("Require") == ["nothingSupportsThis", "nothingSupportsThisEither"]
    assert _request(REGAUT01).headers.get_all("Authorization") == ["NoOneKnowsThisScheme opaque-data=here"]
    assert _response(BCAST).vias[1].host == "255.255.255.255"
    assert _request(ZEROMF).max_forwards == 0
    cparam01, cparam02 = _request(CPARAM01).contacts[0], _request(CPARAM02).contacts[0]
    assert cparam01.params == {"unknownparam": None}  # addr-spec form: a header parameter
    assert isinstance(cparam02.uri, SipURI)
    assert (cparam02.params, cparam02.uri.params) == ({}, {"unknownparam": None})
    regescrt = _request(REGESCRT).contacts[0].uri
    assert isinstance(regescrt, SipURI)
    assert regescrt.headers == "Route=%3Csip:sip.example.com%3E"
    inv2543 = _request(INV2543)
    assert inv2543.top_via.branch is None
    assert inv2543.max_forwards is None
    assert inv2543.body.endswith(b"m=audio 49217 RTP/AVP 0\r\n")  # no Content-Length: to the datagram's end
