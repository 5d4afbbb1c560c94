"""Empty the conntrack table of the namespace it runs in, as `conntrack -F` would.

`flush_conntrack.py`, run in a lab namespace. One ctnetlink delete request without a tuple
(which the kernel takes as "all entries" of the family), acknowledged. Prints JSON: the count
of entries before and after.
"""

from __future__ import annotations

import json
import socket
import struct
from pathlib import Path

NETLINK_NETFILTER = 12
NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_DELETE = 2
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLMSG_ERROR = 0x2
COUNT = Path("/proc/sys/net/netfilter/nf_conntrack_count")


def count() -> int:
    return int(COUNT.read_text()) if COUNT.exists() else 0


def flush(family: int) -> None:
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER) as sock:
        sock.bind((0, 0))
        body = struct.pack("BBH", family, 0, 0)  # nfgenmsg: family, version, resource id
        kind = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE
        header = struct.pack("=IHHII", 16 + len(body), kind, NLM_F_REQUEST | NLM_F_ACK, 1, 0)
        sock.send(header + body)
        reply = sock.recv(65536)
        _, kind, _, _, _ = struct.unpack_from("=IHHII", reply)
        error = struct.unpack_from("=i", reply, 16)[0] if kind == NLMSG_ERROR else 0
        if error:
            raise OSError(-error, f"conntrack flush refused: {-error}")


def main() -> None:
    before = count()
    for family in (socket.AF_INET, socket.AF_INET6):
        flush(family)
    print(json.dumps({"before": before, "after": count()}))


if __name__ == "__main__":
    main()
