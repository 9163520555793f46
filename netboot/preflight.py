"""Checks before the control node starts serving DHCP/TFTP/HTTP/NFS on the compute interface.

Runs on the control node. Changes nothing; returns every problem found, each naming the fix:
  - the compute interface exists and carries the control address on the cluster subnet;
  - nothing but our own services listens on the ports we need on that interface;
  - no other DHCP server answers on the segment (a second one breaks it: offer proxy mode instead).
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass

from onedotzero import dhcp
from onedotzero.errors import UserError
from onedotzero.inventory import Inventory
from onedotzero.proc import require_interface, run

# (protocol, port, what needs it, processes that may hold it: ours, or the kernel's NFS server (no process))
PORTS = (
    ("udp", 67, "DHCP", {"dnsmasq"}),
    ("udp", 69, "TFTP", {"dnsmasq"}),
    ("tcp", 80, "HTTP", {"nginx"}),
    ("tcp", 111, "NFS (rpcbind)", {"rpcbind", "systemd"}),
    ("tcp", 2049, "NFS", {"", "ganesha.nfsd"}),
)


@dataclass(frozen=True)
class Listener:
    proto: str
    address: str  # "*" for any
    interface: str  # "" unless bound to a device (addr%dev)
    port: int
    process: str
    pid: int | None


SS_LINE = re.compile(r"^(?P<proto>udp|tcp)\s+\S+\s+\d+\s+\d+\s+(?P<local>\S+)\s+\S+\s*(?P<users>.*)$")
SS_USER = re.compile(r'\("(?P<name>[^"]+)",pid=(?P<pid>\d+)')


def parse_ss(text: str) -> list[Listener]:
    """`ss -H -lntup` lines -> listeners."""
    out = []
    for line in text.splitlines():
        m = SS_LINE.match(line.strip())
        if not m:
            continue
        local = m["local"]
        host, _, port = local.rpartition(":")
        host, _, iface = host.partition("%")
        host = host.strip("[]")
        host = "*" if host in ("0.0.0.0", "::", "*") else host
        user = SS_USER.search(m["users"])
        out.append(Listener(m["proto"], host, iface, int(port), user["name"] if user else "",
                            int(user["pid"]) if user else None))
    return out


def interface_problems(inv: Inventory) -> list[str]:
    c = inv.control
    try:
        require_interface(c.compute_interface, inv.path)
    except UserError as e:
        return [e.line()]
    proc = run(["ip", "-j", "addr", "show", "dev", c.compute_interface], capture=True)
    addrs = {ipaddress.IPv4Interface(f"{a['local']}/{a['prefixlen']}")
             for link in json.loads(proc.stdout) for a in link.get("addr_info", []) if a.get("family") == "inet"}
    if ipaddress.IPv4Interface(f"{c.address}/{c.subnet.prefixlen}") not in addrs:
        have = ", ".join(map(str, sorted(addrs))) or "none"
        return [f"{c.compute_interface} does not carry {c.address}/{c.subnet.prefixlen} (it has: {have}); "
                f"configure it (e.g. netplan) or fix control.address in {inv.path}"]
    return []


def port_problems(inv: Inventory, listeners: list[Listener]) -> list[str]:
    problems = []
    c = inv.control
    for proto, port, what, allowed in PORTS:
        for lst in listeners:
            if lst.proto != proto or lst.port != port or lst.process in allowed:
                continue
            on_ours = lst.address in ("*", str(c.address)) and lst.interface in ("", c.compute_interface)
            if on_ours:
                who = f"{lst.process} (pid {lst.pid})" if lst.process else "an unknown process"
                problems.append(f"port {port}/{proto} ({what}) on {c.compute_interface} is taken by {who}: "
                                f"stop it, or bind it to another interface")
    return problems


def dhcp_problems(inv: Inventory, timeout: float) -> list[str]:
    try:
        offers = dhcp.probe(inv.control.compute_interface, timeout)
    except OSError as e:
        return [f"cannot probe for DHCP servers on {inv.control.compute_interface}: {e} "
                "(a DHCP client on that interface holds port 68? give the interface a static address)"]
    foreign = sorted({o.server for o in offers if o.server != str(inv.control.address)})
    if foreign:
        return [f"another DHCP server answers on {inv.control.compute_interface}: {', '.join(foreign)}; "
                "two DHCP servers break the segment: switch it off, or serve PXE only "
                "(`cluster.py netboot render --proxy-dhcp`, playbook variable pxe_server_proxy_dhcp: true)"]
    return []


def preflight(inv: Inventory, probe_dhcp: bool = True, dhcp_timeout: float = 6.0) -> list[str]:
    problems = interface_problems(inv)
    if problems:
        return problems  # the other checks need the interface
    ss = run(["ss", "-H", "-lntup"], capture=True)
    problems += port_problems(inv, parse_ss(ss.stdout))
    if probe_dhcp:
        problems += dhcp_problems(inv, dhcp_timeout)
    return problems
