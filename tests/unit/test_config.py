"""Unit tests for the config loader (services.runtime.config + services.runtime._loader).

Pure: every test writes its own file under tmp_path and passes an explicit environ dict.
"""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest

from services.runtime.config import (
    Config,
    ConfigError,
    ConnectorSection,
    DepartmentEntry,
    ListenSection,
    NumberEntry,
    NumberingSection,
    Secret,
    ServerSection,
    TelemetrySection,
    TlsSection,
    load_config,
)

PASSWORD = "hunter2-s3cr3t-Pa55"

FULL = """\
server:
  id: alpha-1
  name: Alpha PBX
connector:
  endpoints: ["10.0.0.1:2379", "10.0.0.2:2380", "[::1]:2381"]
  username: pbx
  password: hunter2-s3cr3t-Pa55
  group: office.berlin
  lease_ttl: 7
  tls:
    server_name: etcd.internal
listen:
  registry: 0.0.0.0:6000
numbering:
  departments:
    - id: sales
      name: Sales
    - id: support
  numbers:
    - number: "100"
      name: Alice
      department: sales
    - number: "*200#"
      name: Queue
      kind: queue
      department: support
    - number: "+4930123"
telemetry:
  otlp_endpoint: http://collector:4317
  log_level: debug
"""


def write(tmp_path: Path, text: str, name: str = "pbxmesh.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def minimal(extra: str = "") -> str:
    return "server:\n  id: alpha\n" + textwrap.dedent(extra)


def config_error(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={} if environ is None else environ)
    return str(info.value)


# -- a valid file ------------------------------------------------------------------------------


def test_full_file_loads_into_typed_frozen_dataclasses(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, FULL), environ={})

    assert config == Config(
        server=ServerSection(id="alpha-1", name="Alpha PBX"),
        connector=ConnectorSection(
            endpoints=("10.0.0.1:2379", "10.0.0.2:2380", "[::1]:2381"),
            username="pbx",
            password=Secret(PASSWORD),
            group="office.berlin",
            lease_ttl=7,
            tls=TlsSection(server_name="etcd.internal"),
        ),
        listen=ListenSection(registry="0.0.0.0:6000"),
        numbering=NumberingSection(
            departments=(DepartmentEntry("sales", "Sales"), DepartmentEntry("support", "")),
            numbers=(
                NumberEntry("100", "Alice", "sales", "user"),
                NumberEntry("*200#", "Queue", "support", "queue"),
                NumberEntry("+4930123", "", "", "user"),
            ),
        ),
        telemetry=TelemetrySection(otlp_endpoint="http://collector:4317", log_level="debug"),
    )
    assert isinstance(config.connector.endpoints, tuple)
    assert isinstance(config.numbering.numbers, tuple)
    assert isinstance(config.numbering.numbers[0], NumberEntry)
    assert isinstance(config.connector.password, Secret)
    assert config.connector.password.value == PASSWORD
    assert type(config.connector.lease_ttl) is int


def test_config_is_frozen(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, FULL), environ={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.server = ServerSection(id="other")  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.connector.lease_ttl = 99  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.numbering.numbers[0].number = "999"  # type: ignore[misc]


def test_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, minimal()), environ={})

    assert config.server == ServerSection(id="alpha", name="")
    assert config.connector.lease_ttl == 5
    assert config.connector.group == "main"
    assert config.connector.endpoints == ("127.0.0.1:2379",)
    assert config.connector.username == ""
    assert not config.connector.password
    assert config.connector.tls == TlsSection()
    assert config.listen.registry == "127.0.0.1:50051"
    assert config.numbering == NumberingSection(departments=(), numbers=())
    assert config.telemetry == TelemetrySection(otlp_endpoint="", log_level="info")


def test_number_entry_defaults_kind_user(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, minimal("numbering:\n  numbers:\n    - number: '42'\n")), environ={})
    assert config.numbering.numbers == (NumberEntry(number="42", name="", department="", kind="user"),)


def test_environment_only_without_a_file() -> None:
    config = load_config(None, environ={"PBXMESH_SERVER_ID": "beta"})
    assert config.server.id == "beta"
    assert config.connector.lease_ttl == 5


def test_server_id_of_63_chars_is_accepted(tmp_path: Path) -> None:
    server_id = "a" * 62 + "9"
    config = load_config(write(tmp_path, f"server:\n  id: {server_id}\n"), environ={})
    assert config.server.id == server_id


def test_lease_ttl_of_exactly_the_minimum_is_accepted(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, minimal("connector:\n  lease_ttl: 2\n")), environ={})
    assert config.connector.lease_ttl == 2


def test_number_of_32_chars_is_accepted(tmp_path: Path) -> None:
    number = "1" * 32
    config = load_config(write(tmp_path, minimal(f"numbering:\n  numbers:\n    - number: '{number}'\n")), {})
    assert config.numbering.numbers[0].number == number


# -- bad configs: the message names the key path and the bad value ----------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("server:\n  id: alpha\nbogus: 1\n", ["bogus"], id="unknown-top-level"),
        pytest.param(minimal("connector:\n  foo: bar\n"), ["connector.foo"], id="unknown-nested"),
        pytest.param(minimal("connector:\n  tls:\n    cafile: x\n"), ["connector.tls.cafile"], id="unknown-deep"),
        pytest.param(
            minimal("numbering:\n  numbers:\n    - number: '1'\n      nmae: x\n"),
            ["numbering.numbers[0].nmae"],
            id="unknown-in-list-item",
        ),
    ],
)
def test_unknown_key(tmp_path: Path, text: str, expected: list[str]) -> None:
    message = config_error(tmp_path, text)
    assert "unknown key" in message
    for part in expected:
        assert part in message


def test_unknown_key_message_is_exact(tmp_path: Path) -> None:
    assert config_error(tmp_path, minimal("connector:\n  foo: bar\n")) == "unknown key connector.foo"


def test_duplicate_own_number(tmp_path: Path) -> None:
    message = config_error(
        tmp_path,
        minimal("numbering:\n  numbers:\n    - number: '100'\n    - number: '200'\n    - number: '100'\n"),
    )
    assert "numbering.numbers[2].number" in message
    assert "'100'" in message
    assert "duplicate" in message


@pytest.mark.parametrize("server_id", ["Alpha", "a_b", "a" * 64, "a.b", "a b"])
def test_bad_server_id(tmp_path: Path, server_id: str) -> None:
    message = config_error(tmp_path, f"server:\n  id: '{server_id}'\n")
    assert message.startswith("server.id:")
    assert repr(server_id) in message


def test_empty_server_id(tmp_path: Path) -> None:
    message = config_error(tmp_path, "server:\n  id: ''\n")
    assert message.startswith("server.id:")
    assert "''" in message


@pytest.mark.parametrize("number", ["10a", "1" * 33, "", "1 2", "1-2"])
def test_bad_number(tmp_path: Path, number: str) -> None:
    message = config_error(tmp_path, minimal(f"numbering:\n  numbers:\n    - number: '1'\n    - number: '{number}'\n"))
    assert message.startswith("numbering.numbers[1].number:")
    assert repr(number) in message


def test_unknown_department(tmp_path: Path) -> None:
    message = config_error(
        tmp_path,
        minimal(
            "numbering:\n  departments:\n    - id: sales\n  numbers:\n    - number: '100'\n      department: salse\n"
        ),
    )
    assert message.startswith("numbering.numbers[0].department:")
    assert "'salse'" in message


def test_duplicate_department(tmp_path: Path) -> None:
    message = config_error(
        tmp_path, minimal("numbering:\n  departments:\n    - id: sales\n    - id: hr\n    - id: sales\n")
    )
    assert message.startswith("numbering.departments[2].id:")
    assert "'sales'" in message
    assert "duplicate" in message


def test_bad_department_id(tmp_path: Path) -> None:
    message = config_error(tmp_path, minimal("numbering:\n  departments:\n    - id: 'sales dept'\n"))
    assert message.startswith("numbering.departments[0].id:")
    assert "'sales dept'" in message


@pytest.mark.parametrize("ttl", [1, 0, -3])
def test_lease_ttl_below_minimum(tmp_path: Path, ttl: int) -> None:
    message = config_error(tmp_path, minimal(f"connector:\n  lease_ttl: {ttl}\n"))
    assert message.startswith("connector.lease_ttl:")
    assert f"{ttl} " in message
    assert "minimum" in message


@pytest.mark.parametrize("endpoint", ["localhost", "host:99999", ":2379", "host:abc", "host:", "host:-1"])
def test_bad_endpoint(tmp_path: Path, endpoint: str) -> None:
    message = config_error(tmp_path, minimal(f"connector:\n  endpoints: ['10.0.0.1:2379', '{endpoint}']\n"))
    assert message.startswith("connector.endpoints[1]:")
    assert repr(endpoint) in message


def test_empty_endpoint_list(tmp_path: Path) -> None:
    message = config_error(tmp_path, minimal("connector:\n  endpoints: []\n"))
    assert message.startswith("connector.endpoints:")


def test_bad_listen_address(tmp_path: Path) -> None:
    message = config_error(tmp_path, minimal("listen:\n  registry: nowhere\n"))
    assert message.startswith("listen.registry:")
    assert "'nowhere'" in message


def test_bad_group(tmp_path: Path) -> None:
    message = config_error(tmp_path, minimal("connector:\n  group: 'a/b'\n"))
    assert message.startswith("connector.group:")
    assert "'a/b'" in message


def test_bad_kind(tmp_path: Path) -> None:
    message = config_error(tmp_path, minimal("numbering:\n  numbers:\n    - number: '1'\n      kind: robot\n"))
    assert message.startswith("numbering.numbers[0].kind:")
    assert "'robot'" in message


def test_lease_ttl_wrong_type(tmp_path: Path) -> None:
    message = config_error(tmp_path, minimal("connector:\n  lease_ttl: abc\n"))
    assert message.startswith("connector.lease_ttl:")
    assert "'abc'" in message


def test_lease_ttl_bool_is_not_an_integer(tmp_path: Path) -> None:
    message = config_error(tmp_path, minimal("connector:\n  lease_ttl: true\n"))
    assert message.startswith("connector.lease_ttl:")
    assert "True" in message


def test_numbers_not_a_list_names_the_key(tmp_path: Path) -> None:
    message = config_error(tmp_path, minimal("numbering:\n  numbers: '100'\n"))
    assert message.startswith("numbering.numbers:")
    assert "list" in message


def test_numbers_not_a_list_names_the_value(tmp_path: Path) -> None:
    message = config_error(tmp_path, minimal("numbering:\n  numbers: '100-200'\n"))
    assert "100-200" in message


def test_section_not_a_mapping(tmp_path: Path) -> None:
    message = config_error(tmp_path, minimal("connector: 5\n"))
    assert message.startswith("connector:")
    assert "mapping" in message


def test_missing_server_id(tmp_path: Path) -> None:
    assert config_error(tmp_path, "server:\n  name: Alpha\n") == "missing key server.id"


def test_missing_server_section(tmp_path: Path) -> None:
    assert config_error(tmp_path, "connector:\n  group: main\n") == "missing key server"


def test_empty_file_misses_server(tmp_path: Path) -> None:
    assert config_error(tmp_path, "") == "missing key server"


def test_invalid_yaml_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "server:\n  id: alpha\n  name: a: b\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    message = str(info.value)
    assert str(path) in message
    assert "line 3" in message


def test_invalid_yaml_other_line(tmp_path: Path) -> None:
    path = write(tmp_path, "server:\n  id: alpha\nconnector:\n  group: main\n  endpoints: [a:1\n\nlisten: {}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    message = str(info.value)
    assert str(path) in message
    assert "line 7" in message


def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert str(path) in str(info.value)
    assert "cannot read" in str(info.value)


def test_directory_is_not_readable_as_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path, environ={})
    assert str(tmp_path) in str(info.value)


def test_tls_file_that_does_not_exist(tmp_path: Path) -> None:
    missing = tmp_path / "ca.pem"
    message = config_error(tmp_path, minimal(f"connector:\n  tls:\n    ca_file: '{missing}'\n"))
    assert message.startswith("connector.tls.ca_file:")
    assert repr(str(missing)) in message


def test_tls_client_cert_needs_all_three_files(tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    message = config_error(tmp_path, minimal(f"connector:\n  tls:\n    cert_file: '{cert}'\n"))
    assert message.startswith("connector.tls:")


def test_tls_with_all_files_loads(tmp_path: Path) -> None:
    files = {}
    for name in ("ca", "cert", "key"):
        file = tmp_path / f"{name}.pem"
        file.write_text("x")
        files[name] = str(file)
    text = minimal(
        f"connector:\n  tls:\n    ca_file: '{files['ca']}'\n    cert_file: '{files['cert']}'\n"
        f"    key_file: '{files['key']}'\n"
    )
    config = load_config(write(tmp_path, text), environ={})
    assert config.connector.tls == TlsSection(files["ca"], files["cert"], files["key"], "")


# -- environment overrides ---------------------------------------------------------------------


def test_env_server_id_overrides_file(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, minimal()), environ={"PBXMESH_SERVER_ID": "gamma-2"})
    assert config.server.id == "gamma-2"


def test_env_password(tmp_path: Path) -> None:
    config = load_config(
        write(tmp_path, minimal("connector:\n  username: pbx\n")),
        environ={"PBXMESH_CONNECTOR_PASSWORD": PASSWORD},
    )
    assert isinstance(config.connector.password, Secret)
    assert config.connector.password.value == PASSWORD
    assert config.connector.username == "pbx"


def test_env_lease_ttl(tmp_path: Path) -> None:
    config = load_config(
        write(tmp_path, minimal("connector:\n  lease_ttl: 9\n")), {"PBXMESH_CONNECTOR_LEASE_TTL": "12"}
    )
    assert config.connector.lease_ttl == 12


def test_env_lease_ttl_is_validated(tmp_path: Path) -> None:
    message = config_error(tmp_path, minimal(), {"PBXMESH_CONNECTOR_LEASE_TTL": "1"})
    assert message.startswith("connector.lease_ttl:")
    assert "1 " in message


def test_env_lease_ttl_wrong_type(tmp_path: Path) -> None:
    message = config_error(tmp_path, minimal(), {"PBXMESH_CONNECTOR_LEASE_TTL": "soon"})
    assert message.startswith("connector.lease_ttl:")
    assert "'soon'" in message


def test_env_lease_ttl_double_minus_is_a_config_error(tmp_path: Path) -> None:
    message = config_error(tmp_path, minimal(), {"PBXMESH_CONNECTOR_LEASE_TTL": "--5"})
    assert message.startswith("connector.lease_ttl:")


def test_lease_ttl_superscript_digit_is_a_config_error(tmp_path: Path) -> None:
    message = config_error(tmp_path, minimal("connector:\n  lease_ttl: '²'\n"))
    assert message.startswith("connector.lease_ttl:")


def test_endpoint_with_superscript_port_is_a_config_error(tmp_path: Path) -> None:
    message = config_error(tmp_path, minimal("connector:\n  endpoints: ['etcd:²']\n"))
    assert message.startswith("connector.endpoints[0]:")


def test_env_endpoints_comma_list(tmp_path: Path) -> None:
    config = load_config(
        write(tmp_path, minimal("connector:\n  endpoints: ['old:1']\n")),
        environ={"PBXMESH_CONNECTOR_ENDPOINTS": "10.0.0.1:2379, 10.0.0.2:2379 ,10.0.0.3:2379"},
    )
    assert config.connector.endpoints == ("10.0.0.1:2379", "10.0.0.2:2379", "10.0.0.3:2379")


def test_env_endpoints_single_value(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, minimal()), environ={"PBXMESH_CONNECTOR_ENDPOINTS": "etcd:2379"})
    assert config.connector.endpoints == ("etcd:2379",)


def test_env_endpoints_yaml_flow_list(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, minimal()), environ={"PBXMESH_CONNECTOR_ENDPOINTS": "[a:1, b:2]"})
    assert config.connector.endpoints == ("a:1", "b:2")


def test_env_endpoints_are_validated(tmp_path: Path) -> None:
    message = config_error(tmp_path, minimal(), {"PBXMESH_CONNECTOR_ENDPOINTS": "a:1,nope"})
    assert message.startswith("connector.endpoints[1]:")
    assert "'nope'" in message


def test_env_numbers_yaml_flow(tmp_path: Path) -> None:
    text = minimal("numbering:\n  departments:\n    - id: sales\n  numbers:\n    - number: '999'\n")
    config = load_config(
        write(tmp_path, text),
        environ={
            "PBXMESH_NUMBERING_NUMBERS": (
                "[{number: '100', name: Alice, department: sales}, {number: '*7', kind: ivr}]"
            )
        },
    )
    assert config.numbering.numbers == (
        NumberEntry("100", "Alice", "sales", "user"),
        NumberEntry("*7", "", "", "ivr"),
    )
    assert config.numbering.departments == (DepartmentEntry("sales", ""),)


def test_env_numbers_are_validated(tmp_path: Path) -> None:
    message = config_error(tmp_path, minimal(), {"PBXMESH_NUMBERING_NUMBERS": "[{number: '1x'}]"})
    assert message.startswith("numbering.numbers[0].number:")
    assert "'1x'" in message


def test_env_numbers_invalid_yaml(tmp_path: Path) -> None:
    message = config_error(tmp_path, minimal(), {"PBXMESH_NUMBERING_NUMBERS": "[{number: '1'"})
    assert message.startswith("numbering.numbers:")


def test_env_tls_server_name_nested_section(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, minimal()), environ={"PBXMESH_CONNECTOR_TLS_SERVER_NAME": "etcd.example.org"})
    assert config.connector.tls.server_name == "etcd.example.org"
    assert config.connector.tls.ca_file == ""
    assert config.connector.group == "main"


def test_env_nested_override_keeps_file_values_of_the_section(tmp_path: Path) -> None:
    text = minimal("connector:\n  group: blue\n  tls:\n    server_name: from-file\n")
    config = load_config(write(tmp_path, text), environ={"PBXMESH_CONNECTOR_TLS_SERVER_NAME": "from-env"})
    assert config.connector.tls.server_name == "from-env"
    assert config.connector.group == "blue"


def test_unknown_env_variable_fails_naming_it(tmp_path: Path) -> None:
    message = config_error(tmp_path, minimal(), {"PBXMESH_CONNECTOR_LEASETTL": "5"})
    assert "PBXMESH_CONNECTOR_LEASETTL" in message
    assert "unknown" in message


def test_section_name_is_not_an_env_variable(tmp_path: Path) -> None:
    message = config_error(tmp_path, minimal(), {"PBXMESH_CONNECTOR": "x"})
    assert "PBXMESH_CONNECTOR" in message


def test_other_env_variables_are_ignored(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, minimal()), environ={"HOME": "/root", "PBXMESHX": "1", "pbxmesh_x": "1"})
    assert config.server.id == "alpha"


def test_bad_env_server_id_fails_naming_server_id(tmp_path: Path) -> None:
    message = config_error(tmp_path, minimal(), {"PBXMESH_SERVER_ID": "Bad_Id"})
    assert message.startswith("server.id:")
    assert "'Bad_Id'" in message


def test_env_unknown_variable_without_a_file() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, environ={"PBXMESH_SERVER_ID": "a", "PBXMESH_SERVER_NAEM": "x"})
    assert "PBXMESH_SERVER_NAEM" in str(info.value)


# -- YAML scalars that are not strings ---------------------------------------------------------


def test_unquoted_number_with_leading_zero_is_not_silently_changed(tmp_path: Path) -> None:
    text = minimal("numbering:\n  numbers:\n    - number: 0100\n")
    try:
        config = load_config(write(tmp_path, text), environ={})
    except ConfigError:
        return  # refusing the value is fine too; silently changing it is not
    assert config.numbering.numbers[0].number == "0100"


# -- secrets -----------------------------------------------------------------------------------


def test_password_not_in_repr_or_str(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, FULL), environ={})
    assert config.connector.password.value == PASSWORD
    for text in (repr(config), str(config), repr(config.connector), str(config.connector)):
        assert PASSWORD not in text
        assert "Secret(***)" in text
    assert str(config.connector.password) == "***"
    assert repr(config.connector.password) == "Secret(***)"


def test_empty_secret_shows_as_empty() -> None:
    assert repr(Secret("")) == "Secret('')"
    assert str(Secret("")) == ""
    assert not Secret("")
    assert Secret("x")


def test_password_without_username_does_not_show_password(tmp_path: Path) -> None:
    message = config_error(tmp_path, minimal(f"connector:\n  password: {PASSWORD}\n"))
    assert message.startswith("connector.password:")
    assert "username" in message
    assert PASSWORD not in message


def test_env_password_without_username_does_not_show_password(tmp_path: Path) -> None:
    message = config_error(tmp_path, minimal(), {"PBXMESH_CONNECTOR_PASSWORD": PASSWORD})
    assert message.startswith("connector.password:")
    assert PASSWORD not in message


def test_password_of_wrong_type_does_not_show_password(tmp_path: Path) -> None:
    message = config_error(tmp_path, minimal(f"connector:\n  username: u\n  password: [{PASSWORD}]\n"))
    assert message.startswith("connector.password:")
    assert PASSWORD not in message


def test_error_elsewhere_does_not_show_password(tmp_path: Path) -> None:
    text = minimal(f"connector:\n  username: u\n  password: {PASSWORD}\n  lease_ttl: 1\n")
    message = config_error(tmp_path, text)
    assert message.startswith("connector.lease_ttl:")
    assert PASSWORD not in message


def test_invalid_yaml_does_not_show_password(tmp_path: Path) -> None:
    path = write(tmp_path, f"server:\n  id: a\nconnector:\n  password: {PASSWORD}: x\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert "line 4" in str(info.value)
    assert PASSWORD not in str(info.value)
