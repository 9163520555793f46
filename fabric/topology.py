"""The clustering fabric as data: each node's link interfaces, addresses and routes, from the inventory.

Runs anywhere (pure). Every node has a /32 fabric address (`<node>-fabric`) on its loopback; every
link is a /31 between two nodes; a node reaches each other node's fabric address over the first link of a
shortest path (breadth-first, ties broken by link order), so a ring or a partial mesh is routed and a
full mesh is all direct. What identifies a link's interface on a node is hardware data (the profile's
fabric.match, plus the end's port when the node has several links); `{peer}` in a match value stands for
the node at the other end (the virtual cluster names its cables that way).
"""

from __future__ import annotations

import ipaddress
from collections import deque
from dataclasses import dataclass

from onedotzero.inventory import FABRIC_SUFFIX, Fabric, Inventory, Link, Node

FILE_PREFIX = "60-onedotzero-fabric-"  # the role's files in /etc/systemd/network


@dataclass(frozen=True)
class Route:
    destination: ipaddress.IPv4Address  # another node's fabric address
    via: ipaddress.IPv4Address  # the neighbour's address on this link
    node: str  # whose address it is


def interface_match(inv: Inventory, node: Node, link: Link) -> dict[str, str]:
    """systemd.network [Match] keys that find this link's interface on node."""
    fab = node.profile.fabric
    assert fab is not None, "validated by the inventory"
    peer = link.peer(node.name).node
    match = {k: v.replace("{peer}", peer) for k, v in fab.match}
    port = link.end(node.name).port
    if port:
        match[fab.port_key] = port
    return match


def next_hops(fabric: Fabric, source: str) -> dict[str, Link]:
    """For every node reachable from source: the link its traffic leaves source by."""
    first: dict[str, Link] = {}
    seen = {source}
    queue: deque[tuple[str, Link | None]] = deque([(source, None)])
    while queue:
        here, via = queue.popleft()
        for link in fabric.links_of(here):
            there = link.peer(here).node
            if there in seen:
                continue
            seen.add(there)
            hop = via or link
            first[there] = hop
            queue.append((there, hop))
    return first


def routes(fabric: Fabric, node: str) -> dict[Link, list[Route]]:
    """node's routes to every other node's fabric address, grouped by the link they leave by."""
    out: dict[Link, list[Route]] = {lk: [] for lk in fabric.links_of(node)}
    for dest, link in next_hops(fabric, node).items():
        address = fabric.address(dest)
        if address is not None:
            out[link].append(Route(address, link.peer(node).address, dest))
    return out


def fabric_name(node: str) -> str:
    return f"{node}{FABRIC_SUFFIX}"


def role_vars(inv: Inventory, nodes: tuple[Node, ...]) -> dict:
    """The `fabric` role's variables for an image booted by nodes (every node's own files match its hostname)."""
    fabric = inv.fabric
    assert fabric is not None
    networks, addresses = [], []
    for node in nodes:
        own = fabric.address(node.name)
        if own is None:
            continue
        addresses.append({"host": node.name, "address": str(own), "file": f"{FILE_PREFIX}{node.name}-lo.network"})
        for link, rts in routes(fabric, node.name).items():
            end, peer = link.end(node.name), link.peer(node.name)
            networks.append({
                "host": node.name, "link": link.name, "peer": peer.node, "match": interface_match(inv, node, link),
                "file": f"{FILE_PREFIX}{node.name}-{link.name}.network",
                "address": f"{end.address}/{link.subnet.prefixlen}", "mtu": link.mtu, "source": str(own),
                "routes": [{"destination": f"{r.destination}/32", "gateway": str(r.via), "node": r.node}
                           for r in sorted(rts, key=lambda r: int(r.destination))],
            })
    return {
        "fabric_networks": networks,
        "fabric_addresses": addresses,
        "fabric_hosts": [{"name": fabric_name(n), "address": str(a)} for n, a in fabric.addresses],
    }
