"""A DHCPDISCOVER probe: which DHCP servers answer on an interface.

Used before the control node starts its own DHCP server (a second server on a segment breaks it)
and by the tests that prove dnsmasq answers on the compute interface only. Sends one broadcast
DISCOVER from the given interface (SO_BINDTODEVICE, never the default route); needs root.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from dataclasses import dataclass

SO_BINDTODEVICE = 25
MAGIC_COOKIE = b"\x63\x82\x53\x63"
DHCPDISCOVER, DHCPOFFER = 1, 2
# dnsmasq pings a dynamic address for up to 3 s before offering it: wait longer than that.


@dataclass(frozen=True)
class Offer:
    server: str  # option 54, server identifier (or the packet's source)
    address: str  # the address offered (yiaddr)


def discover_packet(mac: bytes, xid: int) -> bytes:
    header = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 1, 1, 6, 0, xid, 0, 0x8000, b"\0" * 4, b"\0" * 4,
                         b"\0" * 4, b"\0" * 4, mac.ljust(16, b"\0"), b"", b"")
    options = bytes([53, 1, DHCPDISCOVER]) + bytes([55, 3, 1, 3, 54]) + b"\xff"
    return header + MAGIC_COOKIE + options


def parse_offer(data: bytes, xid: int, src: str) -> Offer | None:
    if len(data) < 240 or data[0] != 2 or struct.unpack("!I", data[4:8])[0] != xid or data[236:240] != MAGIC_COOKIE:
        return None
    opts, i, kind, server = data[240:], 0, None, src
    while i < len(opts) and opts[i] != 255:
        if opts[i] == 0:
            i += 1
            continue
        code, length = opts[i], opts[i + 1]
        value = opts[i + 2: i + 2 + length]
        if code == 53:
            kind = value[0]
        elif code == 54 and length == 4:
            server = socket.inet_ntoa(value)
        i += 2 + length
    return Offer(server, socket.inet_ntoa(data[16:20])) if kind == DHCPOFFER else None


def probe(interface: str, timeout: float = 6.0) -> list[Offer]:
    """Broadcast one DISCOVER on interface and collect the offers that arrive within timeout."""
    mac = bytes.fromhex(open(f"/sys/class/net/{interface}/address").read().strip().replace(":", ""))
    xid = int.from_bytes(os.urandom(4), "big")
    offers: list[Offer] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        s.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, interface.encode())
        s.bind(("0.0.0.0", 68))
        s.sendto(discover_packet(mac, xid), ("255.255.255.255", 67))
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            s.settimeout(left)
            try:
                data, (src, _) = s.recvfrom(4096)
            except TimeoutError:
                break
            offer = parse_offer(data, xid, src)
            if offer and offer not in offers:
                offers.append(offer)
    return offers


if __name__ == "__main__":
    import sys

    for o in probe(sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 6.0):
        print(f"{o.server} {o.address}")
