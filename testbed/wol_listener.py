"""The virtual cluster's Wake-on-LAN: powers on a node when a magic packet for its MAC arrives.

Runs inside the testbed's namespace: python -m testbed.wol_listener STATE_DIR BRIDGE
QEMU machines and containers cannot be woken, so "off" is "no process"; this stands in for the NIC's wake
logic and starts the node the way its kind starts (testbed/base.py start_node). Malformed packets and
packets for unknown MACs are logged and ignored.
"""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

from onedotzero.errors import UserError
from onedotzero.power import parse_magic_packet
from testbed.base import NODES_FILE, read_specs, start_node

SO_BINDTODEVICE = 25


def main(state: Path, bridge: str) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, bridge.encode())
    sock.bind(("", 9))
    print(f"wol: listening on {bridge} udp/9", flush=True)
    while True:
        data, (src, _) = sock.recvfrom(2048)
        mac = parse_magic_packet(data)
        stamp = time.strftime("%H:%M:%S")
        if mac is None:
            print(f"{stamp} wol: ignored a malformed packet of {len(data)} bytes from {src}", flush=True)
            continue
        specs = read_specs(state / NODES_FILE)
        if mac not in specs:
            print(f"{stamp} wol: ignored a magic packet for unknown MAC {mac} from {src}", flush=True)
            continue
        try:
            what = "powered on" if start_node(specs[mac]) else "already on"
            print(f"{stamp} wol: magic packet for {mac} from {src}: {specs[mac].name} {what}", flush=True)
        except UserError as e:
            print(f"{stamp} wol: could not start {specs[mac].name}: {e}", flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
