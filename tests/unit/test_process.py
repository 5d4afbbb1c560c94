"""The small process runner that replaces `subprocess` on the start-up path: it must behave as
`subprocess.run(..., input=..., capture_output=True, text=True)` does for nft and ip."""

from __future__ import annotations

import os
import sys

import pytest

from egress_router.process import Spawned, run

PY = sys.executable


def test_output_error_and_status_come_back_separately() -> None:
    done = run([PY, "-c", "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"])
    assert (done.returncode, done.stdout, done.stderr) == (3, "out\n", "err\n")


def test_input_reaches_the_child() -> None:
    done = run([PY, "-c", "import sys; sys.stdout.write(sys.stdin.read().upper())"], "add table\n")
    assert done.stdout == "ADD TABLE\n"


def test_no_input_is_an_empty_stdin_not_the_parents() -> None:
    done = run([PY, "-c", "import sys; print(repr(sys.stdin.read()))"])
    assert done.stdout == "''\n"


def test_large_input_and_output_at_once_do_not_deadlock() -> None:
    # Far more than a pipe holds in each direction: an echo that writes while it reads.
    text = "x" * 4_000_000 + "\n"
    script = "import sys\nfor line in sys.stdin: sys.stdout.write(line); sys.stderr.write(line)"
    done = run([PY, "-c", script], text)
    assert done.returncode == 0
    assert done.stdout == text and done.stderr == text


def test_a_missing_program_raises_file_not_found() -> None:
    with pytest.raises(FileNotFoundError):
        run(["egress-router-no-such-program"])


def test_a_child_that_does_not_read_its_input_is_not_an_error_of_ours() -> None:
    done = run([PY, "-c", "import sys; sys.exit(7)"], "y" * 1_000_000)
    assert done.returncode == 7


def test_a_child_gets_sigpipe_back_and_dies_of_it_writing_to_a_closed_pipe() -> None:
    # Python ignores SIGPIPE and a child would inherit that: `yes` would then fail with an
    # EPIPE error message instead of dying quietly of the signal, as it does under a shell.
    done = run(["sh", "-c", "yes | head -c1 >/dev/null; echo done"])
    assert (done.stdout, done.stderr) == ("done\n", "")


def test_a_started_child_runs_while_the_caller_works() -> None:
    child = Spawned([PY, "-c", "import sys; print(len(sys.stdin.read()))"], "z" * 100)
    assert child.pid > 0
    done = child.wait()
    assert done.stdout == "100\n"


def test_no_descriptor_is_left_open() -> None:
    before = set(os.listdir("/proc/self/fd"))
    for _ in range(5):
        run([PY, "-c", "print(1)"], "input")
    assert set(os.listdir("/proc/self/fd")) == before
