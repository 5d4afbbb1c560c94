"""`egress-router lint`: each classic mistake in crafted YAML, found on the right line."""

from __future__ import annotations

import pytest
from kube_helpers import EXAMPLES

from egress_router.kube import lint
from egress_router.kube.lint import lint_texts

POD = """\
apiVersion: v1
kind: Pod
metadata:
  name: egress-1
  labels:
    name: egress-1
  annotations:
    pod.network.openshift.io/assign-macvlan: {annotation}
spec:
  initContainers:
  - name: egress-router
    image: example.org/egress-router
    securityContext:
      {security}
    env:
    - name: EGRESS_SOURCE
      value: {source}
    - name: EGRESS_GATEWAY
      value: 192.168.12.1
    - name: EGRESS_DESTINATION
      value: |
        80   tcp 203.0.113.25
        {rule2}
        8443 tcp 203.0.113.26 443
    - name: EGRESS_ROUTER_MODE
      value: {init_mode}
  containers:
  - name: egress-router-wait
    image: registry.k8s.io/pause:3.10
"""
GOOD = dict(annotation='"true"', security="privileged: true", source="192.168.12.99/24",
            rule2="8080 tcp 203.0.113.26 80", init_mode="init")


def pod(**changes: str) -> str:
    return POD.format(**{**GOOD, **changes})


def findings(*files: tuple[str, str]) -> list[tuple[str, int, str]]:
    return [(f.path, f.line, f.message) for f in lint_texts(list(files))]


def test_good_pod_is_clean():
    assert findings(("pod.yaml", pod())) == []


MISTAKES = {
    "annotation-boolean": (dict(annotation="true"), 8, "assign-macvlan: true is not a string"),
    "annotation-yes": (dict(annotation="yes"), 8, 'write "true" (quoted)'),
    "bad-source": (dict(source="192.168.12.999/24"), 17, "EGRESS_SOURCE: '192.168.12.999' is not a valid IP address"),
    "bad-rule-line": (dict(rule2="8080 tcp 203.0.113.26 99999"), 23, "EGRESS_DESTINATION line 2: remote port 99999"),
    "fallback-not-last": (dict(rule2="203.0.113.27"), 24, "the fallback on line 2 must be the last rule"),
    "legacy-in-init": (dict(init_mode="legacy"), 26, "EGRESS_ROUTER_MODE=legacy in initContainers never exits"),
    "no-privileges": (dict(security="runAsUser: 0"), 14, "neither privileged nor granted NET_ADMIN and NET_RAW"),
    "half-capabilities": (dict(security="capabilities: {add: [NET_ADMIN]}"), 14, "(missing NET_RAW)"),
    "capabilities-on-sdn": (dict(security="capabilities: {add: [NET_ADMIN, NET_RAW]}"), 14,
                            "nothing else enables net.ipv4.ip_forward"),
}


@pytest.mark.parametrize("changes, line, message", MISTAKES.values(), ids=MISTAKES.keys())
def test_finds_each_mistake_on_its_line(changes, line, message):
    found = findings(("pod.yaml", pod(**changes)))
    assert any(l == line and message in m for _, l, m in found), found


def test_missing_variables():
    text = pod().replace("    - name: EGRESS_GATEWAY\n      value: 192.168.12.1\n", "")
    assert ("pod.yaml", 11, "container egress-router: EGRESS_GATEWAY: is not set") in findings(("pod.yaml", text))


def test_init_mode_in_a_long_lived_container():
    text = pod() + "    env:\n    - name: EGRESS_ROUTER_MODE\n      value: init\n"
    found = findings(("pod.yaml", text))
    assert any(l == 32 and "EGRESS_ROUTER_MODE=init in containers" in m for _, l, m in found), found


def test_nothing_creates_the_interface():
    text = pod().replace('  annotations:\n    pod.network.openshift.io/assign-macvlan: "true"\n', "")
    assert any(l == 4 and "nothing creates macvlan0" in m for _, l, m in findings(("pod.yaml", text)))


def test_multus_without_the_interface_name():
    text = pod().replace('pod.network.openshift.io/assign-macvlan: "true"', "k8s.v1.cni.cncf.io/networks: egress-net")
    assert any(l == 8 and "names no interface macvlan0" in m for _, l, m in findings(("pod.yaml", text)))
    text = pod().replace('pod.network.openshift.io/assign-macvlan: "true"', "k8s.v1.cni.cncf.io/networks: egress-net@macvlan0")
    assert findings(("pod.yaml", text)) == []


SERVICE = """\
apiVersion: v1
kind: Service
metadata:
  name: egress-1
spec:
  selector:
    name: egress-1
  ports:
  - name: http
    port: 80
  - name: https
    port: 443
    targetPort: 8443
  - name: dns
    port: 53
    protocol: UDP
"""


def test_service_ports_that_do_not_match():
    found = findings(("pod.yaml", pod()), ("svc.yaml", SERVICE))
    assert ("svc.yaml", 14, "Service egress-1: port 53/UDP (targetPort 53) matches no rule of Pod egress-1 and "
            "there is no fallback: connections to it are refused") in found
    assert any(p == "svc.yaml" and l == 8 and "mapped port 8080/tcp of Pod egress-1 is not exposed" in m
               for p, l, m in found), found
    assert len(found) == 2


def test_fallback_serves_other_service_ports():
    text = pod().replace("        8443 tcp 203.0.113.26 443\n", "        8443 tcp 203.0.113.26 443\n        203.0.113.27\n")
    found = findings(("pod.yaml", text), ("svc.yaml", SERVICE))
    assert [m for _, _, m in found] == ["Service egress-1: mapped port 8080/tcp of Pod egress-1 is not exposed "
                                        "(no port with targetPort 8080 and protocol TCP)"]


CONFIG_MAP = """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: egress-routes
data:
  destinations: |
    80   tcp 203.0.113.25
    203.0.113.27
    8080 tcp 203.0.113.26 80
"""


def test_destinations_from_a_configmap_key_ref():
    text = pod().replace("""      value: |
        80   tcp 203.0.113.25
        8080 tcp 203.0.113.26 80
        8443 tcp 203.0.113.26 443
""", "      valueFrom:\n        configMapKeyRef: {name: egress-routes, key: destinations}\n")
    assert findings(("pod.yaml", text)) == []  # the ConfigMap is not given: nothing to judge
    found = findings(("pod.yaml", text), ("cm.yaml", CONFIG_MAP))
    assert found == [("cm.yaml", 9, "container egress-router: ConfigMap egress-routes key destinations line 3: "
                      "the fallback on line 2 must be the last rule: '8080 tcp 203.0.113.26 80'")]


def test_destinations_from_a_mounted_configmap():
    text = pod().replace("""    - name: EGRESS_DESTINATION
      value: |
        80   tcp 203.0.113.25
        8080 tcp 203.0.113.26 80
        8443 tcp 203.0.113.26 443
    - name: EGRESS_ROUTER_MODE
      value: init
""", """    - name: EGRESS_DESTINATION_FILE
      value: /etc/egress/rules
    - name: EGRESS_ROUTER_MODE
      value: init
    volumeMounts:
    - {name: rules, mountPath: /etc/egress}
""") + "  volumes:\n  - name: rules\n    configMap:\n      name: egress-routes\n      items:\n      - {key: destinations, path: rules}\n"
    found = findings(("pod.yaml", text), ("cm.yaml", CONFIG_MAP))
    assert [(p, l) for p, l, _ in found] == [("cm.yaml", 9)]
    unmounted = text.replace("/etc/egress/rules", "/elsewhere/rules")
    assert any(l == 21 and "is in no volume mounted" in m for _, l, m in findings(("pod.yaml", unmounted)))


def test_invalid_yaml_is_a_finding():
    (path, line, message), = findings(("x.yaml", "a: 1\nb: [2,\nc: 3\n"))
    assert path == "x.yaml" and line >= 2 and message.startswith("not valid YAML")


def test_seed_examples_parse():
    multi = EXAMPLES / "seed-egress-multi.yaml"
    assert lint_texts([(str(multi), multi.read_text())]) == []
    first = EXAMPLES / "seed-egress-1.yaml"
    found = lint_texts([(str(first), first.read_text())])
    # Only the placeholders <egress_router>, <egress_gateway>, <egress_destination>.
    assert [f.line for f in found] == [17, 19, 21]


def test_main_exit_codes(capsys, tmp_path):
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(pod())
    bad.write_text(pod(annotation="true"))
    assert lint.main([str(good)], {}) == 0
    assert lint.main([str(bad)], {}) == 1
    assert capsys.readouterr().out.startswith(f"{bad}:8: ")
    assert lint.main([str(tmp_path / "missing.yaml")], {}) == 2
    assert lint.main([], {}) == 2


PROXY_POD = """\
apiVersion: v1
kind: Pod
metadata:
  name: egress-proxy
  annotations:
    pod.network.openshift.io/assign-macvlan: "true"
spec:
  initContainers:
  - name: egress-router
    image: registry.redhat.io/openshift4/ose-egress-router
    securityContext:
      privileged: true
    env:
    - name: EGRESS_SOURCE
      value: 192.168.12.99/24
    - name: EGRESS_GATEWAY
      value: 192.168.12.1
    - name: EGRESS_ROUTER_MODE
      value: {mode}
  containers:
  - name: egress-proxy
    image: registry.redhat.io/openshift4/ose-egress-{proxy}
    env:
    - name: {variable}
      value: |
        {value}
"""
PROXIES = {
    "http": dict(mode="http-proxy", proxy="http-proxy", variable="EGRESS_HTTP_PROXY_DESTINATION", value="!*.example.com"),
    "dns": dict(mode="dns-proxy", proxy="dns-proxy", variable="EGRESS_DNS_PROXY_DESTINATION", value="80 203.0.113.25"),
}


@pytest.mark.parametrize("fields", PROXIES.values(), ids=PROXIES.keys())
def test_proxy_containers_are_not_routers(fields):
    # The router in a proxy mode needs no EGRESS_DESTINATION, and the proxy beside it, which
    # reads EGRESS_*_PROXY_* variables, is not a router missing its settings.
    assert findings(("pod.yaml", PROXY_POD.format(**fields))) == []


def test_a_router_variable_alone_makes_a_router():
    text = PROXY_POD.format(**PROXIES["http"]).replace("EGRESS_HTTP_PROXY_DESTINATION", "EGRESS_ROUTER_MODE")
    found = findings(("pod.yaml", text))
    assert any("container egress-proxy: EGRESS_SOURCE: is not set" in m for _, _, m in found), found


ENV_FROM_POD = """\
apiVersion: v1
kind: Pod
metadata:
  name: egress-1
  annotations:
    pod.network.openshift.io/assign-macvlan: "true"
spec:
  initContainers:
  - name: egress-router
    image: example.org/egress-router
    securityContext:
      privileged: true
    envFrom:
{sources}
    env:
    - name: EGRESS_ROUTER_MODE
      value: init
"""


def env_from(*sources: str) -> str:
    return ENV_FROM_POD.format(sources="\n".join(f"    - {s}" for s in sources))


@pytest.mark.parametrize("source", ["secretRef: {name: egress-settings}", "configMapRef: {name: not-given}",
                                    "{prefix: EGRESS_, secretRef: {name: egress-settings}}"])
def test_envfrom_lint_cannot_read_sets_what_it_may(source):
    # EGRESS_SOURCE, EGRESS_GATEWAY and the rules may all come from it: nothing is "not set".
    assert findings(("pod.yaml", env_from(source))) == []


def test_envfrom_lint_cannot_read_keeps_the_other_findings():
    text = env_from("secretRef: {name: egress-settings}").replace("value: init", "value: nonsense")
    found = findings(("pod.yaml", text))
    assert [m for _, _, m in found] == ["container egress-router: EGRESS_ROUTER_MODE: unknown mode 'nonsense' "
                                        "(valid: init, legacy, unit-test, http-proxy, dns-proxy)"]
    # A prefix that no EGRESS_* variable can carry hides nothing.
    text = env_from("{prefix: APP_, secretRef: {name: app}}")
    assert any("EGRESS_SOURCE: is not set" in m for _, _, m in findings(("pod.yaml", text)))


def test_envfrom_a_later_unreadable_source_may_override_an_earlier_one():
    config_map = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  EGRESS_SOURCE: nonsense\n"
    text = env_from("configMapRef: {name: settings}", "secretRef: {name: egress-settings}")
    assert findings(("pod.yaml", text), ("cm.yaml", config_map)) == []
    text = env_from("secretRef: {name: egress-settings}", "configMapRef: {name: settings}")
    found = findings(("pod.yaml", text), ("cm.yaml", config_map))
    assert [(p, m) for p, _, m in found] == [("cm.yaml", "container egress-router: EGRESS_SOURCE: "
                                              "'nonsense' is not a valid IP address")], found


def test_envfrom_lint_cannot_read_may_rename_the_interface():
    text = env_from("secretRef: {name: egress-settings}").replace(
        'pod.network.openshift.io/assign-macvlan: "true"', "k8s.v1.cni.cncf.io/networks: egress-net@net1")
    assert findings(("pod.yaml", text)) == []  # EGRESS_INTERFACE=net1 may be in the Secret


def test_envfrom_a_configmap_then_an_inline_value_each_in_its_file():
    config_map = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  EGRESS_SOURCE: 192.168.12.99/24\n"
    text = env_from("configMapRef: {name: settings}").replace(
        "    env:\n", "    env:\n    - name: EGRESS_GATEWAY\n      value: nonsense\n")
    found = findings(("pod.yaml", text), ("cm.yaml", config_map))
    assert [(p, l) for p, l, m in found if "EGRESS_GATEWAY" in m] == [("pod.yaml", 17)], found


def nad(name: str, config: str, namespace: str | None = None) -> str:
    meta = f"  name: {name}\n" + (f"  namespace: {namespace}\n" if namespace else "")
    return f"apiVersion: k8s.cni.cncf.io/v1\nkind: NetworkAttachmentDefinition\nmetadata:\n{meta}spec:\n  config: '{config}'\n"


FORWARDING = '{"cniVersion": "1.0.0", "type": "egress-router-cni", "mode": "bridge", "forwarding": true}'
NO_FORWARDING = '{"cniVersion": "1.0.0", "type": "macvlan", "mode": "bridge"}'


def multus_pod(networks: str, namespace: str = "egress") -> str:
    text = pod(security="capabilities: {add: [NET_ADMIN, NET_RAW]}").replace(
        "pod.network.openshift.io/assign-macvlan: \"true\"", f"k8s.v1.cni.cncf.io/networks: {networks}")
    return text.replace("  name: egress-1\n  labels:", f"  name: egress-1\n  namespace: {namespace}\n  labels:", 1)


def forwarding_findings(networks: str, *attachments: str) -> list[str]:
    files = [("pod.yaml", multus_pod(networks))] + [(f"nad{i}.yaml", a) for i, a in enumerate(attachments)]
    return [m for _, _, m in findings(*files) if "net.ipv4.ip_forward" in m]


def test_forwarding_judged_on_the_attachment_that_creates_macvlan0():
    attachments = (nad("other-net", NO_FORWARDING), nad("egress-net", FORWARDING))
    assert forwarding_findings("other-net@net1, egress-net@macvlan0", *attachments) == []
    assert forwarding_findings("egress-net@net1, other-net@macvlan0", *attachments) != []
    json_form = '\'[{"name": "other-net", "interface": "net1"}, {"name": "egress-net", "interface": "macvlan0"}]\''
    assert forwarding_findings(json_form, *attachments) == []


def test_forwarding_attachment_in_the_namespace_named():
    attachments = (nad("net", NO_FORWARDING, "egress"), nad("net", FORWARDING, "infra"))
    assert forwarding_findings("infra/net@macvlan0", *attachments) == []
    assert forwarding_findings("net@macvlan0", *attachments) != []  # the pod's own namespace
    json_form = '\'[{"name": "net", "namespace": "infra", "interface": "macvlan0"}]\''
    assert forwarding_findings(json_form, *attachments) == []


CONFLISTS = {
    "tuning-sysctl": ('{"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "macvlan", "mode": "bridge"}, '
                      '{"type": "tuning", "sysctl": {"net.ipv4.ip_forward": "1"}}]}', False),
    "egress-router-cni": ('{"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "egress-router-cni", '
                          '"forwarding": true}]}', False),
    "only-macvlan": ('{"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "macvlan"}]}', True),
    "forwarding-as-a-string": ('{"cniVersion": "1.0.0", "type": "egress-router-cni", "forwarding": "true"}', True),
    "unknown-plugin": ('{"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "macvlan"}, {"type": "custom"}]}',
                       False),
}


@pytest.mark.parametrize("config, reported", CONFLISTS.values(), ids=CONFLISTS.keys())
def test_forwarding_looks_inside_conflists(config, reported):
    assert bool(forwarding_findings("net@macvlan0", nad("net", config))) == reported


def test_forwarding_unknown_without_the_attachment():
    assert forwarding_findings("net@macvlan0") == []
    assert forwarding_findings("net@macvlan0", nad("net", "not json")) == []
