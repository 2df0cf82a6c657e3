"""The call sections of the config file: accounts, trunk, scenarios."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.runtime.config import ConfigError, load_config
from services.runtime.config_calls import parse_target_uri

BASE = """
server: {id: alpha}
listen: {registry: "127.0.0.1:0", sip: "127.0.0.1:5060", trunk: "127.0.0.1:5070", sipgw: "127.0.0.1:50053"}
numbering:
  departments: [{id: support, name: Support}]
  numbers: [{number: "100", name: Alice}, {number: "200", department: support}]
"""

GOOD = (
    BASE
    + """
sip:    {accounts: [{number: "100", password: "pw-alice-1"}]}
trunk:  {secret: "0123456789abcdef-group", lines: 30}
scenarios:
  incoming:     [{match: {called: "1.."}, dial: "${called}"}, {reject: 404}]
  inter_server: [{match: {called: "2..", caller: "\\\\+?[0-9]+"}, ring_department: support},
                 {forward: "sip:${called}@127.0.0.1:5080"}]
"""
)


def _load(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> object:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return load_config(path, environ=environ or {})


def _error(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, text, environ)
    return str(info.value)


def test_the_issue_example_loads(tmp_path: Path) -> None:
    from services.runtime.config import Config

    config = _load(tmp_path, GOOD)
    assert isinstance(config, Config)
    assert config.listen.sip == "127.0.0.1:5060" and config.listen.trunk == "127.0.0.1:5070"
    assert config.sip.accounts[0].number == "100" and config.sip.accounts[0].password.value == "pw-alice-1"
    assert config.trunk.lines == 30 and config.trunk.secret.value == "0123456789abcdef-group"
    assert config.scenarios.incoming[0].match.called == "1.." and config.scenarios.incoming[0].dial == "${called}"
    assert config.scenarios.incoming[1].reject == 404
    assert config.scenarios.inter_server[0].ring_department == "support"
    assert config.scenarios.inter_server[1].forward == "sip:${called}@127.0.0.1:5080"
    for secret in ("pw-alice-1", "0123456789abcdef-group"):
        assert secret not in repr(config) and secret not in str(config)


def test_secrets_come_from_the_environment_too(tmp_path: Path) -> None:
    from services.runtime.config import Config

    config = _load(tmp_path, GOOD, {"PBXMESH_TRUNK_SECRET": "another-secret-of-the-group", "PBXMESH_TRUNK_LINES": "5"})
    assert isinstance(config, Config)
    assert config.trunk.secret.value == "another-secret-of-the-group" and config.trunk.lines == 5


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("pw-alice-1", ""), "sip.accounts[0].password: a password is required"),
        (('number: "100", password', 'number: "101", password'), "sip.accounts[0].number: '101' is not one of"),
        (("lines: 30", "lines: 0"), "trunk.lines: 0 is not between 1 and 10000"),
        (
            ('password: "pw-alice-1"}]}', 'password: "pw-alice-1"}], digest_algorithms: [SHA-1]}'),
            "sip.digest_algorithms",
        ),
        (
            ('password: "pw-alice-1"}]}', 'password: "pw-alice-1", digest_algorithms: [MD5, MD5]}]}'),
            "sip.accounts[0].digest_algorithms: ['MD5', 'MD5'] must list MD5 and/or SHA-256, each once",
        ),
        (
            ('password: "pw-alice-1"}]}', 'password: "pw-alice-1"}], ring_timeout: 2}'),
            "sip.ring_timeout: 2 is not between 5 and 3600 seconds",
        ),
        (('"0123456789abcdef-group"', '"short"'), "trunk.secret: at least 16 characters"),
        (('called: "1.."', 'called: "1(("'), "scenarios.incoming[0].match.called: '1((' is not a valid pattern"),
        (("{reject: 404}", "{reject: 200}"), "scenarios.incoming[1].reject: 200 is not a SIP failure code"),
        (("{reject: 404}", "{}"), "scenarios.incoming[1]: exactly one of dial, ring_department, forward, reject"),
        (('dial: "${called}"}', 'dial: "${called}", reject: 486}'), "found dial, reject"),
        (("ring_department: support", "ring_department: sales"), "unknown department 'sales'"),
        (('dial: "${called}"', 'dial: "${callee}"'), "scenarios.incoming[0].dial: unknown placeholder ${callee}"),
        (
            ('dial: "${called}"', 'dial: "sip:100@127.0.0.1"'),
            "scenarios.incoming[0].dial: 'sip:100@127.0.0.1' is not a number",
        ),
        (('forward: "sip:${called}@127.0.0.1:5080"', 'forward: "ftp://x"'), "is not a number or sip:number@ip:port"),
        (('forward: "sip:${called}@127.0.0.1:5080"', 'forward: "sip:${called}@pbx.example.com:5080"'), "ip:port"),
        (('forward: "sip:${called}@127.0.0.1:5080"', 'forward: "sip:${called}@127.0.0.1:70000"'), "ip:port"),
        (('forward: "sip:${called}@127.0.0.1:5080"', 'forward: "sip:${called}@127.0.0.1"'), "ip:port"),
        (('sip: "127.0.0.1:5060"', 'sip: "nowhere"'), "listen.sip: 'nowhere' is not host:port"),
        (
            ("server: {id: alpha}", 'server: {id: alpha}\nadvertise: {trunk: "sipgw-trunk"}'),
            "advertise.trunk: 'sipgw-trunk'",
        ),
        (
            ("server: {id: alpha}", 'server: {id: alpha}\nadvertise: {callstate: "callstate.pbx-a.svc:50071"}'),
            "advertise.callstate: set listen.callstate too",
        ),
    ],
)
def test_bad_call_sections_name_the_key(tmp_path: Path, change: tuple[str, str], message: str) -> None:
    old, new = change
    assert old in GOOD
    assert message in _error(tmp_path, GOOD.replace(old, new, 1))


def test_a_secret_is_needed_only_with_a_trunk(tmp_path: Path) -> None:
    text = GOOD.replace('trunk: "127.0.0.1:5070", ', "").replace('"0123456789abcdef-group"', '""')
    _load(tmp_path, text)  # no trunk listener: no secret needed
    assert "trunk.secret" in _error(tmp_path, GOOD.replace('"0123456789abcdef-group"', '""'))


def test_accepted_trunk_secrets_are_checked_without_showing_them(tmp_path: Path) -> None:
    text = GOOD.replace('"0123456789abcdef-group"', '"0123456789abcdef-group", accept_secrets: ["tiny-one"]')
    error = _error(tmp_path, text)
    assert "trunk.accept_secrets[0]: at least" in error and "tiny-one" not in error
    text = GOOD.replace('"0123456789abcdef-group"', '"0123456789abcdef-group", accept_secrets: "not-a-list-secret"')
    error = _error(tmp_path, text)
    assert "trunk.accept_secrets: expected a list" in error and "not-a-list-secret" not in error


def test_duplicate_account(tmp_path: Path) -> None:
    text = GOOD.replace(
        '[{number: "100", password: "pw-alice-1"}]', '[{number: "100", password: "a"}, {number: "100", password: "b"}]'
    )
    assert "sip.accounts[1].number: duplicate account '100'" in _error(tmp_path, text)


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("sip:200@127.0.0.1:5072", ("200", "127.0.0.1", 5072)),
        ("sip:+4930@[::1]:5060", ("+4930", "::1", 5060)),
        ("sip:200@999.0.0.1:5072", None),
        ("sip:200@host:5072", None),
        ("sip:alice@127.0.0.1:5072", None),
        ("sip:200@127.0.0.1:0", None),
        ("sips:200@127.0.0.1:5061", None),
    ],
)
def test_target_uris_name_an_ip_and_a_port(text: str, parsed: tuple[str, str, int] | None) -> None:
    assert parse_target_uri(text) == parsed


def test_rate_limits_and_user_agents_default_and_are_read(tmp_path: Path) -> None:
    from services.runtime.config import Config
    from services.runtime.config_admission import PHONES_RATE, SCANNER_AGENTS, trunk_rate

    config = _load(tmp_path, GOOD)
    assert isinstance(config, Config)
    assert config.sip.rate_limit == PHONES_RATE and config.sip.drop_user_agents == SCANNER_AGENTS
    assert config.trunk.rate_limit is None
    # Unset, the trunk's follows its lines: never under 2000 a second (200 calls/s, twice over).
    assert (trunk_rate(None, 30).per_second, trunk_rate(None, 30).burst) == (2000, 4000)
    assert trunk_rate(None, 10_000).per_second == 50_000
    text = GOOD.replace(
        'password: "pw-alice-1"}]}',
        'password: "pw-alice-1"}], rate_limit: {per_second: 5, burst: 40}, drop_user_agents: [evil-scan]}',
    ).replace("lines: 30}", "lines: 30, rate_limit: {per_second: 100, burst: 100}}")
    config = _load(tmp_path, text, {"PBXMESH_SIP_RATE_LIMIT_BURST": "50"})
    assert isinstance(config, Config)
    assert (config.sip.rate_limit.per_second, config.sip.rate_limit.burst) == (5, 50)
    assert config.sip.drop_user_agents == ("evil-scan",)
    assert config.trunk.rate_limit is not None and trunk_rate(config.trunk.rate_limit, 30).per_second == 100
    config = _load(
        tmp_path, GOOD.replace('password: "pw-alice-1"}]}', 'password: "pw-alice-1"}], drop_user_agents: []}')
    )
    assert isinstance(config, Config) and config.sip.drop_user_agents == ()


@pytest.mark.parametrize(
    ("sip", "trunk", "message"),
    [
        ("rate_limit: {per_second: 0, burst: 10}", "", "sip.rate_limit.per_second: 0 is not between 1 and 1000000"),
        ("rate_limit: {per_second: 10, burst: -1}", "", "sip.rate_limit.burst: -1 is not between 1 and 1000000"),
        ("rate_limit: {per_second: 10}", "", "missing key sip.rate_limit.burst"),
        ("rate_limit: {per_second: 1.5, burst: 10}", "", "sip.rate_limit.per_second: expected an integer"),
        ("", "rate_limit: {per_second: 10, burst: 2000000}", "trunk.rate_limit.burst: 2000000 is not between"),
        ("drop_user_agents: [friendly-scanner, '']", "", "sip.drop_user_agents[1]: '' is not a product name"),
        ("drop_user_agents: ['sipcli/1.8']", "", "sip.drop_user_agents[0]: 'sipcli/1.8' is not a product name"),
        ("drop_user_agents: ['two words']", "", "sip.drop_user_agents[0]"),
    ],
)
def test_bad_rate_limits_and_user_agents_name_the_key(tmp_path: Path, sip: str, trunk: str, message: str) -> None:
    text = GOOD
    if sip:
        text = text.replace('password: "pw-alice-1"}]}', f'password: "pw-alice-1"}}], {sip}}}')
    if trunk:
        text = text.replace("lines: 30}", f"lines: 30, {trunk}}}")
    assert message in _error(tmp_path, text)
