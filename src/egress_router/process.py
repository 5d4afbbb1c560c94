"""Running `nft`: spawn, feed stdin, collect stdout and stderr, wait.

The standard library's `subprocess` does this too, but importing it (with the `locale`,
`signal`, `threading`, `selectors` and `contextlib` modules it pulls in) costs every pod start
about 5 ms, a tenth of it. This is the part the router needs, on `os.posix_spawnp` and `poll`.
"""

from __future__ import annotations

import os
import select

_SIGPIPE = 13  # Python ignores SIGPIPE; a child gets the default back, as `subprocess` does
_CHUNK = 65536


class Completed:
    """What a finished child left: its exit status and its output, decoded as UTF-8."""

    __slots__ = ("returncode", "stdout", "stderr")

    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


class Spawned:
    """A running child whose stdin has been written whole and closed."""

    def __init__(self, argv: list[str], stdin: str | None) -> None:
        """Raises FileNotFoundError (or another OSError) if the program cannot be started."""
        child_in, self._in = os.pipe()
        self._out, child_out = os.pipe()
        self._err, child_err = os.pipe()
        try:
            self.pid = os.posix_spawnp(
                argv[0],
                argv,
                os.environ,
                file_actions=[
                    (os.POSIX_SPAWN_DUP2, child_in, 0),
                    (os.POSIX_SPAWN_DUP2, child_out, 1),
                    (os.POSIX_SPAWN_DUP2, child_err, 2),
                ],
                setsigdef=(_SIGPIPE,),
            )
        except BaseException:
            for fd in (self._in, self._out, self._err):
                os.close(fd)
            raise
        finally:
            for fd in (child_in, child_out, child_err):
                os.close(fd)
        self._pending = (stdin or "").encode()
        self._output: dict[int, list[bytes]] = {self._out: [], self._err: []}
        # A short input (a script without map elements) fits the pipe: written now, the child
        # reads it while this process goes on; a longer one is written while output is read.
        if len(self._pending) <= _CHUNK:
            self._write()

    def _write(self) -> None:
        try:
            while self._pending:
                self._pending = self._pending[os.write(self._in, self._pending[:_CHUNK]) :]
        except BrokenPipeError:
            self._pending = b""  # the child left without reading: its status says why
        except BlockingIOError:
            return
        os.close(self._in)
        self._in = -1

    def wait(self) -> Completed:
        poller = select.poll()
        for fd in self._output:
            poller.register(fd, select.POLLIN)
        if self._in >= 0:
            os.set_blocking(self._in, False)
            poller.register(self._in, select.POLLOUT)
        open_outputs = len(self._output)
        while open_outputs:
            for fd, _ in poller.poll():
                if fd == self._in:
                    self._write()
                    if self._in < 0:
                        poller.unregister(fd)
                    continue
                data = os.read(fd, _CHUNK)
                if data:
                    self._output[fd].append(data)
                else:
                    poller.unregister(fd)
                    os.close(fd)
                    open_outputs -= 1
        if self._in >= 0:
            os.close(self._in)
            self._in = -1
        _, status = os.waitpid(self.pid, 0)
        stdout, stderr = (b"".join(self._output[fd]).decode(errors="replace") for fd in (self._out, self._err))
        return Completed(os.waitstatus_to_exitcode(status), stdout, stderr)


def run(argv: list[str], stdin: str | None = None) -> Completed:
    """Run a program to its end."""
    return Spawned(argv, stdin).wait()
