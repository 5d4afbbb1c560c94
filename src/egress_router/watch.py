"""Notice when the destination file's content changes, by polling.

A mounted ConfigMap is updated by writing the new files in a fresh `..<timestamp>` directory
and renaming a `..data` symlink onto it: the path the router was given never changes and is
never written to, so inotify on it sees nothing. `os.stat` follows the symlinks, so a swap
shows up as another inode; the content hash then decides whether anything changed (a swap to
identical content, or a `touch`, is not a reload). Polling keeps this dependency-free and
costs one `stat` per tick.

A path that cannot be read has a "content" too: the reason (missing, a directory, a symlink
loop, too big, ...). A change from one reason to another is a change, so that each is tried,
reported and counted once; the same reason at every tick is not.
"""

from __future__ import annotations

import hashlib
import os
import stat

from .config import MAX_FILE_BYTES

StatKey = tuple[int, int, int, int, int, int]
CHUNK = 1 << 16


class FileWatcher:
    def __init__(self, path: str, limit: int = MAX_FILE_BYTES) -> None:
        self.path = path
        self.limit = limit
        self._key: StatKey | None = self._stat()
        self._digest: bytes = self._hash()

    def changed(self) -> bool:
        """True once per change of the content, or of why it cannot be read."""
        key = self._stat()
        if key == self._key and key is not None:
            return False
        self._key = key
        digest = self._hash()
        if digest == self._digest:
            return False
        self._digest = digest
        return True

    def _stat(self) -> StatKey | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mode, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def _hash(self) -> bytes:
        """The content's digest, or the reason it cannot be read (the config reader says it in
        words); never more than `limit` bytes are read, and a pipe never blocks."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as error:
            return b"error %d" % (error.errno or 0)
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                return b"mode %d" % stat.S_IFMT(info.st_mode)
            if info.st_size > self.limit:
                return b"size %d" % info.st_size
            digest = hashlib.sha256()
            left = self.limit + 1
            while left > 0 and (chunk := os.read(fd, min(CHUNK, left))):
                digest.update(chunk)
                left -= len(chunk)
            return digest.digest()
        except OSError as error:
            return b"error %d" % (error.errno or 0)
        finally:
            os.close(fd)
