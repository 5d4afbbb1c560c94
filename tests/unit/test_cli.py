"""The command as a user meets it: exit codes, one line per problem, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from egress_router.cli import main

SEED = "80   tcp 203.0.113.25\n8080 tcp 203.0.113.26 80\n8443 tcp 203.0.113.26 443\n203.0.113.27\n"
ENV = {"EGRESS_SOURCE": "192.0.2.99/24", "EGRESS_GATEWAY": "192.0.2.1", "EGRESS_DESTINATION": SEED}


def test_unit_test_mode_prints_the_plan(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([], {**ENV, "EGRESS_ROUTER_MODE": "unit-test"}) == 0
    out = capsys.readouterr().out
    assert "table inet egress_router {" in out
    assert "# redirect 8080/tcp -> 203.0.113.26 port 80" in out
    assert "# ip route replace default via 192.0.2.1 dev macvlan0" in out


def test_config_error_exits_2_with_one_line_per_problem(capsys: pytest.CaptureFixture[str]) -> None:
    env = {**ENV, "EGRESS_DESTINATION": "80 tcp 999.1.2.3\n90 udp 203.0.113.25 0\n", "EGRESS_ROUTER_MODE": "init"}
    assert main([], env) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "egress-router: config error: EGRESS_DESTINATION line 1: '999.1.2.3' is not a valid IP address: '80 tcp 999.1.2.3'",
        "egress-router: config error: EGRESS_DESTINATION line 2: remote port 0 is out of range 1-65535: '90 udp 203.0.113.25 0'",
    ]


def test_validate_files(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    good = tmp_path / "good"
    good.write_text(SEED)
    bad = tmp_path / "bad"
    bad.write_text("80 tcp 203.0.113.25\n80 tcp 203.0.113.26\n")
    assert main(["validate", str(good)], {}) == 0
    assert "3 rule(s), fallback 203.0.113.27" in capsys.readouterr().out
    assert main(["validate", str(good), str(bad), str(tmp_path / "missing")], {}) == 2
    err = capsys.readouterr().err
    assert f"{bad} line 2: local port 80/tcp is already used on line 1" in err
    assert f"{tmp_path / 'missing'}: cannot read" in err


def test_plan_reads_the_environment(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan"], {**ENV, "EGRESS_ROUTER_MODE": "legacy"}) == 0
    assert "tcp dport 9090 return" in capsys.readouterr().out


def test_help_explains_the_environment_contract(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"], {}) == 0
    out = capsys.readouterr().out
    for name in ("EGRESS_SOURCE", "EGRESS_GATEWAY", "EGRESS_DESTINATION", "EGRESS_ROUTER_MODE",
                 "EGRESS_ROUTER_DEBUG", "EGRESS_DESTINATION_FILE", "EGRESS_INTERFACE", "EGRESS_POD_INTERFACE"):
        assert name in out


def test_unknown_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["frobnicate"], {}) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_unit_test_mode_needs_no_privileges_and_changes_nothing() -> None:
    # A real process, as a pod would start it; nft/ip are replaced by failing stand-ins on
    # PATH so that any attempt to touch the kernel would show.
    env = {**ENV, "EGRESS_ROUTER_MODE": "unit-test", "PATH": "/nonexistent", "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-m", "egress_router"], env=env, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "" and "table inet egress_router" in done.stdout


def test_failure_to_apply_is_one_line_and_exit_1() -> None:
    # No such interface here (and no nft on the PATH): one line, not a traceback, and nothing
    # is touched (the interface is checked before anything is applied).
    env = {
        **ENV,
        "EGRESS_ROUTER_MODE": "init",
        "EGRESS_INTERFACE": "erl-absent0",
        "PATH": "/nonexistent",
        "PYTHONPATH": os.pathsep.join(sys.path),
    }
    done = subprocess.run([sys.executable, "-m", "egress_router"], env=env, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 1
    assert len(done.stderr.splitlines()) == 1 and "Traceback" not in done.stderr
    assert "the egress interface erl-absent0 does not exist" in done.stderr


@pytest.mark.parametrize("command", ["validate", "plan"])
def test_subcommands_explain_themselves(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([command, "--help"], {}) == 0
    assert capsys.readouterr().out.startswith(f"usage: egress-router {command}")


def test_help_lists_every_variable_the_readme_documents(capsys: pytest.CaptureFixture[str]) -> None:
    import pathlib
    import re

    main(["--help"], {})
    out = capsys.readouterr().out
    readme = (pathlib.Path(__file__).parents[2] / "README.md").read_text()
    documented = set(re.findall(r"^\| `(EGRESS_[A-Z_]+)` \|", readme, re.MULTILINE))
    assert documented and all(name in out for name in documented), documented - set(out.split())


def test_validate_lists_many_problems_then_counts_the_rest(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    from egress_router.cli import VALIDATE_PROBLEMS

    path = tmp_path / "dups"
    path.write_text("80 tcp 203.0.113.25\n" * (VALIDATE_PROBLEMS + 501))
    assert main(["validate", str(path)], {}) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == VALIDATE_PROBLEMS + 1
    assert err[0] == f"egress-router: config error: {path} line 2: local port 80/tcp is already used on line 1: '80 tcp 203.0.113.25'"
    assert err[-1] == "egress-router: config error: ... and 500 more problem(s) not shown"


def test_validate_refuses_a_huge_file_without_reading_it(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "huge"
    with open(path, "wb") as handle:
        handle.truncate(57 * 2**20)
    assert main(["validate", str(path)], {}) == 2
    assert capsys.readouterr().err == (
        f"egress-router: config error: {path}: {path} is 57.0 MiB, over the 16 MiB limit of a destination file (not read)\n"
    )
