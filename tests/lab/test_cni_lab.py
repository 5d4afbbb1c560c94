"""egress-router-cni driven exactly as a container runtime drives it: CNI_* environment, the
network config as JSON on stdin, run in the node's namespace, a real pod namespace. Then the
router works through the interface the plugin created."""

from __future__ import annotations

import json
import shutil
import sys

import pytest

from egress_router.lab import SEED_DESTINATION, Lab, seed_env
from egress_router.lab.wirings import WIRINGS

pytestmark = pytest.mark.lab

PLUGIN = [sys.executable, "-c", "from egress_router.cni.plugin import main; raise SystemExit(main())"]


@pytest.fixture(scope="module", params=WIRINGS)
def lab(request):  # type: ignore[no-untyped-def]
    # macvlan=False: the plugin, not the lab, creates the router's macvlan0.
    with Lab(ipv6=False, macvlan=False, wiring=request.param) as built:
        built.serve([("203.0.113.25", 80, "tcp"), ("203.0.113.26", 80, "tcp")])
        yield built


def cni(lab: Lab, command: str, config: dict | None = None, ifname: str = "macvlan0",  # type: ignore[type-arg]
        netns: str | None = None) -> tuple[int, dict | None]:  # type: ignore[type-arg]
    env = {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": "egress-router-test",
        "CNI_NETNS": netns or f"/var/run/netns/{lab.ns('router')}",
        "CNI_IFNAME": ifname,
        "CNI_PATH": "/opt/cni/bin",
    }
    done = lab.exec("node", PLUGIN, check=False, env=lab.router_env(env),
                    input=json.dumps(config or {"cniVersion": "1.0.0"}))
    return done.returncode, json.loads(done.stdout) if done.stdout.strip() else None


def conf(**extra: object) -> dict:  # type: ignore[type-arg]
    return {"cniVersion": "1.0.0", "name": "egress", "type": "egress-router-cni", "master": "nic0", **extra}


def test_version(lab):
    code, out = cni(lab, "VERSION")
    assert code == 0 and out is not None
    assert out["cniVersion"] == "1.0.0" and "1.0.0" in out["supportedVersions"]


def test_add_check_del_twice(lab):
    code, result = cni(lab, "ADD", conf(mode="bridge", mtu=1400))
    assert code == 0, result
    try:
        assert result is not None
        (interface,) = result["interfaces"]
        assert interface["name"] == "macvlan0" and interface["mac"] == lab.mac("router", "macvlan0")
        shown = json.loads(lab.exec("router", ["ip", "-j", "-d", "link", "show", "macvlan0"]).stdout)[0]
        assert shown["linkinfo"]["info_kind"] == "macvlan" and shown["linkinfo"]["info_data"]["mode"] == "bridge"
        assert shown["mtu"] == 1400
        assert cni(lab, "CHECK", conf(mode="bridge", prevResult=result)) == (0, None)
        code, error = cni(lab, "CHECK", conf(mode="private", prevResult=result))
        assert code == 1 and error is not None and error["code"] == 102
    finally:
        assert cni(lab, "DEL", conf()) == (0, None)
    assert not lab.has_link("router", "macvlan0")
    assert cni(lab, "DEL", conf()) == (0, None)  # idempotent
    assert cni(lab, "DEL", conf(), netns="/var/run/netns/no-such-pod") == (0, None)


def test_mtu_defaults_to_the_masters(lab):
    master = json.loads(lab.exec("node", ["ip", "-j", "link", "show", "nic0"]).stdout)[0]["mtu"]
    code, result = cni(lab, "ADD", conf())
    try:
        assert code == 0, result
        assert json.loads(lab.exec("router", ["ip", "-j", "link", "show", "macvlan0"]).stdout)[0]["mtu"] == master
    finally:
        cni(lab, "DEL", conf())


FAILING_ADDS = {
    "missing master": (conf(master="nope0"), 100),
    "bad mode": (conf(mode="source"), 7),
    "bad router rule": (conf(egressRouter={"source": "192.0.2.99/24", "gateway": "192.0.2.1",
                                           "destinations": ["203.0.113.27", "80 tcp 203.0.113.25"]}), 7),
    "old version": ({**conf(), "cniVersion": "0.2.0"}, 1),
    "forwarding as a string": (conf(forwarding="false"), 7),
    "podInterface not a string": (conf(egressRouter={"source": "192.0.2.99/24", "gateway": "192.0.2.1",
                                                     "destinations": "203.0.113.27", "podInterface": 5}), 7),
}


@pytest.mark.parametrize("config, code", FAILING_ADDS.values(), ids=FAILING_ADDS.keys())
def test_failed_add_leaves_nothing(lab, config, code):
    exit_code, error = cni(lab, "ADD", config)
    assert exit_code == 1 and error is not None, error
    assert error["code"] == code and error["msg"] and isinstance(error["details"], str)
    assert not lab.has_link("router", "macvlan0")
    assert lab.nft_table() is None


def test_failed_router_setup_rolls_the_link_back(lab, tmp_path):
    # The link is made, then the router fails inside the pod: here because the node's PATH has
    # ip, nsenter and sh but no nft. ADD must report it and delete the link it had made.
    for tool in ("ip", "nsenter", "sh"):
        found = shutil.which(tool)
        assert found is not None
        (tmp_path / tool).symlink_to(found)
    settings = {"source": "192.0.2.99/24", "gateway": "192.0.2.1", "destinations": "80 tcp 203.0.113.25"}
    env = lab.router_env({"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "x", "CNI_IFNAME": "macvlan0",
                          "CNI_NETNS": f"/var/run/netns/{lab.ns('router')}", "CNI_PATH": "/opt/cni/bin"})
    env["PATH"] = str(tmp_path)
    done = lab.exec("node", PLUGIN, check=False, env=env, input=json.dumps(conf(egressRouter=settings)))
    error = json.loads(done.stdout)
    assert done.returncode == 1 and error["code"] == 101, error
    assert "nft" in error.get("details", "")
    assert not lab.has_link("router", "macvlan0")


def test_router_works_through_the_plugins_interface(lab):
    code, result = cni(lab, "ADD", conf(forwarding=True))
    assert code == 0, result
    try:
        assert lab.sysctl("router", "net/ipv4/ip_forward") == "1"
        # Loose reverse-path filtering on the interface it made: what an unprivileged router
        # cannot set itself, and needs for the replies that arrive on it.
        assert lab.sysctl("router", "net/ipv4/conf/macvlan0/rp_filter") == "2"
        done = lab.run_router(seed_env("init"))
        assert done.returncode == 0, done.stderr
        probe = lab.connect(80)
        assert probe.ok, probe.error
        assert (probe.source, probe.server) == ("192.0.2.99", ("203.0.113.25", 80))
    finally:
        lab.reset_router()
        cni(lab, "DEL", conf())


def test_plugin_sets_the_router_up_itself(lab):
    settings = {"source": "192.0.2.99/24", "gateway": "192.0.2.1", "destinations": SEED_DESTINATION}
    code, result = cni(lab, "ADD", conf(egressRouter=settings))
    assert code == 0, result
    try:
        assert result is not None
        assert result["ips"] == [{"address": "192.0.2.99/24", "gateway": "192.0.2.1", "interface": 0}]
        assert lab.nft_table() is not None
        assert cni(lab, "CHECK", conf(egressRouter=settings, prevResult=result)) == (0, None)
        probe = lab.connect(8080)
        assert probe.ok and probe.source == "192.0.2.99", probe
        assert "lookup 2430" in lab.exec("router", ["ip", "rule"]).stdout
    finally:
        assert cni(lab, "DEL", conf(egressRouter=settings)) == (0, None)
    assert lab.nft_table() is None and not lab.has_link("router", "macvlan0")
    assert "2430" not in lab.exec("router", ["ip", "rule"]).stdout + lab.exec("router", ["ip", "-6", "rule"]).stdout
