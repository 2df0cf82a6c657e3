"""deploy/k8s, checked offline: every overlay renders with kubectl's kustomize, validates strictly
against the Kubernetes schema, and holds what running it safely needs (probes, security context,
secret references, network policies); each service's config, as its Deployment sets it, loads.

The Kubernetes schema does not know cert-manager's kinds (Issuer, Certificate): those documents
are checked here field by field instead."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.runtime.config import load_config
from services.runtime.pki import init_ca, issue
from tests.support import REPO

OVERLAYS = REPO / "deploy" / "k8s" / "overlays"
SERVERS = ["server-a", "server-b"]
K8S_VERSION = "1.37.0"
CERT_MANAGER = "cert-manager.io/v1"
PORTS = {"registry": 50051, "sipgw": 50061, "callstate": 50071, "media": 50081}


def tool(name: str) -> str:
    path = shutil.which(name, path=str(Path(sys.executable).parent))
    assert path is not None, f"{name} is not installed: `make test` installs it from requirements-dev.txt"
    return path


def render(overlay: str) -> list[dict[str, Any]]:
    done = subprocess.run([tool("kubectl"), "kustomize", str(OVERLAYS / overlay)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def is_cert_manager(doc: dict[str, Any]) -> bool:
    return str(doc["apiVersion"]).startswith("cert-manager.io/")


@pytest.mark.parametrize("overlay", ["etcd", *SERVERS])
def test_the_overlay_renders_and_validates_strictly(overlay: str, tmp_path: Path) -> None:
    docs = render(overlay)
    core = [d for d in docs if not is_cert_manager(d)]
    # Only cert-manager's documents skip the schema (test_the_certificate_... checks them).
    assert {d["kind"] for d in docs if is_cert_manager(d)} <= {"Issuer", "Certificate"}
    path = tmp_path / f"{overlay}.yaml"
    path.write_text(yaml.safe_dump_all(core))
    done = subprocess.run(
        [tool("kubernetes-validate"), "--strict", "-k", K8S_VERSION, str(path)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("passed") == len(core)


def workloads(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] in ("Deployment", "StatefulSet")}


def test_etcd_is_three_members_with_client_certificates_a_disruption_budget_and_volumes() -> None:
    docs = render("etcd")
    etcd = workloads(docs)["etcd"]
    assert etcd["spec"]["replicas"] == 3 and etcd["spec"]["volumeClaimTemplates"]
    args = etcd["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--client-cert-auth=true" in args and "--peer-client-cert-auth=true" in args
    assert etcd["spec"]["template"]["spec"]["containers"][0]["image"].startswith("quay.io/coreos/etcd:v3.5.")
    (pdb,) = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    assert pdb["spec"]["minAvailable"] == 2
    (policy,) = [d for d in docs if d["kind"] == "NetworkPolicy"]
    client_rule = next(r for r in policy["spec"]["ingress"] if r["ports"][0]["port"] == 2379)
    assert client_rule["from"][0]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "pbxmesh-registry"}


@pytest.mark.parametrize("overlay", ["etcd", *SERVERS])
def test_every_container_is_probed_limited_and_locked_down(overlay: str) -> None:
    for name, workload in workloads(render(overlay)).items():
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["automountServiceAccountToken"] is False, name
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
            assert security["capabilities"]["drop"] == ["ALL"]
            assert container["readinessProbe"] and container["livenessProbe"], name
            assert container["resources"]["requests"] and container["resources"]["limits"], name


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def port_of(address: str) -> int:
    return int(address.rpartition(":")[2])


def server_yaml(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The overlay's config file, as the ConfigMap holds it."""
    (config,) = [d for d in docs if d["kind"] == "ConfigMap"]
    document: dict[str, Any] = yaml.safe_load(config["data"]["server.yaml"])
    return document


@pytest.mark.parametrize("overlay", SERVERS)
def test_the_services_are_probed_over_grpc_health_and_take_their_secrets_from_secrets(overlay: str) -> None:
    docs = render(overlay)
    found = workloads(docs)
    assert sorted(found) == ["callstate", "media", "registry", "sipgw"]
    probes = server_yaml(docs)["probes"]
    for name, port in PORTS.items():
        pod = found[name]["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        # The gRPC port takes mutual TLS only: the kubelet probes the plain-text probe port.
        probe = port_of(probes[name])
        assert probe != port
        assert container["readinessProbe"]["grpc"] == {"port": probe}
        assert container["livenessProbe"]["grpc"] == {"port": probe}
        ports = {p["containerPort"] for p in container["ports"]}
        assert {port, probe} <= ports, name
        assert pod["terminationGracePeriodSeconds"] >= 30  # more than a call's drain
        env = env_of(container)
        assert env["PBXMESH_TRUNK_SECRET"] == {"secretKeyRef": {"name": "pbxmesh-trunk", "key": "secret"}}
    registry_env = env_of(found["registry"]["spec"]["template"]["spec"]["containers"][0])
    assert registry_env["PBXMESH_CONNECTOR_PASSWORD"] == {"secretKeyRef": {"name": "pbxmesh-etcd", "key": "password"}}
    sipgw_env = env_of(found["sipgw"]["spec"]["template"]["spec"]["containers"][0])
    # Registrations are kept on a volume that outlives the pod; the grace period covers the drain.
    sipgw_pod = found["sipgw"]["spec"]["template"]["spec"]
    mounts = {m["name"]: m["mountPath"] for m in sipgw_pod["containers"][0]["volumeMounts"]}
    assert sipgw_env["PBXMESH_SIP_BINDINGS_FILE"].startswith(mounts["state"] + "/")
    claims = {v["name"]: v.get("persistentVolumeClaim", {}).get("claimName") for v in sipgw_pod["volumes"]}
    assert any(d["kind"] == "PersistentVolumeClaim" and d["metadata"]["name"] == claims["state"] for d in docs)
    assert sipgw_pod["terminationGracePeriodSeconds"] >= int(sipgw_env["PBXMESH_SIP_DRAIN_SECONDS"]) + 10
    assert sipgw_env["PBXMESH_SIP_ACCOUNTS"] == {"secretKeyRef": {"name": "pbxmesh-phones", "key": "accounts"}}
    # No secret is in git: no Secret object, and the config holds no password.
    assert not [d for d in docs if d["kind"] == "Secret"]
    (config,) = [d for d in docs if d["kind"] == "ConfigMap"]
    server = yaml.safe_load(config["data"]["server.yaml"])
    assert "password" not in server["connector"] and "secret" not in server["trunk"] and "sip" not in server
    sip = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "sipgw-sip")
    assert sip["spec"]["externalTrafficPolicy"] == "Local"  # phones' source addresses are kept
    assert {(p["port"], p["protocol"]) for p in sip["spec"]["ports"]} == {(5060, "UDP"), (5060, "TCP")}
    # With tls in the config the trunk runs over TLS: TCP on its port, in the Service and the policy.
    assert server["tls"]["ca_file"]
    trunk = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "sipgw-trunk")
    assert [(p["port"], p["protocol"]) for p in trunk["spec"]["ports"]] == [(5070, "TCP")]
    rules = [rule for d in docs if d["kind"] == "NetworkPolicy" for rule in d["spec"].get("ingress", [])]
    opened = [p for rule in rules for p in rule.get("ports", [])]
    assert {"port": 5070, "protocol": "TCP"} in opened and {"port": 5070, "protocol": "UDP"} not in opened
    for name, port in (("registry", 9101), ("sipgw", 9102), ("callstate", 9103), ("media", 9104)):
        template = found[name]["spec"]["template"]
        assert template["metadata"]["annotations"]["prometheus.io/port"] == str(port)
        assert {"name": "metrics", "containerPort": port} in template["spec"]["containers"][0]["ports"]
    assert server["telemetry"]["log_format"] == "json"
    policies = {d["metadata"]["name"] for d in docs if d["kind"] == "NetworkPolicy"}
    assert policies == {"pbxmesh-registry", "pbxmesh-callstate", "pbxmesh-media", "pbxmesh-sipgw"}


@pytest.mark.parametrize("overlay", SERVERS)
def test_the_media_service_records_on_a_volume_gets_rtp_on_the_node_and_anchors_the_gateway(overlay: str) -> None:
    docs = render(overlay)
    found = workloads(docs)
    pod = found["media"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == ["serve", "media", "-c", "/etc/pbxmesh/server.yaml"]
    env = env_of(container)
    (config,) = [d for d in docs if d["kind"] == "ConfigMap"]
    server = yaml.safe_load(config["data"]["server.yaml"])
    # The recordings go to a volume that outlives the pod, mounted where recording.dir points.
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert env["PBXMESH_RECORDING_DIR"] == server["recording"]["dir"] == mounts["recordings"]
    claims = {v["name"]: v.get("persistentVolumeClaim", {}).get("claimName") for v in pod["volumes"]}
    assert any(d["kind"] == "PersistentVolumeClaim" and d["metadata"]["name"] == claims["recordings"] for d in docs)
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"]  # the volume is writable
    # RTP: on the node's network, sent to the node's address; the segments come from the callstate.
    assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert env["PBXMESH_MEDIA_RTP_ADDRESS"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert env["PBXMESH_LISTEN_CALLSTATE"] == "callstate:50071"
    (policy,) = [d for d in docs if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == "pbxmesh-media"]
    first, last = (int(p) for p in server["media"]["rtp_ports"].split("-"))
    rtp = [p for rule in policy["spec"]["ingress"] for p in rule["ports"] if p["protocol"] == "UDP"]
    assert rtp == [{"port": first, "endPort": last, "protocol": "UDP"}]
    # The gateway anchors its calls on the media Service.
    media = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "media")
    assert [(p["port"], p["targetPort"]) for p in media["spec"]["ports"]] == [(50081, "grpc")]
    sipgw_env = env_of(found["sipgw"]["spec"]["template"]["spec"]["containers"][0])
    assert sipgw_env["PBXMESH_LISTEN_MEDIA"] == "media:50081"


def cert_manager_docs(docs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    (issuer,) = [d for d in docs if d["kind"] == "Issuer"]
    (certificate,) = [d for d in docs if d["kind"] == "Certificate"]
    return issuer, certificate


def hours(duration: str) -> float:
    """A Go duration as cert-manager takes it, in the forms used here (``2160h``, ``90m``)."""
    assert duration[:-1].isdigit() and duration[-1] in "hm", duration
    return int(duration[:-1]) / (1 if duration[-1] == "h" else 60)


# The fields of cert-manager.io/v1 used here (and a few near them), so that a typo is not ignored
# as the API server would prune it.
CERTIFICATE_FIELDS = {
    "secretName", "issuerRef", "commonName", "dnsNames", "uris", "ipAddresses", "privateKey", "usages",
    "duration", "renewBefore", "subject", "secretTemplate", "revisionHistoryLimit",
}  # fmt: skip
PRIVATE_KEY_FIELDS = {"algorithm", "size", "encoding", "rotationPolicy"}


@pytest.mark.parametrize("overlay", SERVERS)
def test_the_certificate_is_cert_managers_from_the_group_ca_and_names_the_server(overlay: str) -> None:
    docs = render(overlay)
    server = server_yaml(docs)
    server_id, namespace = server["server"]["id"], f"pbx-{overlay[-1]}"
    issuer, certificate = cert_manager_docs(docs)
    for doc in (issuer, certificate):
        assert doc["apiVersion"] == CERT_MANAGER
        assert doc["metadata"]["namespace"] == namespace
    # A CA issuer in the server's namespace, from the Secret holding the group CA's cert and key.
    assert issuer["spec"] == {"ca": {"secretName": "pbxmesh-group-ca"}}
    spec = certificate["spec"]
    assert set(spec) <= CERTIFICATE_FIELDS and set(spec["privateKey"]) <= PRIVATE_KEY_FIELDS
    assert spec["issuerRef"] == {"name": issuer["metadata"]["name"], "kind": "Issuer", "group": "cert-manager.io"}
    assert spec["secretName"] == "pbxmesh-server-tls"
    # What the services check: one pbxmesh URI for this server, and its id as a DNS name.
    assert spec["commonName"] == server_id
    assert spec["uris"] == [f"urn:pbxmesh:server:{server_id}"]
    dns = spec["dnsNames"]
    assert dns[0] == server_id
    # The Services the services and the other servers dial.
    advertised = server["advertise"]["callstate"].rpartition(":")[0]
    assert {"registry", "sipgw", "callstate", "media", advertised} <= set(dns)
    assert spec["privateKey"]["algorithm"] == "ECDSA" and spec["privateKey"]["size"] == 256
    assert spec["privateKey"]["encoding"] == "PKCS8"
    assert {"server auth", "client auth"} <= set(spec["usages"])
    assert set(spec["usages"]) <= {"digital signature", "server auth", "client auth"}
    assert 24 <= hours(spec["renewBefore"]) < hours(spec["duration"])


def volumes_of(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in pod["volumes"]}


@pytest.mark.parametrize("overlay", SERVERS)
def test_every_service_mounts_the_certificate_and_the_trust_bundle_where_its_config_points(overlay: str) -> None:
    docs = render(overlay)
    tls = server_yaml(docs)["tls"]
    _, certificate = cert_manager_docs(docs)
    # cert-manager's Secret holds tls.crt, tls.key (and ca.crt: only the issuing CA, so the CAs
    # trusted come from the bundle, which holds two while the group changes CA).
    cert_dir, key_dir = Path(tls["cert_file"]).parent, Path(tls["key_file"]).parent
    assert cert_dir == key_dir and (Path(tls["cert_file"]).name, Path(tls["key_file"]).name) == ("tls.crt", "tls.key")
    ca_dir = Path(tls["ca_file"]).parent
    for name, workload in workloads(docs).items():
        pod = workload["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        volumes = volumes_of(pod)
        # Whole folders, read-only, never subPath: a subPath mount does not see the updates.
        secret_mount, bundle_mount = mounts[str(cert_dir)], mounts[str(ca_dir)]
        for mount in (secret_mount, bundle_mount):
            assert mount.get("readOnly") is True and "subPath" not in mount, name
        secret = volumes[secret_mount["name"]]["secret"]
        assert secret["secretName"] == certificate["spec"]["secretName"], name
        # The key is readable by the service's group only.
        assert secret["defaultMode"] == 0o440 and pod["securityContext"]["fsGroup"] == 10001, name
        assert volumes[bundle_mount["name"]]["configMap"]["name"] == "pbxmesh-group-ca-bundle", name


@pytest.mark.parametrize("overlay", SERVERS)
def test_network_policies_let_the_kubelet_probe_and_keep_the_grpc_ports_to_their_callers(overlay: str) -> None:
    docs = render(overlay)
    probes = server_yaml(docs)["probes"]
    policies = {d["metadata"]["name"].removeprefix("pbxmesh-"): d for d in docs if d["kind"] == "NetworkPolicy"}
    for name, port in PORTS.items():
        rules = policies[name]["spec"]["ingress"]
        by_port = {p["port"]: rule for rule in rules for p in rule["ports"] if p["protocol"] == "TCP"}
        # The kubelet probes from the node's address, which no selector names: any source.
        assert "from" not in by_port[port_of(probes[name])], name
        # The gRPC port: this server's pods, and for the callstate the group's callstates too.
        sources = by_port[port]["from"]
        assert sources[0] == {"podSelector": {}}, name
        if name == "callstate":
            assert sources[1] == {
                "namespaceSelector": {"matchLabels": {"pbxmesh.io/group": "main"}},
                "podSelector": {"matchLabels": {"app.kubernetes.io/name": "pbxmesh-callstate"}},
            }
        else:
            assert len(sources) == 1, name


def group_files(tmp_path: Path, certificate: dict[str, Any]) -> dict[str, Path]:
    """What the volumes would hold: the group's CA (the bundle) and a certificate of it as
    cert-manager issues it (the Certificate's names), in folders laid out like the mounts."""
    pki = tmp_path / "pki"
    init_ca(pki, "main")
    spec = certificate["spec"]
    server_id = spec["commonName"]
    cert, key = issue(pki, "server", server_id, hosts=tuple(n for n in spec["dnsNames"] if n != server_id))
    bundle, secret = tmp_path / "ca", tmp_path / "tls"
    bundle.mkdir()
    secret.mkdir()
    (bundle / "ca.crt").write_bytes((pki / "ca.pem").read_bytes())
    (secret / "ca.crt").write_bytes((pki / "ca.pem").read_bytes())
    (secret / "tls.crt").write_bytes(cert.read_bytes())
    (secret / "tls.key").write_bytes(key.read_bytes())
    return {"/etc/pbxmesh-ca/": bundle, "/etc/pbxmesh-tls/": secret}


@pytest.mark.parametrize("overlay", SERVERS)
def test_each_service_config_as_its_deployment_sets_it_loads(overlay: str, tmp_path: Path) -> None:
    docs = render(overlay)
    (config,) = [d for d in docs if d["kind"] == "ConfigMap"]
    path = tmp_path / "server.yaml"
    text = config["data"]["server.yaml"]
    # The etcd client files the registry mounts, present here so that the file checks pass.
    certs = tmp_path / "etcd"
    certs.mkdir()
    for name in ("ca.crt", "tls.crt", "tls.key"):
        (certs / name).write_text("test")
    text = text.replace("/etc/pbxmesh-etcd/", f"{certs}/")
    # The group's files: the config checks that the certificate is this server's, of the CA.
    _, certificate = cert_manager_docs(docs)
    for mounted, here in group_files(tmp_path, certificate).items():
        assert mounted in text
        text = text.replace(mounted, f"{here}/")
    path.write_text(text)
    secrets = {
        "PBXMESH_TRUNK_SECRET": "a-group-secret-of-32-characters-",
        "PBXMESH_CONNECTOR_PASSWORD": "etcd-password",
        "PBXMESH_SIP_ACCOUNTS": '[{number: "100", password: "x"}]' if overlay == "server-a" else "[]",
    }
    for name, workload in workloads(docs).items():
        env = env_of(workload["spec"]["template"]["spec"]["containers"][0])
        environ = {k: v for k, v in env.items() if isinstance(v, str)}
        environ.update({k: v for k, v in secrets.items() if k in env})  # what the Secrets would give
        loaded = load_config(path, environ=environ)
        assert loaded.advertise.trunk.startswith("sipgw-trunk.pbx-"), name
        assert loaded.tls.enabled and loaded.tls.cert_file.endswith("/tls.crt"), name
        assert getattr(loaded.probes, name) and getattr(loaded.listen, name), name
        if name != "registry":
            assert loaded.listen.registry == "registry:50051"
        if name in ("media", "sipgw"):
            assert loaded.listen.media in ("0.0.0.0:50081", "media:50081"), name
