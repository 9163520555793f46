"""`cluster.py fabric status` and `fabric test`: the clustering links as the nodes see them.

Runs on the control node; everything is measured on the nodes over SSH with their own tools (ip, ping,
iperf3), each link end found by the address the inventory gives it.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field

from fabric.topology import fabric_name, next_hops
from onedotzero import profiles, ssh
from onedotzero.errors import UserError
from onedotzero.inventory import Inventory, Link, Node

IPERF_PORT = 5201


def _fabric(inv: Inventory):
    if inv.fabric is None:
        raise UserError(f"{inv.path} has no fabric: section", "describe the clustering links (see cluster.example.yml)")
    return inv.fabric


@dataclass
class EndState:
    node: str
    address: str
    interface: str = "-"
    up: bool = False
    mtu: int = 0
    peer_reachable: bool = False
    error: str = ""


@dataclass
class StatusReport:
    links: list[tuple[Link, EndState, EndState]] = field(default_factory=list)
    routes: list[tuple[str, str, str, bool]] = field(default_factory=list)  # from, to, via, reachable
    problems: list[str] = field(default_factory=list)

    def link_rows(self) -> list[tuple[str, ...]]:
        rows = [("LINK", "NODE", "INTERFACE", "STATE", "MTU", "ADDRESS", "PEER")]
        for link, *ends in self.links:
            for e in ends:
                rows.append((link.name, e.node, e.interface, "up" if e.up else "DOWN", str(e.mtu or "-"),
                             e.address, "reachable" if e.peer_reachable else "UNREACHABLE"))
        return rows

    def route_rows(self) -> list[tuple[str, ...]]:
        rows = [("FROM", "TO", "VIA", "FABRIC ADDRESS")]
        rows += [(a, fabric_name(b), via, "reachable" if ok else "UNREACHABLE") for a, b, via, ok in self.routes]
        return rows


def _node_probe(inv: Inventory, node: Node) -> tuple[dict, dict[str, bool], str]:
    """On node: its interfaces with their addresses, and which fabric targets answer ping."""
    fab = inv.fabric
    targets = [lk.peer(node.name).address for lk in fab.links_of(node.name)]
    targets += [a for n, a in fab.addresses if n != node.name]
    pings = "; ".join(f"ping -c 2 -i 0.2 -W 1 -q {a} >/dev/null 2>&1 && echo PING {a} ok || echo PING {a} fail"
                      for a in targets)
    r = ssh.run(inv, node, f"ip -j addr show; echo ---; {pings}", timeout=60)
    if not r.ok:
        return {}, {}, r.reason()
    addrs, _, rest = r.stdout.partition("---")
    links = {}
    for link in json.loads(addrs or "[]"):
        for a in link.get("addr_info", []):
            if a.get("family") == "inet":
                links[a["local"]] = link
    answered = {m[1]: m[2] == "ok" for m in re.finditer(r"^PING (\S+) (ok|fail)$", rest, re.M)}
    return links, answered, ""


def status(inv: Inventory) -> StatusReport:
    fab = _fabric(inv)
    members = [inv.node(n) for n, _ in fab.addresses]
    probes = dict(zip([n.name for n in members], ssh.parallel(lambda n: _node_probe(inv, n), members), strict=True))
    report = StatusReport()
    for link in fab.links:
        ends = []
        for end in link.ends:
            peer = link.peer(end.node)
            interfaces, answered, error = probes[end.node]
            st = EndState(end.node, f"{end.address}/{link.subnet.prefixlen}", error=error)
            iface = interfaces.get(str(end.address))
            if error:
                report.problems.append(f"{end.node} unreachable over SSH: {error}")
            elif iface is None:
                report.problems.append(f"{link.name}: no interface on {end.node} carries {end.address}")
            else:
                st.interface, st.mtu = iface["ifname"], iface.get("mtu", 0)
                st.up = "UP" in iface.get("flags", []) and "LOWER_UP" in iface.get("flags", [])
                st.peer_reachable = answered.get(str(peer.address), False)
                if not st.up:
                    report.problems.append(f"{link.name}: {st.interface} on {end.node} is down")
                if st.mtu != link.mtu:
                    report.problems.append(f"{link.name}: MTU {st.mtu} on {end.node}, the inventory says {link.mtu}")
                if not st.peer_reachable:
                    report.problems.append(f"{link.name}: {end.node} cannot reach {peer.node} at {peer.address}")
            ends.append(st)
        report.links.append((link, *ends))
    for source in members:
        hops = next_hops(fab, source.name)
        _, answered, error = probes[source.name]
        for dest, address in fab.addresses:
            if dest == source.name:
                continue
            link = hops.get(dest)
            via = "no path" if link is None else (
                "direct" if link.peer(source.name).node == dest else f"via {link.peer(source.name).node}")
            ok = not error and answered.get(str(address), False)
            report.routes.append((source.name, dest, via, ok))
            if not ok and not error:
                report.problems.append(f"{source.name} cannot reach {fabric_name(dest)} ({address}, {via})")
    return report


@dataclass
class LinkResult:
    link: Link
    forward_gbit: float | None = None  # ends[0] -> ends[1]
    reverse_gbit: float | None = None
    rtt_ms: float | None = None
    error: str = ""


@dataclass
class TestReport:
    results: list[LinkResult] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def rows(self) -> list[tuple[str, ...]]:
        def gbit(x: float | None) -> str:
            return "-" if x is None else f"{x:.2f}"

        rows = [("LINK", "KIND", "NOMINAL", "A->B Gbit/s", "B->A Gbit/s", "RTT ms", "DETAIL")]
        for r in self.results:
            kind = profiles.link_kind(r.link.kind)
            rows.append((r.link.name, r.link.kind, f"{kind.rate_gbit:g} Gbit/s, {kind.latency_us:g} us one way",
                         gbit(r.forward_gbit), gbit(r.reverse_gbit),
                         "-" if r.rtt_ms is None else f"{r.rtt_ms:.3f}", r.error))
        return rows


def _iperf(inv: Inventory, client: Node, server: Node, c_addr: str, s_addr: str, seconds: float,
           reverse: bool) -> float:
    """Gbit/s received, server on s_addr (one test, then it exits), client bound to c_addr."""
    start = ssh.run(inv, server, f"nohup timeout {int(seconds) + 30} iperf3 -s -1 -B {s_addr} -p {IPERF_PORT} "
                                 ">/dev/null 2>&1 & sleep 0.5", timeout=30)
    if not start.ok:
        raise UserError(f"iperf3 server on {server.name}: {start.reason()}")
    cmd = shlex.join(["iperf3", "-c", s_addr, "-B", c_addr, "-p", str(IPERF_PORT), "-t", f"{seconds:g}", "-J",
                      *(["-R"] if reverse else [])])
    r = ssh.run(inv, client, cmd, timeout=seconds + 60)
    try:
        data = json.loads(r.stdout)
    except ValueError:
        raise UserError(f"iperf3 from {client.name}: {r.reason()}") from None
    if "error" in data:
        raise UserError(f"iperf3 from {client.name}: {data['error']}")
    return data["end"]["sum_received"]["bits_per_second"] / 1e9


def _rtt(inv: Inventory, node: Node, src: str, dst: str) -> float:
    r = ssh.run(inv, node, f"ping -c 10 -i 0.2 -W 1 -q -I {src} {dst}", timeout=30)
    m = re.search(r"= [\d.]+/([\d.]+)/", r.stdout)
    if not m:
        raise UserError(f"ping from {node.name}: {r.reason() if not r.ok else 'no answer'}")
    return float(m[1])


def test(inv: Inventory, seconds: float = 3) -> TestReport:
    """Every link in turn (links share the nodes' CPUs): iperf3 both ways, then ping."""
    fab = _fabric(inv)
    report = TestReport()
    for link in fab.links:
        a, b = (inv.node(e.node) for e in link.ends)
        a_addr, b_addr = (str(e.address) for e in link.ends)
        result = LinkResult(link)
        try:
            result.forward_gbit = _iperf(inv, a, b, a_addr, b_addr, seconds, reverse=False)
            result.reverse_gbit = _iperf(inv, a, b, a_addr, b_addr, seconds, reverse=True)
            result.rtt_ms = _rtt(inv, a, a_addr, b_addr)
        except UserError as e:
            result.error = e.message
            report.problems.append(f"{link.name}: {e.message}")
        slow = [g for g in (result.forward_gbit, result.reverse_gbit) if g is not None and g < fab.min_gbits]
        if slow:
            report.problems.append(f"{link.name}: {min(slow):.2f} Gbit/s, below fabric.min_gbits {fab.min_gbits:g}")
        report.results.append(result)
    return report
