"""Machines on the compute interface that the inventory does not know: from dnsmasq's leases and ARP."""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from pathlib import Path

from onedotzero.inventory import MAC_RE, Inventory
from onedotzero.proc import run


@dataclass(frozen=True)
class Seen:
    mac: str
    ip: str
    source: str  # "lease" or "arp"
    hostname: str = ""


def leases(path: Path) -> list[Seen]:
    """dnsmasq lease lines: `<expiry> <mac> <ip> <hostname|*> <client-id|*>`."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        parts = line.split()
        if len(parts) >= 4 and MAC_RE.match(parts[1].lower()):
            out.append(Seen(parts[1].lower(), parts[2], "lease", "" if parts[3] == "*" else parts[3]))
    return out


def neighbours(interface: str) -> list[Seen]:
    proc = run(["ip", "-j", "neigh", "show", "dev", interface], capture=True, check=False)
    if proc.returncode != 0 or not proc.stdout.strip():
        return []
    return [Seen(n["lladdr"].lower(), n["dst"], "arp") for n in json.loads(proc.stdout)
            if n.get("lladdr") and MAC_RE.match(n["lladdr"].lower()) and ":" not in n.get("dst", ":")]


def unknown_machines(inv: Inventory, lease_file: Path) -> list[Seen]:
    known = {n.mac for n in inv.nodes}
    found: dict[str, Seen] = {}
    for s in [*leases(lease_file), *neighbours(inv.control.compute_interface)]:
        if s.mac not in known and s.mac not in found and ipaddress.IPv4Address(s.ip) in inv.control.subnet:
            found[s.mac] = s
    return sorted(found.values(), key=lambda s: ipaddress.IPv4Address(s.ip))


def inventory_entry(inv: Inventory, seen: Seen, index: int) -> str:
    """A paste-ready node entry; the name and the fixed IP are suggestions, hardware must be chosen."""
    taken = {n.ip for n in inv.nodes} | {inv.control.address}
    first, last = inv.control.dhcp_range
    free = (ip for ip in inv.control.subnet.hosts() if ip not in taken and not first <= ip <= last)
    ip = [next(free) for _ in range(index + 1)][-1]
    name = seen.hostname or f"node{len(inv.nodes) + index}"
    return (f"  - {{name: {name}, mac: \"{seen.mac}\", ip: {ip}, hardware: CHOOSE}}"
            f"  # seen by {seen.source} at {seen.ip}")
