"""Interface names, checked once for the router and the CNI plugin alike. Pure, and imports
nothing: the CNI plugin runs it at every pod start too.

The kernel's own rule (`dev_valid_name`): 1-15 bytes, not `.` or `..`, no `/`, `:` or
whitespace. The router also refuses quotes, backslashes and unprintable characters: a name goes
into its nft script, which cannot quote them, and no CNI or runtime makes such names.
"""

from __future__ import annotations

RULE = "1-15 characters, no '/', ':', quotes or spaces"


def interface_name_problem(name: object) -> str | None:
    """Why `name` is not a usable interface name, or None if it is one."""
    if not isinstance(name, str):
        return f"{name!r} is not a valid interface name ({RULE})"
    size = len(name.encode())
    bad = not 0 < size <= 15 or name in (".", "..")
    if bad or any(c in name for c in '/:"\\') or any(c.isspace() or not c.isprintable() for c in name):
        return f"{name!r} is not a valid interface name ({RULE})"
    return None
