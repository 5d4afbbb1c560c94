"""`egress-router manifests`: every rendered document is one an API server would accept
(official schemas, offline), the CRDs match their shape, and the output lints clean."""

from __future__ import annotations

import json

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kube_helpers import EXAMPLES, SEED_ARGS, render

from egress_router.kube import manifests
from egress_router.kube.lint import lint_texts

K8S_VERSION = kubernetes_validate.latest_version()

VARIANTS = {
    "openshift-pod-env": [],
    "openshift-deployment-file": ["--deployment", "--config-via", "file"],
    "openshift-other-nic": ["--parent", "eth1", "--namespace", "egress"],
    "multus-pod": ["--flavor", "multus", "--parent", "eth1"],
    "multus-deployment-file": ["--flavor", "multus", "--deployment", "--config-via", "file", "--macvlan-mode", "private"],
    "multus-reference-macvlan": ["--flavor", "multus", "--cni-type", "macvlan", "--parent", "ens4"],
    "openshift-legacy-pod": ["--mode", "legacy"],
    "openshift-legacy-deployment-env": ["--mode", "legacy", "--deployment", "--config-via", "env"],
    "multus-legacy-pod": ["--mode", "legacy", "--flavor", "multus", "--parent", "eth1"],
    "multus-legacy-reference-macvlan": ["--mode", "legacy", "--flavor", "multus", "--cni-type", "macvlan", "--deployment"],
    "openshift-ha": ["--ha", "--vrrp-id", "51"],
    "multus-ha": ["--ha", "--vrrp-id", "7", "--flavor", "multus", "--parent", "eth1"],
}

# The NetworkAttachmentDefinition is a CRD: its shape as Multus' CRD declares it, plus what
# the config inside must hold for either plugin.
NAD_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "k8s.cni.cncf.io/v1"},
        "kind": {"const": "NetworkAttachmentDefinition"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {"type": "object", "required": ["config"], "properties": {"config": {"type": "string"}},
                 "additionalProperties": False},
    },
}
CNI_CONFIG_SCHEMA = {
    "type": "object",
    "required": ["cniVersion", "name", "type", "mode"],
    "properties": {
        "cniVersion": {"const": "1.0.0"},
        "type": {"enum": ["egress-router-cni", "macvlan"]},
        "mode": {"enum": ["bridge", "private", "vepa", "passthru"]},
        "master": {"type": "string", "maxLength": 15},
    },
}
EGRESS_ROUTER_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "network.operator.openshift.io/v1"},
        "kind": {"const": "EgressRouter"},
        "spec": {
            "type": "object",
            "required": ["addresses", "mode", "networkInterface"],
            "properties": {
                "mode": {"enum": ["Redirect"]},
                "addresses": {"type": "array", "items": {"type": "object", "required": ["ip", "gateway"]}},
                "redirect": {"type": "object", "properties": {
                    "fallbackIP": {"type": "string"},
                    "redirectRules": {"type": "array", "items": {
                        "type": "object", "required": ["destinationIP", "port", "protocol"],
                        "properties": {"protocol": {"enum": ["TCP", "UDP", "SCTP"]},
                                       "port": {"type": "integer"}, "targetPort": {"type": "integer"}}}},
                }},
                "networkInterface": {"type": "object"},
            },
        },
    },
}


def validate(document: dict) -> None:  # type: ignore[type-arg]
    if document["kind"] == "NetworkAttachmentDefinition":
        jsonschema.validate(document, NAD_SCHEMA)
        jsonschema.validate(json.loads(document["spec"]["config"]), CNI_CONFIG_SCHEMA)
    else:
        kubernetes_validate.validate(document, K8S_VERSION, strict=True)


@pytest.mark.parametrize("extra", VARIANTS.values(), ids=VARIANTS.keys())
def test_every_document_validates_and_lints_clean(capsys, extra):
    text, docs = render(capsys, SEED_ARGS + extra)
    for document in docs:
        validate(document)
    assert lint_texts([("rendered.yaml", text)]) == []


@pytest.mark.parametrize("extra", VARIANTS.values(), ids=VARIANTS.keys())
def test_kinds_in_apply_order(capsys, extra):
    _, docs = render(capsys, SEED_ARGS + extra)
    kinds = [d["kind"] for d in docs]
    workload = ["Deployment"] if "--deployment" in extra else ["Deployment", "PodDisruptionBudget"] if "--ha" in extra else ["Pod"]
    attachment = ["NetworkAttachmentDefinition"] if "multus" in extra else []
    assert kinds == ["ConfigMap", *attachment, *workload, "Service"]


def pod_of(docs):  # type: ignore[no-untyped-def]
    for d in docs:
        if d["kind"] == "Pod":
            return d["metadata"], d["spec"]
        if d["kind"] == "Deployment":
            return d["spec"]["template"]["metadata"], d["spec"]["template"]["spec"]
    raise AssertionError("no workload")


def test_openshift_pod_is_the_seeds(capsys):
    text, docs = render(capsys, SEED_ARGS)
    meta, spec = pod_of(docs)
    assert meta["annotations"] == {"pod.network.openshift.io/assign-macvlan": "true"}
    (router,) = spec["initContainers"]
    assert router["securityContext"] == {"privileged": True}
    env = {e["name"]: e for e in router["env"]}
    assert env["EGRESS_ROUTER_MODE"]["value"] == "init"
    assert env["EGRESS_DESTINATION"]["valueFrom"]["configMapKeyRef"]["key"] == "destinations"
    assert [c["name"] for c in spec["containers"]] == ["egress-router-wait"]
    assert "# privileged is still required on OpenShift SDN" in text
    # The annotation is written as a string, never a bare boolean.
    assert "assign-macvlan: 'true'" in text


def test_multus_grants_only_capabilities(capsys):
    text, docs = render(capsys, SEED_ARGS + ["--flavor", "multus", "--parent", "eth1"])
    meta, spec = pod_of(docs)
    selection = json.loads(meta["annotations"]["k8s.v1.cni.cncf.io/networks"])
    assert selection == [{"name": "egress-router-macvlan", "interface": "macvlan0"}]
    context = spec["initContainers"][0]["securityContext"]
    assert context["capabilities"]["add"] == ["NET_ADMIN", "NET_RAW"]
    assert "privileged" not in context
    nad = next(d for d in docs if d["kind"] == "NetworkAttachmentDefinition")
    config = json.loads(nad["spec"]["config"])
    assert config == {"cniVersion": "1.0.0", "name": "egress-router-macvlan", "type": "egress-router-cni",
                      "master": "eth1", "mode": "bridge", "forwarding": True}
    assert "# NET_ADMIN: addresses" in text


def test_reference_macvlan_asks_for_the_sysctl(capsys):
    text, docs = render(capsys, SEED_ARGS + ["--flavor", "multus", "--cni-type", "macvlan"])
    _, spec = pod_of(docs)
    assert spec["securityContext"]["sysctls"] == [
        {"name": "net.ipv4.ip_forward", "value": "1"},
        {"name": "net.ipv4.conf.macvlan0.rp_filter", "value": "2"},
    ]
    assert "--allowed-unsafe-sysctls" in text


def test_deployment_is_one_replica_recreated(capsys):
    _, docs = render(capsys, SEED_ARGS + ["--deployment"])
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_service_exposes_each_mapped_port_with_its_protocol(capsys):
    text, docs = render(capsys, SEED_ARGS)
    service = next(d for d in docs if d["kind"] == "Service")
    ports = {(p["port"], p["protocol"], p["targetPort"]) for p in service["spec"]["ports"]}
    assert ports == {(80, "TCP", 80), (8080, "TCP", 8080), (8443, "TCP", 8443), (53, "UDP", 53)}
    assert "# The fallback receives only the ports a Service exposes" in text


def test_config_via_file_mounts_the_configmap(capsys):
    _, docs = render(capsys, SEED_ARGS + ["--config-via", "file"])
    _, spec = pod_of(docs)
    router = spec["initContainers"][0]
    env = {e["name"]: e.get("value") for e in router["env"]}
    assert env["EGRESS_DESTINATION_FILE"] == "/etc/egress-router/destinations"
    assert router["volumeMounts"][0]["mountPath"] == "/etc/egress-router"
    config_map = docs[0]
    assert config_map["data"]["destinations"].splitlines()[-1] == "203.0.113.27"


def test_egress_router_resource_every_field(capsys):
    document = yaml.safe_load((EXAMPLES / "egressrouter.yaml").read_text())
    jsonschema.validate(document, EGRESS_ROUTER_SCHEMA)
    text, docs = render(capsys, ["--from", str(EXAMPLES / "egressrouter.yaml")])
    rules = docs[0]["data"]["destinations"].splitlines()
    # targetPort kept, and fallbackIP last (OVN-Kubernetes' plugin drops it).
    assert rules == ["80 tcp 203.0.113.25", "8080 tcp 203.0.113.26 80", "8443 tcp 203.0.113.26 443", "203.0.113.27"]
    assert all(d["metadata"]["namespace"] == "egress" for d in docs)
    config = json.loads(docs[1]["spec"]["config"])
    assert (config["master"], config["mode"]) == ("eth1", "bridge")
    _, spec = pod_of(docs)
    env = {e["name"]: e.get("value") for e in spec["initContainers"][0]["env"]}
    assert (env["EGRESS_SOURCE"], env["EGRESS_GATEWAY"]) == ("192.168.12.99/24", "192.168.12.1")
    assert lint_texts([("out.yaml", text)]) == []


def test_egress_router_flags_override(capsys, tmp_path):
    _, docs = render(capsys, ["--from", str(EXAMPLES / "egressrouter.yaml"), "--flavor", "openshift", "--name", "other"])
    meta, _ = pod_of(docs)
    assert meta["annotations"] == {"pod.network.openshift.io/assign-macvlan": "eth1"}  # master honoured
    assert meta["name"] == "other"


def test_spec_file(capsys):
    text, docs = render(capsys, ["--from", str(EXAMPLES / "router-spec.yaml")])
    assert [d["kind"] for d in docs] == ["ConfigMap", "Deployment", "Service"]
    assert lint_texts([("out.yaml", text)]) == []


BAD = {
    "fallback-not-last": (["--destination", "203.0.113.27", "--destination", "80 tcp 203.0.113.25"],
                          "EGRESS_DESTINATION line 2: the fallback on line 1 must be the last rule"),
    "bad-port": (["--destination", "99999 tcp 203.0.113.25"], "port 99999 is out of range"),
    "bad-protocol": (["--destination", "80 icmp 203.0.113.25"], "protocol 'icmp' is not one of"),
    "family": (["--destination", "80 tcp 2001:db8::1"], "is IPv6 but EGRESS_SOURCE has no IPv6 address"),
}


@pytest.mark.parametrize("args, message", BAD.values(), ids=BAD.keys())
def test_bad_destinations_exit_2_with_the_cores_message(capsys, args, message):
    code = manifests.main(["--source", "192.0.2.99/24", "--gateway", "192.0.2.1", *args], {})
    out, err = capsys.readouterr()
    assert (code, out) == (2, "")
    assert message in err
    assert all(line.startswith("egress-router: ") for line in err.splitlines())


def test_bad_source_gateway_and_usage(capsys):
    assert manifests.main(["--source", "192.0.2.99/33", "--gateway", "192.0.2.99", "--destination", "203.0.113.27"], {}) == 2
    assert "EGRESS_SOURCE: prefix length '33'" in capsys.readouterr().err
    assert manifests.main(["--flavor", "nope"], {}) == 2
    assert len(capsys.readouterr().err.splitlines()) == 1
    assert manifests.main(["--from", "/nonexistent.yaml"], {}) == 2
    assert "cannot read /nonexistent.yaml" in capsys.readouterr().err


def test_bad_egress_router_resource(capsys, tmp_path):
    path = tmp_path / "er.yaml"
    path.write_text(yaml.safe_dump({
        "apiVersion": "network.operator.openshift.io/v1", "kind": "EgressRouter", "metadata": {"name": "x"},
        "spec": {"mode": "HTTPProxy", "addresses": [{"ip": "192.0.2.99/24"}],
                 "networkInterface": {"macvlan": {"mode": "Source"}}},
    }))
    assert manifests.main(["--from", str(path)], {}) == 2
    err = capsys.readouterr().err
    for expected in ("spec.mode", "spec.addresses[0].gateway", "spec.redirect", "spec.networkInterface.macvlan.mode"):
        assert expected in err


def test_render_uses_the_models_interface_name(capsys):
    # One name for macvlan0, the model's; render must not define its own EGRESS_INTERFACE,
    # which would shadow config.EGRESS_INTERFACE (the variable's name) for its importers.
    from egress_router.kube import render as render_module
    from egress_router.model import DEFAULT_EGRESS_INTERFACE

    assert not hasattr(render_module, "EGRESS_INTERFACE")
    _, docs = render(capsys, SEED_ARGS + ["--flavor", "multus"])
    meta, _ = pod_of(docs)
    assert json.loads(meta["annotations"]["k8s.v1.cni.cncf.io/networks"])[0]["interface"] == DEFAULT_EGRESS_INTERFACE


def test_from_a_file_that_is_not_utf8_is_a_config_problem(capsys, tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_bytes(b"name: egress-\xff\n")
    assert manifests.main(["--from", str(path)], {}) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == f"egress-router: config error: --from: {path} is not UTF-8 text\n"


@pytest.mark.parametrize("flag", ["--image", "--wait-image"])
@pytest.mark.parametrize("value", ["foo\nbar: baz", "foo bar", "foo\tbar", "foo\x1bbar", ""])
def test_images_with_whitespace_or_control_characters_are_refused(capsys, flag, value):
    assert manifests.main(SEED_ARGS + [flag, value], {}) == 2
    out, err = capsys.readouterr()
    assert out == "" and f"config error: {flag}: {value!r} is not an image reference" in err


def test_every_header_line_is_a_comment(capsys, tmp_path):
    # A file name may hold a newline; what follows it must stay inside the comment.
    path = tmp_path / "spec\nkind: Secret\n.yaml"
    path.write_text((EXAMPLES / "router-spec.yaml").read_text())
    text, docs = render(capsys, ["--from", str(path), "--source", "192.0.2.99/24\n"])
    header = text[: text.index("apiVersion:")]
    assert header.count("\n") >= 3
    assert all(line.startswith("# ") for line in header.splitlines())
    assert [d["kind"] for d in docs] == ["ConfigMap", "Deployment", "Service"]


def egress_router_file(tmp_path, name: str, rules: list, addresses: list | None = None) -> str:  # type: ignore[type-arg]
    path = tmp_path / "er.yaml"
    path.write_text(yaml.safe_dump({
        "apiVersion": "network.operator.openshift.io/v1", "kind": "EgressRouter",
        "metadata": {"name": name},
        "spec": {"mode": "Redirect", "networkInterface": {"macvlan": {"mode": "Bridge"}},
                 "addresses": addresses if addresses is not None else [{"ip": "192.0.2.99/24", "gateway": "192.0.2.1"}],
                 "redirect": {"redirectRules": rules}},
    }))
    return str(path)


def test_egress_router_every_problem_at_once(capsys, tmp_path):
    rules = [{"destinationIP": "203.0.113.25", "port": "80", "protocol": "TCP"},
             {"destinationIP": "203.0.113.26", "port": 99999, "protocol": "TCP"}]
    assert manifests.main(["--from", egress_router_file(tmp_path, "Bad_Name", rules)], {}) == 2
    err = capsys.readouterr().err.splitlines()
    assert any("spec.redirect.redirectRules[0]: needs destinationIP" in line for line in err), err
    assert any("--name: 'Bad_Name' is not a DNS label" in line for line in err), err
    assert any("port 99999 is out of range" in line for line in err), err
    assert len(err) == 3, err


def test_egress_router_port_true_is_not_an_integer(capsys, tmp_path):
    rules = [{"destinationIP": "203.0.113.25", "port": True, "protocol": "TCP"},
             {"destinationIP": "203.0.113.26", "port": 8080, "protocol": "TCP", "targetPort": False}]
    assert manifests.main(["--from", egress_router_file(tmp_path, "x", rules)], {}) == 2
    err = capsys.readouterr().err.splitlines()
    assert [line.split(": ")[2] for line in err] == ["EgressRouter spec.redirect.redirectRules[0]",
                                                     "EgressRouter spec.redirect.redirectRules[1].targetPort"], err
    assert "False is not an integer" in err[1]


def test_egress_router_missing_addresses_said_once(capsys, tmp_path):
    rules = [{"destinationIP": "203.0.113.25", "port": 80, "protocol": "TCP"}]
    assert manifests.main(["--from", egress_router_file(tmp_path, "x", rules, addresses=[])], {}) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == ["egress-router: config error: EgressRouter spec.addresses: needs one entry "
                   "(ip with prefix length, and gateway)"]


def test_spec_file_problems_with_the_cores(capsys, tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("name: egress\nsource: 192.0.2.99/24\ngateway: 192.0.2.1\ndestinations: [80 tcp 203.0.113.25]\n"
                    "deployment: yes please\nflavour: multus\n")
    assert manifests.main(["--from", str(path), "--destination", "99999 tcp 203.0.113.25"], {}) == 2
    err = capsys.readouterr().err
    assert "deployment: must be a bool" in err and "flavour: unknown key" in err and "port 99999" in err


@pytest.mark.parametrize("flavor", ["openshift", "multus"])
def test_legacy_mode_runs_the_router_as_the_long_lived_container(capsys, flavor):
    text, docs = render(capsys, SEED_ARGS + ["--mode", "legacy", "--flavor", flavor])
    _, spec = pod_of(docs)
    assert "initContainers" not in spec
    (router,) = spec["containers"]  # no wait container: the router itself keeps the pod
    env = {e["name"]: e.get("value") for e in router["env"]}
    assert env["EGRESS_ROUTER_MODE"] == "legacy"
    # The file is the default: the daemon watches the mounted ConfigMap and applies changes live.
    assert env["EGRESS_DESTINATION_FILE"] == "/etc/egress-router/destinations"
    assert "EGRESS_DESTINATION" not in env
    assert router["volumeMounts"][0]["mountPath"] == "/etc/egress-router"
    assert spec["volumes"] == [{"name": "destinations", "configMap": {"name": "egress-router-destinations"}}]
    assert router["readinessProbe"] == {"httpGet": {"path": "/readyz", "port": 9090}}
    assert router["livenessProbe"] == {"httpGet": {"path": "/healthz", "port": 9090}}
    assert router["ports"] == [{"name": "metrics", "containerPort": 9090, "protocol": "TCP"}]
    for document in docs:
        validate(document)
    assert lint_texts([("rendered.yaml", text)]) == []


def test_legacy_mode_from_a_spec_file_and_env_on_request(capsys, tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text((EXAMPLES / "router-spec.yaml").read_text() + "mode: legacy\n")
    _, docs = render(capsys, ["--from", str(path), "--config-via", "env"])
    _, spec = pod_of(docs)
    env = {e["name"]: e for e in spec["containers"][0]["env"]}
    assert env["EGRESS_ROUTER_MODE"]["value"] == "legacy"
    assert env["EGRESS_DESTINATION"]["valueFrom"]["configMapKeyRef"]["key"] == "destinations"


def test_legacy_mode_is_validated_as_legacy(capsys):
    # The core refuses a rule on the health port in legacy mode only.
    args = ["--source", "192.0.2.99/24", "--gateway", "192.0.2.1", "--destination", "9090 tcp 203.0.113.25"]
    assert manifests.main(args, {}) == 0
    capsys.readouterr()
    assert manifests.main([*args, "--mode", "legacy"], {}) == 2
    assert "is the router's own health and metrics port" in capsys.readouterr().err
    assert manifests.main([*args, "--mode", "http-proxy"], {}) == 2


def test_names_as_destinations_render_validate_and_lint_clean(capsys):
    args = [
        "--source", "192.0.2.99/24", "--gateway", "192.0.2.1", "--mode", "legacy",
        "--destination", "443 tcp api.example.com", "--destination", "8443 tcp api.example.com. 443",
        "--destination", "mirror.example.com",
    ]
    text, docs = render(capsys, args)
    for document in docs:
        validate(document)
    assert "443 tcp api.example.com" in text and "mirror.example.com" in text
    assert lint_texts([("rendered.yaml", text)]) == []
    service = next(d for d in docs if d["kind"] == "Service")
    assert {p["port"] for p in service["spec"]["ports"]} >= {443, 8443}


@pytest.mark.parametrize("flavor", [["--flavor", "openshift"], ["--flavor", "multus", "--parent", "eth1"]])
def test_ha_is_two_replicas_on_two_nodes_with_a_budget(capsys, flavor):
    _, docs = render(capsys, SEED_ARGS + ["--ha", "--vrrp-id", "51", *flavor])
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 2
    assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}
    (term,) = spec["template"]["spec"]["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    (router,) = spec["template"]["spec"]["containers"]
    assert router["readinessProbe"]["periodSeconds"] == 1
    env = {e["name"]: e.get("value") for e in router["env"]}
    assert (env["EGRESS_ROUTER_MODE"], env["EGRESS_ROUTER_HA"], env["EGRESS_ROUTER_VRRP_ID"]) == ("legacy", "vrrp", "51")
    budget = next(d for d in docs if d["kind"] == "PodDisruptionBudget")
    assert budget["spec"]["minAvailable"] == 1
    assert budget["spec"]["selector"] == spec["selector"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--ha"], "--vrrp-id: is required with --ha"),
        (["--ha", "--vrrp-id", "256"], "--vrrp-id: must be from 1 to 255, not 256"),
        (["--ha", "--vrrp-id", "5", "--mode", "init"], "--ha: needs --mode legacy"),
        (["--vrrp-id", "5"], "--vrrp-id: is only for --ha"),
    ],
)
def test_ha_flags_are_checked(capsys, extra, message):
    assert manifests.main(SEED_ARGS + extra, {}) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
