"""Digest answers as a client: RFC 7616 test vectors, the server side's verifier, challenge choice."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import pytest

from services.sipgw.auth import (
    Challenge,
    DigestError,
    NonceFactory,
    answer_challenge,
    choose_challenge,
    parse_credentials,
    verify_response,
)
from services.sipgw.sip import Headers, Response

# RFC 7616 section 3.9.1: one nonce, offered with SHA-256 and with MD5.
RFC_NONCE = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
RFC_OPAQUE = "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"
RFC_CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"


def rfc_challenge(algorithm: str) -> str:
    return (
        f'Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm={algorithm}, '
        f'nonce="{RFC_NONCE}", opaque="{RFC_OPAQUE}"'
    )


@pytest.mark.parametrize(
    ("algorithm", "expected"),
    [
        ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
        ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
    ],
)
def test_rfc7616_example(algorithm: str, expected: str) -> None:
    value = answer_challenge(
        rfc_challenge(algorithm), "GET", "/dir/index.html", "Mufasa", "Circle of Life", cnonce=RFC_CNONCE
    )
    params = parse_credentials(value)
    assert params["response"] == expected
    assert params == {
        "username": "Mufasa",
        "realm": "http-auth@example.org",
        "nonce": RFC_NONCE,
        "uri": "/dir/index.html",
        "response": expected,
        "algorithm": algorithm,
        "cnonce": RFC_CNONCE,
        "qop": "auth",  # auth preferred when both are offered
        "nc": "00000001",
        "opaque": RFC_OPAQUE,
    }
    assert value.startswith("Digest ")


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256"])
def test_round_trip_through_the_servers_verifier(algorithm: str) -> None:
    nonces = NonceFactory(key=b"k" * 32)
    nonce = nonces.issue()
    challenge = Challenge("pbx.test", nonce, algorithm).header_value()
    uri = "sip:provider.test"
    value = answer_challenge(challenge, "REGISTER", uri, "alice", 'p"ss\\word', nc=3)
    params = parse_credentials(value)
    assert verify_response(params, "REGISTER", 'p"ss\\word')
    assert not verify_response(params, "REGISTER", "wrong")
    assert not verify_response(params, "INVITE", 'p"ss\\word')  # the method is hashed in
    assert params["nc"] == "00000003" and nonces.check(params["nonce"]) == "ok"
    assert len(params["cnonce"]) == 32  # drawn at random when not given


def test_no_qop_is_rfc2069_and_verifies() -> None:
    challenge = 'Digest realm="old.test", nonce="abc123"'
    value = answer_challenge(challenge, "INVITE", "sip:100@old.test", "bob", "secret")
    params = parse_credentials(value)
    assert not {"qop", "nc", "cnonce", "algorithm"} & params.keys()
    ha1 = hashlib.md5(b"bob:old.test:secret").hexdigest()
    ha2 = hashlib.md5(b"INVITE:sip:100@old.test").hexdigest()
    assert params["response"] == hashlib.md5(f"{ha1}:abc123:{ha2}".encode()).hexdigest()
    assert verify_response(params, "INVITE", "secret")


def test_auth_int_when_offered_alone_hashes_the_body() -> None:
    challenge = 'Digest realm="r", nonce="n1", qop="auth-int", algorithm=SHA-256'
    body = b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\n"
    value = answer_challenge(challenge, "INVITE", "sip:200@r", "u", "pw", body=body, cnonce="c1")
    params = parse_credentials(value)

    def h(data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()

    ha1 = h(b"u:r:pw")
    ha2 = h(f"INVITE:sip:200@r:{h(body)}".encode())
    assert params["qop"] == "auth-int"
    assert params["response"] == h(f"{ha1}:n1:00000001:c1:auth-int:{ha2}".encode())
    other = answer_challenge(challenge, "INVITE", "sip:200@r", "u", "pw", body=b"", cnonce="c1")
    assert parse_credentials(other)["response"] != params["response"]


@pytest.mark.parametrize(("algorithm", "hasher"), [("MD5-sess", hashlib.md5), ("SHA-256-sess", hashlib.sha256)])
def test_sess_algorithms_hash_nonce_and_cnonce_into_ha1(
    algorithm: str, hasher: Callable[[bytes], hashlib._Hash]
) -> None:
    challenge = f'Digest realm="r", nonce="n2", qop="auth", algorithm={algorithm}'
    params = parse_credentials(answer_challenge(challenge, "REGISTER", "sip:r", "u", "pw", nc=2, cnonce="cc"))

    def h(text: str) -> str:
        return hasher(text.encode()).hexdigest()

    ha1 = h(f"{h('u:r:pw')}:n2:cc")
    assert params["algorithm"] == algorithm
    assert params["response"] == h(f"{ha1}:n2:00000002:cc:auth:{h('REGISTER:sip:r')}")


def test_userhash_sends_the_hashed_user_name() -> None:
    challenge = 'Digest realm="r", nonce="n", qop="auth", algorithm=SHA-256, userhash=true'
    params = parse_credentials(answer_challenge(challenge, "REGISTER", "sip:r", "alice", "pw", cnonce="c"))
    assert params["username"] == hashlib.sha256(b"alice:r").hexdigest()
    assert params["userhash"] == "true"


@pytest.mark.parametrize(
    ("challenge", "message"),
    [
        ('Digest realm="r", nonce="n", algorithm=SHA-512-256', "unsupported algorithm"),
        ('Digest realm="r", algorithm=MD5', "without a nonce"),
        ('Digest nonce="n"', "without a realm"),
        ('Digest realm="r", nonce="n", qop="auth-conf"', "unsupported qop"),
        ('Digest realm="r", nonce="n", algorithm=MD5-sess', "without qop"),
        ('Basic realm="r"', "not a digest scheme"),
        ('Digest realm="r", nonce="n', "unterminated"),
    ],
)
def test_unusable_challenges_raise_a_clear_error(challenge: str, message: str) -> None:
    with pytest.raises(DigestError, match=message) as raised:
        answer_challenge(challenge, "REGISTER", "sip:r", "u", "hunter2-secret")
    assert "hunter2" not in str(raised.value)


def test_bad_arguments_raise() -> None:
    challenge = 'Digest realm="r", nonce="n", qop="auth"'
    with pytest.raises(DigestError, match="line break"):
        answer_challenge(challenge, "REGISTER", "sip:r", "u\r\nX-Evil: 1", "pw")
    with pytest.raises(DigestError, match="nonce count"):
        answer_challenge(challenge, "REGISTER", "sip:r", "u", "pw", nc=0)


def response_with(status: int, name: str, values: list[str]) -> Response:
    headers = Headers()
    for value in values:
        headers.add(name, value)
    return Response(status, "Challenge", headers)


def test_choose_prefers_sha256_and_names_the_answer_header() -> None:
    md5 = 'Digest realm="p.test", nonce="n1", algorithm=MD5, qop="auth"'
    sha = 'Digest realm="p.test", nonce="n1", algorithm=SHA-256, qop="auth", stale=TRUE'
    chosen = choose_challenge(response_with(401, "WWW-Authenticate", [md5, sha]))
    assert (chosen.answer_header, chosen.value, chosen.algorithm) == ("Authorization", sha, "SHA-256")
    assert (chosen.realm, chosen.nonce, chosen.stale) == ("p.test", "n1", True)

    proxy = choose_challenge(response_with(407, "Proxy-Authenticate", [md5]))
    assert (proxy.answer_header, proxy.algorithm, proxy.stale) == ("Proxy-Authorization", "MD5", False)
    # A 407's WWW-Authenticate is not its challenge.
    with pytest.raises(DigestError, match="no Proxy-Authenticate"):
        choose_challenge(response_with(407, "WWW-Authenticate", [md5]))


def test_choose_passes_over_what_it_cannot_answer() -> None:
    unknown = 'Digest realm="p", nonce="n", algorithm=SHA-512-256, qop="auth"'
    basic = 'Basic realm="p"'
    legacy = 'Digest realm="p", nonce="n"'
    chosen = choose_challenge(response_with(401, "WWW-Authenticate", [unknown, basic, legacy]))
    assert chosen.value == legacy and chosen.algorithm == "MD5"
    with pytest.raises(DigestError, match="no usable challenge in the 401"):
        choose_challenge(response_with(401, "WWW-Authenticate", [unknown, basic]))
    with pytest.raises(DigestError, match="not a challenge"):
        choose_challenge(response_with(403, "WWW-Authenticate", [legacy]))
