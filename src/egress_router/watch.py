"""Notice when the destination file's content changes, by polling.

A mounted ConfigMap is updated by writing the new files in a fresh `..<timestamp>` directory
and renaming a `..data` symlink onto it: the path the router was given never changes and is
never written to, so inotify on it sees nothing. `os.stat` follows the symlinks, so a swap
shows up as another inode; the content hash then decides whether anything changed (a swap to
identical content, or a `touch`, is not a reload). Polling keeps this dependency-free and
costs one `stat` per tick.
"""

from __future__ import annotations

import hashlib
import os

StatKey = tuple[int, int, int, int, int]


class FileWatcher:
    def __init__(self, path: str) -> None:
        self.path = path
        self._key: StatKey | None = self._stat()
        self._digest: bytes | None = self._hash()

    def changed(self) -> bool:
        """True once per change of the content (a file that vanishes counts as a change)."""
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
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def _hash(self) -> bytes | None:
        try:
            with open(self.path, "rb") as handle:
                return hashlib.sha256(handle.read()).digest()
        except OSError:
            return None
