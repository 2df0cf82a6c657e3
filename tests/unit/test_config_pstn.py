"""The outside world's config: providers, routes and the toll fraud guard."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.runtime.config import ConfigError, load_config
from services.runtime.config_pstn import apply_digits, host_and_port

BASE = """
server: {id: r1}
listen: {registry: "127.0.0.1:0", sip: "127.0.0.1:5060"}
numbering:
  departments: [{id: sales}]
  numbers: [{number: "100"}, {number: "101", department: sales}]
"""

GOOD = (
    BASE
    + r"""
providers:
  - name: carrier-a
    address: "sip.carrier.example"
    username: "r1"
    password: "provider-secret"
    register: true
    lines: 10
    allow_from: ["203.0.113.0/24", "198.51.100.7"]
    dids: [{did: "+74951234567", number: "100"}, {did: "+74951234568", number: "300", scenario: true}]
  - {name: carrier-b, address: "[2001:db8::1]:5080", transport: tcp, codecs: [PCMA]}
routes:
  - {pattern: "^\\d{7}$", prepend: "+7495"}
  - {pattern: "^8\\d{10}$", provider: carrier-a, strip: 1, prepend: "+7", caller_id: "+74951234567", priority: 10,
     caller_ids: [{department: sales, caller_id: "+74951234568"}, {number: "100", caller_id: anonymous}]}
external: {calls_per_number: 1, per_minute_per_server: 60}
scenarios:
  incoming: [{match: {called: "3.."}, forward: "89161234567", allow_external: true}]
"""
)


def _p(extra: str) -> dict[str, str]:
    """One provider ``a`` with ``extra`` keys."""
    return {"providers": '[{name: a, address: "1.2.3.4"' + extra + "}]"}


def _load(tmp_path: Path, text: str) -> object:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return load_config(path, environ={})


def test_a_full_outside_world_loads(tmp_path: Path) -> None:
    config = _load(tmp_path, GOOD)
    a, b = config.providers  # type: ignore[attr-defined]
    assert (a.name, a.register, a.lines, a.register_expires, a.codecs) == ("carrier-a", True, 10, 300, ("PCMU", "PCMA"))
    assert a.dids[1].scenario and a.password.value == "provider-secret"
    assert "provider-secret" not in repr(a)
    assert (b.transport, b.codecs) == ("tcp", ("PCMA",))
    rule, route = config.routes  # type: ignore[attr-defined]
    assert rule.provider == "" and route.priority == 10 and route.caller_ids[1].caller_id == "anonymous"
    assert config.external.calls_per_number == 1 and config.external.calls_per_server == 30  # type: ignore[attr-defined]
    assert config.scenarios.incoming[0].allow_external  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"providers": '[{name: "Carrier", address: "1.2.3.4"}]'}, "providers[0].name: 'Carrier' does not match"),
        (_p('}, {name: a, address: "1.2.3.5"'), "providers[1].name: duplicate"),
        ({"providers": '[{name: a, address: "bad host!"}]'}, "providers[0].address: 'bad host!' is not host"),
        ({"providers": '[{name: a, address: "1.2.3.4:0"}]'}, "providers[0].address: port 0 is out of range"),
        (_p(", transport: sctp"), "providers[0].transport: 'sctp'"),
        (_p(", transport: tls"), "providers[0].transport: 'tls' is not one of udp, tcp"),
        (_p(", register: true"), "providers[0].register: username and password"),
        (_p(', password: "x"'), "providers[0].password: set providers[0].username"),
        (_p(", lines: 0"), "providers[0].lines: 0 is not between"),
        (_p(", register_expires: 5"), "providers[0].register_expires: 5"),
        (_p(', allow_from: ["nowhere"]'), "providers[0].allow_from[0]: 'nowhere'"),
        (_p(", codecs: [G729]"), "providers[0].codecs:"),
        (
            {"providers": '[{name: a, address: "sip.example", dids: [{did: "+1", number: "100"}]}]'},
            "providers[0].allow_from: required with dids when the address is a name",
        ),
        (
            _p(', dids: [{did: "x", number: "100"}]'),
            "providers[0].dids[0].did: 'x'",
        ),
        (
            _p(', dids: [{did: "+1", number: "1"}, {did: "+1", number: "2"}]'),
            "providers[0].dids[1].did: duplicate DID '+1'",
        ),
        ({"routes": '[{pattern: "("}]'}, "routes[0].pattern: '(' is not a valid pattern"),
        ({"routes": '[{pattern: ""}]'}, "routes[0].pattern: a pattern of 1-200 characters"),
        ({"routes": '[{pattern: "8.*", provider: nobody}]'}, "routes[0].provider: no provider named 'nobody'"),
        ({"routes": '[{pattern: "8.*", strip: 40}]'}, "routes[0].strip: 40"),
        ({"routes": '[{pattern: "8.*", prepend: "abc"}]'}, "routes[0].prepend: 'abc'"),
        ({"routes": '[{pattern: "8.*", priority: -1}]'}, "routes[0].priority: -1"),
        ({"routes": '[{pattern: "8.*", caller_id: "Alice"}]'}, "routes[0].caller_id: 'Alice' is a number"),
        (
            {"routes": '[{pattern: "8.*", caller_ids: [{caller_id: "+1"}]}]'},
            "routes[0].caller_ids[0]: exactly one of number and department",
        ),
        (
            {"routes": '[{pattern: "8.*", caller_ids: [{number: "999", caller_id: "+1"}]}]'},
            "routes[0].caller_ids[0].number: '999' is not one of this server's numbers",
        ),
        ({"external": "{calls_per_server: -1}"}, "external.calls_per_server: -1"),
        ({"external": "{per_minute: 3}"}, "external"),
    ],
)
def test_bad_values_fail_at_start_naming_the_key(tmp_path: Path, change: dict[str, str], message: str) -> None:
    text = BASE + "".join(f"{key}: {value}\n" for key, value in change.items())
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, text)
    assert message in str(info.value)


def test_providers_need_the_sip_port(tmp_path: Path) -> None:
    text = 'server: {id: r1}\nproviders: [{name: a, address: "1.2.3.4"}]\n'
    with pytest.raises(ConfigError, match=r"providers: set listen.sip too"):
        _load(tmp_path, text)


def test_the_password_never_shows_in_an_error(tmp_path: Path) -> None:
    text = BASE + 'providers: [{name: a, address: "1.2.3.4", password: "do-not-show-me"}]\n'
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, text)
    assert "do-not-show-me" not in str(info.value)


def test_addresses_and_digits() -> None:
    assert host_and_port("sip.carrier.example") == ("sip.carrier.example", None)
    assert host_and_port("sip.carrier.example.:5080") == ("sip.carrier.example.", 5080)
    assert host_and_port("203.0.113.10:5060") == ("203.0.113.10", 5060)
    assert host_and_port("[2001:db8::1]") == ("2001:db8::1", None)
    for bad in ("", "a..b", "-a.example", "a:b", "a" * 300, "x" * 64 + ".example"):
        with pytest.raises(ValueError):
            host_and_port(bad)
    assert apply_digits("89161234567", 1, "+7") == "+79161234567"
    assert apply_digits("1234567", 0, "+7495") == "+74951234567"
