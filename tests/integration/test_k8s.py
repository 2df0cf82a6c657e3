"""deploy/k8s, checked offline: every overlay renders with kubectl's kustomize, validates strictly
against the Kubernetes schema, and holds what running it safely needs (probes, security context,
secret references, network policies); each service's config, as its Deployment sets it, loads."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.runtime.config import load_config
from tests.support import REPO

OVERLAYS = REPO / "deploy" / "k8s" / "overlays"
SERVERS = ["server-a", "server-b"]
K8S_VERSION = "1.37.0"


def tool(name: str) -> str:
    path = shutil.which(name, path=str(Path(sys.executable).parent))
    assert path is not None, f"{name} is not installed: `make test` installs it from requirements-dev.txt"
    return path


def render(overlay: str) -> list[dict[str, Any]]:
    done = subprocess.run([tool("kubectl"), "kustomize", str(OVERLAYS / overlay)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.mark.parametrize("overlay", ["etcd", *SERVERS])
def test_the_overlay_renders_and_validates_strictly(overlay: str, tmp_path: Path) -> None:
    docs = render(overlay)
    path = tmp_path / f"{overlay}.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    done = subprocess.run(
        [tool("kubernetes-validate"), "--strict", "-k", K8S_VERSION, str(path)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("passed") == len(docs)


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


@pytest.mark.parametrize("overlay", SERVERS)
def test_the_services_are_probed_over_grpc_health_and_take_their_secrets_from_secrets(overlay: str) -> None:
    docs = render(overlay)
    found = workloads(docs)
    assert sorted(found) == ["callstate", "media", "registry", "sipgw"]
    for name, port in (("registry", 50051), ("callstate", 50071), ("media", 50081), ("sipgw", 50061)):
        pod = found[name]["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["readinessProbe"]["grpc"] == {"port": port}
        assert container["livenessProbe"]["grpc"] == {"port": port}
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


@pytest.mark.parametrize("overlay", SERVERS)
def test_each_service_config_as_its_deployment_sets_it_loads(overlay: str, tmp_path: Path) -> None:
    docs = render(overlay)
    (config,) = [d for d in docs if d["kind"] == "ConfigMap"]
    path = tmp_path / "server.yaml"
    path.write_text(config["data"]["server.yaml"])
    # The etcd client files the registry mounts, present here so that the file checks pass.
    certs = tmp_path / "etcd"
    certs.mkdir()
    for name in ("ca.crt", "tls.crt", "tls.key"):
        (certs / name).write_text("test")
    text = path.read_text().replace("/etc/pbxmesh-etcd/", f"{certs}/")
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
        if name != "registry":
            assert loaded.listen.registry == "registry:50051"
        if name in ("media", "sipgw"):
            assert loaded.listen.media in ("0.0.0.0:50081", "media:50081"), name
