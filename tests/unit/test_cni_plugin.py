"""egress-router-cni's `main()` without root: CNI_* environment and stdin patched, nothing run.

Every failure must be the spec's error object on stdout (cniVersion, code, msg, details) and a
non-zero exit, never a traceback; the validation must happen before any tool is run.
"""

from __future__ import annotations

import io
import json
import sys

import pytest

from egress_router.cni import link, plugin, router

CNI_VARIABLES = ("CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS", "CNI_PATH")


@pytest.fixture(autouse=True)
def no_tools(monkeypatch):  # type: ignore[no-untyped-def]
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"a tool was run: {args}")

    monkeypatch.setattr(link, "run", refuse)
    monkeypatch.setattr(router, "run", refuse)
    for name in CNI_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def call(monkeypatch, capsys, env: dict[str, str], stdin: str | io.TextIOBase = "") -> tuple[int, dict]:  # type: ignore[no-untyped-def, type-arg]
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin) if isinstance(stdin, str) else stdin)
    code = plugin.main()
    out, err = capsys.readouterr()
    assert err == "" and "Traceback" not in out
    return code, json.loads(out)


def add_env(tmp_path) -> dict[str, str]:  # type: ignore[no-untyped-def]
    netns = tmp_path / "netns"
    netns.touch()
    return {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": str(netns), "CNI_IFNAME": "macvlan0",
            "CNI_PATH": "/opt/cni/bin"}


def conf(**extra: object) -> str:
    return json.dumps({"cniVersion": "1.0.0", "name": "egress", "type": "egress-router-cni", "master": "eth1", **extra})


def assert_error(code: int, out: dict, expected: int, text: str) -> None:  # type: ignore[type-arg]
    assert code != 0, out
    assert set(out) == {"cniVersion", "code", "msg", "details"}, out
    assert out["code"] == expected, out
    assert isinstance(out["msg"], str) and text in out["msg"] + out["details"], out
    assert isinstance(out["details"], str)


def test_version(monkeypatch, capsys):
    code, out = call(monkeypatch, capsys, {"CNI_COMMAND": "VERSION"})
    assert code == 0
    assert out == {"cniVersion": "1.0.0", "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0"]}


@pytest.mark.parametrize("stdin", ["", "{", "[1, 2]", "null"])
def test_undecodable_config(monkeypatch, capsys, tmp_path, stdin):
    code, out = call(monkeypatch, capsys, add_env(tmp_path), stdin)
    assert_error(code, out, 6, "network configuration")


def test_config_that_is_not_utf8(monkeypatch, capsys, tmp_path):
    stdin = io.TextIOWrapper(io.BytesIO(b'{"cniVersion": "1.0.0", "name": "\xff"}'), encoding="utf-8")
    code, out = call(monkeypatch, capsys, add_env(tmp_path), stdin)
    assert_error(code, out, 6, "not UTF-8")


@pytest.mark.parametrize("version", ["0.2.0", "2.0.0", 1, None])
def test_bad_cni_version(monkeypatch, capsys, tmp_path, version):
    code, out = call(monkeypatch, capsys, add_env(tmp_path), json.dumps({"cniVersion": version, "name": "x"}))
    assert_error(code, out, 1, "cniVersion")
    assert "1.0.0" in out["details"]


@pytest.mark.parametrize("missing", ["CNI_CONTAINERID", "CNI_IFNAME", "CNI_NETNS"])
def test_missing_environment(monkeypatch, capsys, tmp_path, missing):
    env = add_env(tmp_path)
    del env[missing]
    code, out = call(monkeypatch, capsys, env, conf())
    assert_error(code, out, 4, missing)


def test_namespace_that_does_not_exist(monkeypatch, capsys, tmp_path):
    env = {**add_env(tmp_path), "CNI_NETNS": str(tmp_path / "gone")}
    code, out = call(monkeypatch, capsys, env, conf())
    assert_error(code, out, 4, "does not exist")


@pytest.mark.parametrize("command", ["", "add", "GC", "STATUS"])
def test_unknown_command(monkeypatch, capsys, tmp_path, command):
    # Said whatever stdin holds: the command is judged before the config is read.
    code, out = call(monkeypatch, capsys, {**add_env(tmp_path), "CNI_COMMAND": command}, "")
    assert_error(code, out, 4, "CNI_COMMAND")


INVALID = {
    "mode": ({"mode": "source"}, "mode 'source'"),
    "mode-type": ({"mode": 1}, "mode 1"),
    "mtu-low": ({"mtu": 67}, "mtu 67"),
    "mtu-high": ({"mtu": 65536}, "mtu 65536"),
    "mtu-string": ({"mtu": "1500"}, "mtu '1500'"),
    "mtu-bool": ({"mtu": True}, "mtu True"),
    "forwarding-string": ({"forwarding": "false"}, "forwarding 'false' is not a boolean"),
    "forwarding-number": ({"forwarding": 1}, "forwarding 1 is not a boolean"),
    "master": ({"master": "eth 1"}, "master 'eth 1'"),
    "router-not-object": ({"egressRouter": ["x"]}, "egressRouter must be an object"),
    "router-unknown-field": ({"egressRouter": {"sources": "192.0.2.99"}}, "unknown field(s) sources"),
    "router-source-type": ({"egressRouter": {"source": 5, "gateway": "192.0.2.1", "destinations": "203.0.113.27"}},
                           "egressRouter.source must be a string"),
    "router-pod-interface": ({"egressRouter": {"source": "192.0.2.99/24", "gateway": "192.0.2.1",
                                               "destinations": "203.0.113.27", "podInterface": 5}},
                             "podInterface 5 must be a string"),
    "router-debug": ({"egressRouter": {"source": "192.0.2.99/24", "gateway": "192.0.2.1",
                                       "destinations": "203.0.113.27", "debug": "false"}},
                     "debug 'false' must be a boolean"),
    "router-rules": ({"egressRouter": {"source": "192.0.2.99/24", "gateway": "192.0.2.1",
                                       "destinations": ["203.0.113.27", "80 tcp 203.0.113.25"]}},
                     "the fallback on line 1 must be the last rule"),
}


@pytest.mark.parametrize("extra, message", INVALID.values(), ids=INVALID.keys())
def test_invalid_config(monkeypatch, capsys, tmp_path, extra, message):
    code, out = call(monkeypatch, capsys, add_env(tmp_path), conf(**extra))
    assert_error(code, out, 7, message)


def test_ipam_is_unsupported(monkeypatch, capsys, tmp_path):
    code, out = call(monkeypatch, capsys, add_env(tmp_path), conf(ipam={"type": "host-local"}))
    assert_error(code, out, 2, "ipam")


def test_check_without_prev_result(monkeypatch, capsys, tmp_path):
    code, out = call(monkeypatch, capsys, {**add_env(tmp_path), "CNI_COMMAND": "CHECK"}, conf())
    assert_error(code, out, 7, "prevResult")


def test_an_unexpected_exception_is_an_error_object(monkeypatch, capsys, tmp_path):
    def broken(name: str) -> int:
        raise KeyError("mtu")

    monkeypatch.setattr(link, "mtu_of", broken)
    code, out = call(monkeypatch, capsys, add_env(tmp_path), conf())
    assert_error(code, out, 999, "unexpected error: KeyError: 'mtu'")
    assert "in broken" in out["details"]
    assert out["cniVersion"] == "1.0.0"


def test_documented_codes():
    from pathlib import Path

    docs = (Path(__file__).resolve().parents[2] / "docs" / "kubernetes.md").read_text()
    assert "999 (unexpected error" in docs
