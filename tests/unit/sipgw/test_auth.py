"""Digest authentication, the lockout of failing sources, and the trunk proof."""

from __future__ import annotations

import pytest

from services.runtime.config_lockout import LockoutSection
from services.sipgw.auth import (
    Challenge,
    DigestError,
    Lockout,
    NonceFactory,
    TrunkProof,
    TrunkProofError,
    parse_credentials,
    verify_response,
)

# RFC 2617 section 3.5 (MD5, qop=auth).
RFC2617 = (
    'Digest username="Mufasa", realm="testrealm@host.com", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", '
    'uri="/dir/index.html", qop=auth, nc=00000001, cnonce="0a4f113b", '
    'response="6629fae49393a05397450978507c4ef1", opaque="5ccc069c403ebaf9f0171e9517f40e41"'
)
# RFC 7616 section 3.9.1 (SHA-256).
RFC7616 = (
    'Digest username="Mufasa", realm="http-auth@example.org", uri="/dir/index.html", algorithm=SHA-256, '
    'nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", nc=00000001, '
    'cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ", qop=auth, '
    'response="753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1", '
    'opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"'
)


def test_rfc_vectors_md5_and_sha256() -> None:
    assert verify_response(parse_credentials(RFC2617), "GET", "Circle Of Life")
    assert not verify_response(parse_credentials(RFC2617), "GET", "Circle of life")
    assert verify_response(parse_credentials(RFC7616), "GET", "Circle of Life")
    assert not verify_response(parse_credentials(RFC7616), "POST", "Circle of Life")


def test_parse_credentials_quotes_escapes_and_errors() -> None:
    params = parse_credentials('Digest username="a\\"b", realm="r,x", nonce=n, uri="sip:1@h", response="ab"')
    assert params == {"username": 'a"b', "realm": "r,x", "nonce": "n", "uri": "sip:1@h", "response": "ab"}
    for bad in ("Basic abc", 'Digest username="x', "Digest username", "Digest a=1, a=2", "Digest " + "a" * 5000):
        with pytest.raises(DigestError):
            parse_credentials(bad)
    with pytest.raises(DigestError, match="unsupported algorithm"):
        verify_response(parse_credentials(RFC2617.replace("qop=auth", "algorithm=SHA-512, qop=auth")), "GET", "x")
    with pytest.raises(DigestError, match="missing response"):
        verify_response({"username": "a", "realm": "r", "nonce": "n", "uri": "u"}, "GET", "x")


def test_nonces_are_ours_expire_and_refuse_replayed_counts() -> None:
    now = [1000.0]
    factory = NonceFactory(key=b"k" * 32, lifetime=60, clock=lambda: now[0])
    nonce = factory.issue()
    assert factory.check(nonce) == "ok"
    assert NonceFactory(key=b"z" * 32, clock=lambda: now[0]).check(nonce) == "bad"
    assert factory.check("not-a-nonce") == "bad" and factory.check(nonce[:-2] + "AA") == "bad"
    now[0] += 61
    assert factory.check(nonce) == "stale"
    assert factory.fresh_count(nonce, 1) and factory.fresh_count(nonce, 2)
    assert not factory.fresh_count(nonce, 2) and not factory.fresh_count(nonce, 1)
    challenge = Challenge("pbx", nonce, "SHA-256", stale=True).header_value()
    assert challenge.startswith('Digest realm="pbx"') and "algorithm=SHA-256" in challenge and "stale=true" in challenge


def test_lockout_delays_then_locks_a_source_then_lets_it_go() -> None:
    now = [0.0]
    settings = LockoutSection(source_free_failures=3, source_lock_failures=6, source_window=60)
    lockout = Lockout(settings, clock=lambda: now[0])
    source = "127.0.0.9"
    for n in range(3):
        assert lockout.check(f"{n}", source).action == "allow"
        lockout.failed(f"{n}", source)  # one guess on each of many numbers: the source counts them
    first = lockout.check("9", source)
    assert first.action == "delay" and first.delay > 0 and first.by == "source"
    lockout.failed("3", source)
    assert lockout.check("9", source).delay > first.delay  # slower with each failure
    lockout.failed("4", source)
    lockout.failed("5", source)
    assert lockout.check("9", source).action == "locked"
    assert lockout.check("9", "127.0.0.10").action == "allow"  # others are not punished
    now[0] += 301
    assert lockout.check("9", source).action == "allow"


def test_a_dictionary_attack_on_one_account_is_locked_out_long_before_it_gets_far() -> None:
    lockout = Lockout(clock=lambda: 0.0)
    tried = 0
    for n in range(1000):
        if lockout.check("100", f"127.0.0.{n % 200}").action == "locked":  # from many addresses
            break
        lockout.failed("100", f"127.0.0.{n % 200}")
        tried += 1
    assert tried == LockoutSection().lock_failures


def test_trunk_proof_binds_the_request_and_the_time() -> None:
    now = [1_800_000_000.0]
    proof = TrunkProof("the-group-secret-0123", clock=lambda: now[0])
    fields = ("INVITE", "sip:200@127.0.0.1:5070", "call-1", "1 INVITE", "tag-a", "z9hG4bK1", b"v=0\r\n")
    value = proof.sign(*fields)
    proof.verify(value, *fields, once=False)
    proof.verify(value, "INVITE", "sip:200@127.0.0.1:5070", "call-1", "1  INVITE", "tag-a", "z9hG4bK1", b"v=0\r\n",
                 once=False)  # fmt: skip
    for changed in (
        ("INVITE", "sip:201@127.0.0.1:5070", "call-1", "1 INVITE", "tag-a", "z9hG4bK1", b"v=0\r\n"),
        ("INVITE", "sip:200@127.0.0.1:5070", "call-2", "1 INVITE", "tag-a", "z9hG4bK1", b"v=0\r\n"),
        ("INVITE", "sip:200@127.0.0.1:5070", "call-1", "1 INVITE", "tag-a", "z9hG4bK1", b"v=1\r\n"),
        # Another Via branch is another request: a captured proof cannot start a second one.
        ("INVITE", "sip:200@127.0.0.1:5070", "call-1", "1 INVITE", "tag-a", "z9hG4bK2", b"v=0\r\n"),
        # The asserted headers are covered too: another caller cannot be slipped into a signed request.
        ("INVITE", "sip:200@127.0.0.1:5070", "call-1", "1 INVITE", "tag-a", "z9hG4bK1", b"v=0\r\n",
         "<sip:999@x>\nalpha\n\n"),
    ):  # fmt: skip
        with pytest.raises(TrunkProofError, match="wrong"):
            proof.verify(value, *changed)
    with pytest.raises(TrunkProofError, match="wrong"):
        TrunkProof("another-secret-456789", clock=lambda: now[0]).verify(value, *fields)
    for bad in (None, "", "v2;ts=x;sig=y", "v2;ts=1;sig=y", value + ";extra=1", value.replace("v2;", "v1;")):
        with pytest.raises(TrunkProofError):
            proof.verify(bad, *fields)
    now[0] += 31
    with pytest.raises(TrunkProofError, match="window"):
        proof.verify(value, *fields)
    assert "the-group-secret" not in value


def test_a_trunk_proof_is_good_once() -> None:
    now = [1_800_000_000.0]
    proof = TrunkProof("the-group-secret-0123", clock=lambda: now[0])
    fields = ("INVITE", "sip:200@127.0.0.1:5070", "call-1", "1 INVITE", "tag-a", "z9hG4bK1")
    value = proof.sign(*fields)
    proof.verify(value, *fields)
    now[0] += 19  # the probe sent it again 19 s later
    with pytest.raises(TrunkProofError, match="replayed"):
        proof.verify(value, *fields)
    ack = ("ACK", "sip:200@127.0.0.1:5070", "call-1", "1 ACK", "tag-a", "z9hG4bK9")
    ack_value = proof.sign(*ack)
    proof.verify(ack_value, *ack, once=False)
    proof.verify(ack_value, *ack, once=False)  # an ACK resent with the 2xx it answers
    # Proofs leave the table once their time window is over: it stays small under steady traffic.
    for n in range(100):
        now[0] += 1
        other = ("OPTIONS", "sip:200@127.0.0.1:5070", f"call-{n}", "1 OPTIONS", "tag-a", f"z9hG4bK-{n}")
        proof.verify(proof.sign(*other), *other)
    assert len(proof._seen) <= 61


def test_bytes_from_the_wire_that_are_not_text_are_digest_errors() -> None:
    params = parse_credentials(RFC2617)
    with pytest.raises(DigestError, match="hexadecimal"):
        verify_response({**params, "response": "é" * 32}, "GET", "Circle Of Life")
    with pytest.raises(DigestError, match="not text"):
        verify_response({**params, "username": "Mu\udcfffasa"}, "GET", "Circle Of Life")
    value = Challenge('pbx "main"\\', "n").header_value()
    assert value.startswith('Digest realm="pbx \\"main\\"\\\\", nonce="n"')


def test_the_counts_of_expired_nonces_are_not_kept() -> None:
    now = [1000.0]
    factory = NonceFactory(key=b"k" * 32, lifetime=60, clock=lambda: now[0])
    for _ in range(3000):  # 50 phones a second for a minute
        assert factory.fresh_count(factory.issue(), 1)
        now[0] += 0.02
    now[0] += 61
    assert factory.fresh_count(factory.issue(), 1)
    assert len(factory._counts) == 1


def test_a_change_of_trunk_secret_accepts_both_and_signs_with_the_current_one() -> None:
    old, new = "the-group-secret-0123", "the-next-group-secret-456"
    fields = ("INVITE", "sip:200@127.0.0.1:5070", "call-1", "1 INVITE", "tag-a", "z9hG4bK1")
    moving = TrunkProof(old, accepted=(new,))  # step 1: accepts the new one, signs with the old one
    moved = TrunkProof(new, accepted=(old,))  # step 2: signs with the new one, accepts the old one
    done = TrunkProof(new)  # step 3
    moved.verify(moving.sign(*fields), *fields)
    moving.verify(moved.sign(*fields[:-1], "z9hG4bK2"), *fields[:-1], "z9hG4bK2")
    done.verify(moved.sign(*fields[:-1], "z9hG4bK3"), *fields[:-1], "z9hG4bK3")
    with pytest.raises(TrunkProofError, match="wrong"):
        done.verify(TrunkProof(old).sign(*fields[:-1], "z9hG4bK4"), *fields[:-1], "z9hG4bK4")
    before = done.fingerprint()
    done.set_secrets(old, (new,))
    assert done.fingerprint() != before and done.accepted == 2
    with pytest.raises(ValueError, match="empty"):
        done.set_secrets(new, ("",))
