"""Cables of the virtual cluster: the fabric's point-to-point links and the nodes' LAN ports, shaped.

A fabric link between two container nodes is a veth pair with one end in each node's network namespace,
named as the node's hardware profile matches it (`fab-<peer>`), with the link's MTU: the `fabric` role in
the node configures it exactly as it would a thunderbolt-net interface. Nothing else is on that wire.

Shaping: the kernel here has the tbf qdisc but neither netem nor fq, so a cable's *rate* is shaped (tbf
on both ends, egress) to its kind's (hardware/links/<kind>.yml), and its *latency is not emulated*: a
veth adds tens of microseconds, not a USB4 cable's ~65 us or a switch's. Every figure measured here says
so (Shaping.describe).
"""

from __future__ import annotations

from dataclasses import dataclass

from onedotzero import profiles
from onedotzero.errors import UserError
from onedotzero.inventory import Inventory, Link
from onedotzero.proc import run
from testbed.nodes import ContainerNode

IFNAMSIZ = 15


@dataclass(frozen=True)
class Shaping:
    kind: str
    rate_gbit: float | None  # None: unshaped (as fast as veth and the CPUs go)

    def describe(self) -> str:
        rate = f"rate shaped to {self.rate_gbit:g} Gbit/s" if self.rate_gbit else "rate not shaped"
        return f"{self.kind}: {rate}; latency not emulated (no netem in this kernel)"


def shape(ns: str, ifname: str, rate_gbit: float) -> None:
    """tbf on ifname's egress: rate, a burst of 10 ms at that rate (at least one GSO packet), 20 ms queue."""
    burst = max(int(rate_gbit * 1e9 / 8 * 0.010), 256 << 10)
    run(["ip", "netns", "exec", ns, "tc", "qdisc", "replace", "dev", ifname, "root", "tbf",
         "rate", f"{rate_gbit:g}gbit", "burst", str(burst), "latency", "20ms"])


def fabric_ifname(node: ContainerNode, link: Link) -> str:
    """The interface name the node's profile matches for this link (its Name= with {peer} filled in)."""
    match = dict(node.node.profile.fabric.match) if node.node.profile.fabric else {}
    if "Name" not in match:
        raise UserError(f"the virtual cluster cannot cable {node.node.name}: its hardware's fabric match has no "
                        "Name", "virtual profiles match their cables by Name, e.g. fab-{peer}")
    name = match["Name"].replace("{peer}", link.peer(node.node.name).node)
    if len(name) > IFNAMSIZ:
        raise UserError(f"fabric interface name {name!r} is longer than {IFNAMSIZ} characters",
                        "use shorter node names in the testbed inventory")
    return name


def cable_fabric(inv: Inventory, containers: dict[str, ContainerNode]) -> list[Shaping]:
    """One veth pair per fabric link, between the two nodes' namespaces, shaped to the link's kind."""
    shaped = []
    for link in inv.fabric.links if inv.fabric else ():
        ends = [containers.get(e.node) for e in link.ends]
        if None in ends:
            raise UserError(f"fabric link {link.name}: the virtual cluster cables container nodes only",
                            "give both nodes a container profile (e.g. virtual-container)")
        a, b = ends
        name_a, name_b = fabric_ifname(a, link), fabric_ifname(b, link)
        run(["ip", "-n", a.ns, "link", "add", name_a, "mtu", str(link.mtu), "type", "veth", "peer", "name", name_b,
             "netns", b.ns, "mtu", str(link.mtu)])
        kind = profiles.link_kind(link.kind)
        for node, name in ((a, name_a), (b, name_b)):
            run(["ip", "-n", node.ns, "link", "set", name, "up"])
            shape(node.ns, name, kind.rate_gbit)
        shaped.append(Shaping(f"{link.name} ({link.kind})", kind.rate_gbit))
    return shaped


def shape_lan(containers: dict[str, ContainerNode], bed_ns: str, kind: str | None) -> Shaping:
    """The nodes' LAN ports shaped like a switch port of that kind (both directions), or left alone."""
    if kind is None:
        return Shaping("lan", None)
    rate = profiles.link_kind(kind).rate_gbit
    for node in containers.values():
        shape(node.ns, "eth0", rate)
        shape(bed_ns, node.host_end, rate)
    return Shaping(f"lan ({kind})", rate)
