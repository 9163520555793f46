"""Wake-on-LAN packets and the parallel SSH fan-out, without hardware."""

from __future__ import annotations

import dataclasses
import socket
import struct

import pytest

from onedotzero import inventory, power, ssh


def test_magic_packet_matches_independent_construction():
    mac = "04:7c:16:a1:00:10"
    # Independent construction: struct-packed sync stream, then the MAC's bytes from int parsing, 16 times.
    sync = struct.pack("!6B", *([255] * 6))
    mac_bytes = bytes(int(part, 16) for part in mac.split(":"))
    expected = sync + b"".join(mac_bytes for _ in range(16))
    packet = power.magic_packet(mac)
    assert len(packet) == 102
    assert packet == expected
    assert packet.hex().startswith("ffffffffffff047c16a10010047c16a10010")


@pytest.mark.parametrize("data,expected", [
    (power.magic_packet("52:54:00:0d:00:10"), "52:54:00:0d:00:10"),
    (power.magic_packet("52:54:00:0d:00:10") + b"\x01\x02\x03\x04", "52:54:00:0d:00:10"),  # SecureOn
    (power.magic_packet("52:54:00:0d:00:10")[:-1], None),  # truncated
    (b"\xff" * 5 + b"\x00" + power.magic_packet("52:54:00:0d:00:10")[6:], None),  # bad sync stream
    (b"\xff" * 6 + bytes.fromhex("5254000d0010") * 15 + bytes.fromhex("5254000d0011"), None),  # mixed MACs
    (b"hello", None),
])
def test_parse_magic_packet(data, expected):
    assert power.parse_magic_packet(data) == expected


class FakeSocket:
    sent: list = []
    opts: list = []

    def __init__(self, *a):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False

    def setsockopt(self, level, opt, value):
        FakeSocket.opts.append((level, opt, value))

    def sendto(self, data, addr):
        FakeSocket.sent.append((data, addr))


def test_sent_to_subnet_broadcast_on_compute_interface(inventory_file, monkeypatch):
    inv = inventory.load(inventory_file)
    inv = dataclasses.replace(inv, control=dataclasses.replace(inv.control, compute_interface="lo"))
    FakeSocket.sent, FakeSocket.opts = [], []
    monkeypatch.setattr(power.socket, "socket", FakeSocket)
    power.send_magic(inv, list(inv.nodes))
    assert (socket.SOL_SOCKET, power.SO_BINDTODEVICE, b"lo") in FakeSocket.opts
    assert (socket.SOL_SOCKET, socket.SO_BROADCAST, 1) in FakeSocket.opts
    assert FakeSocket.sent == [(power.magic_packet(n.mac), ("192.168.1.255", 9)) for n in inv.nodes]


def test_missing_interface_is_a_clear_error(inventory_file):
    inv = inventory.load(inventory_file)  # compute_interface eth9 does not exist here
    with pytest.raises(inventory.UserError, match="compute_interface 'eth9' does not exist"):
        power.send_magic(inv, list(inv.nodes))


def test_status_runs_in_parallel(inventory_file, monkeypatch):
    import threading
    import time

    inv = inventory.load(inventory_file)
    active, peak = [0], [0]
    lock = threading.Lock()

    def fake_ssh(inv_, node, command, timeout=30):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.3)
        with lock:
            active[0] -= 1
        if node.name == "node1":
            return ssh.Result(node.name, 255, "", "ssh: connect to host 192.168.1.11 port 22: No route to host", 0.3)
        return ssh.Result(node.name, 0, "ONEDOTZERO_IMAGE=golden\nONEDOTZERO_VERSION=V1\nUPTIME=75.5\nHOST=node0\n",
                          "", 0.3)

    monkeypatch.setattr(ssh, "run", fake_ssh)
    result = power.status(inv, list(inv.nodes))
    assert peak[0] == 2
    assert result[0].ok and result[0].version == "V1" and result[0].uptime == "1m15s"
    assert not result[1].ok and "No route to host" in result[1].error


def test_ssh_argv_uses_the_inventory_key(inventory_file):
    inv = inventory.load(inventory_file)
    argv = ssh.argv(inv, inv.nodes[0], "true")
    assert argv[-2:] == ["admin@192.168.1.10", "true"]
    assert "BatchMode=yes" in argv and str(inv.admin.ssh_public_key_path.with_suffix("")) in argv
