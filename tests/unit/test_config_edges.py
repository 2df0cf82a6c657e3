"""Config files and values that are not what they should be: each is a ConfigError naming the file
or the key (exit 2 from ``pbxmesh serve``), never a traceback, and never a secret's value."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from services.runtime.config import ConfigError, load_config
from tests.harness.process import REPO, child_env

MAX_LEASE_TTL = 3600  # connector.lease_ttl's documented maximum
BASE = {"server": {"id": "alpha", "name": "Alpha"}}


def _write(tmp_path: Path, document: object) -> Path:
    path = tmp_path / "server.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def _error(tmp_path: Path, document: object, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(_write(tmp_path, document), environ or {})
    return str(caught.value)


def _with(section: str, values: dict[str, object]) -> dict[str, object]:
    return {**BASE, section: values}


def _serve(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", "serve", "registry", "-c", str(path)],
        capture_output=True, text=True, timeout=60, env=child_env(), cwd=REPO,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"- server\n- connector\n", "expected a mapping"),
        (b"just a string\n", "expected a mapping"),
        (b"\x7fELF\x02\x01\x01\x00\x00\x00\xff\xfe\x00", "not UTF-8"),
        (b"server: {id: alpha}\n\x00\x01\x02", "not valid YAML"),
        (b"connector: {lease_ttl: " + b"9" * 5000 + b"}\n", "YAML cannot read"),
    ],
    ids=["list", "scalar", "binary", "nul", "huge-int"],
)
def test_unusable_file_is_exit_2_with_a_message_naming_it(tmp_path: Path, content: bytes, expected: str) -> None:
    path = tmp_path / "server.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=expected) as caught:
        load_config(path, {})
    assert str(path) in str(caught.value)
    result = _serve(path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and str(path) in result.stderr


def test_a_directory_is_exit_2(tmp_path: Path) -> None:
    result = _serve(tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr and "cannot read" in result.stderr


@pytest.mark.parametrize("ttl", [MAX_LEASE_TTL + 1, 10**12, 10**30])
def test_lease_ttl_has_an_upper_bound(tmp_path: Path, ttl: int) -> None:
    assert "connector.lease_ttl" in _error(tmp_path, _with("connector", {"lease_ttl": ttl}))


def test_lease_ttl_at_the_bound_is_taken(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, _with("connector", {"lease_ttl": MAX_LEASE_TTL})), {})
    assert config.connector.lease_ttl == MAX_LEASE_TTL


def test_a_ten_megabyte_server_name_is_refused_without_echoing_it(tmp_path: Path) -> None:
    message = _error(tmp_path, {"server": {"id": "alpha", "name": "A" * 10_000_000}})
    assert message.startswith("server.name:") and "longer than 128" in message and len(message) < 200


@pytest.mark.parametrize(
    ("document", "key"),
    [
        ({"server": {"id": "alpha", "name": "Alpha\r\nforged log line"}}, "server.name"),
        (_with("connector", {"username": "u\x00"}), "connector.username"),
        (_with("connector", {"username": "u", "password": "p\nq"}), "connector.password"),
        (_with("connector", {"tls": {"server_name": "etcd\u2028"}}), "connector.tls.server_name"),
        (_with("numbering", {"departments": [{"id": "sales", "name": "Sa\x1bles"}]}), "numbering.departments[0].name"),
        (_with("numbering", {"numbers": [{"number": "100", "name": "Al\rice"}]}), "numbering.numbers[0].name"),
        (_with("numbering", {"numbers": [{"number": "100", "name": "x" * 129}]}), "numbering.numbers[0].name"),
        (_with("trunk", {"secret": "s" * 20 + "\x00"}), "trunk.secret"),
        (_with("scenarios", {"incoming": [{"match": {"called": "1\n"}, "reject": 404}]}), "scenarios.incoming[0]"),
        (_with("telemetry", {"otlp_endpoint": "http://x\x7f"}), "telemetry.otlp_endpoint"),
    ],
)
def test_control_characters_and_long_values_are_refused_naming_the_key(
    tmp_path: Path, document: dict[str, object], key: str
) -> None:
    message = _error(tmp_path, document)
    assert message.startswith(key), message


def test_control_characters_from_the_environment_are_refused(tmp_path: Path) -> None:
    message = _error(tmp_path, BASE, {"PBXMESH_SERVER_NAME": "Alpha\nforged"})
    assert message.startswith("server.name:")


@pytest.mark.parametrize(
    ("document", "key"),
    [
        (_with("connector", {"username": "pbx", "password": 123456}), "connector.password"),
        (
            {
                **BASE,
                "numbering": {"numbers": [{"number": "100"}]},
                "sip": {"accounts": [{"number": "100", "password": 1234}]},
            },
            "sip.accounts[0].password",
        ),
        (_with("trunk", {"secret": 12345678901234567890}), "trunk.secret"),
    ],
)
def test_an_integer_secret_is_an_error_that_hides_its_value(
    tmp_path: Path, document: dict[str, object], key: str
) -> None:
    message = _error(tmp_path, document)
    assert message.startswith(key) and "quote it" in message
    assert "1234" not in message


def test_an_unquoted_number_is_an_error_that_says_quote_it(tmp_path: Path) -> None:
    # YAML reads 0100 as 64 (octal) and +49 as 49: the loader cannot know what was written.
    message = _error(tmp_path, _with("numbering", {"numbers": [{"number": 100}]}))
    assert message.startswith("numbering.numbers[0].number") and "quote it" in message


@pytest.mark.parametrize(
    ("limits", "key"),
    [
        ({"streams_per_client": 0}, "limits.streams_per_client"),
        ({"streams_total": 0}, "limits.streams_total"),
        ({"streams_total": 1_000_001}, "limits.streams_total"),
        ({"streams_per_client": 20, "streams_total": 10}, "limits.streams_per_client"),
        ({"streams_per_client": "many"}, "limits.streams_per_client"),
    ],
)
def test_stream_limits_are_validated(tmp_path: Path, limits: dict[str, object], key: str) -> None:
    assert _error(tmp_path, _with("limits", limits)).startswith(key)


def test_stream_limits_have_defaults_and_take_the_environment(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, BASE), {"PBXMESH_LIMITS_STREAMS_PER_CLIENT": "7"})
    assert (config.limits.streams_per_client, config.limits.streams_total) == (7, 1000)
