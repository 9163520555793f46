"""Compute-node power and status: Wake-on-LAN, shutdown/reboot and status over SSH.

Runs on the control node. Magic packets leave by the compute interface to the compute subnet's
broadcast address, never by the default route. SSH runs in parallel, so `status` costs about
one node's time whatever the node count.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass

from onedotzero import ssh
from onedotzero.errors import UserError
from onedotzero.inventory import Inventory, Node
from onedotzero.log import log
from onedotzero.proc import require_interface

WOL_PORT = 9
SO_BINDTODEVICE = 25
# Uptime as the age of PID 1: on a machine that is its boot's age, in a container node its own (a container
# sees the host's /proc/uptime).
STATUS_CMD = "cat /etc/onedotzero-release 2>/dev/null; echo UPTIME=$(ps -o etimes= -p 1); echo HOST=$(hostname)"


def magic_packet(mac: str) -> bytes:
    """6 x 0xFF, then the 6-byte MAC 16 times: 102 bytes."""
    return b"\xff" * 6 + bytes.fromhex(mac.replace(":", "")) * 16


def parse_magic_packet(data: bytes) -> str | None:
    """The MAC a magic packet wakes, or None if it is not one (a SecureOn password may follow)."""
    if len(data) not in (102, 106, 108) or data[:6] != b"\xff" * 6:
        return None
    mac = data[6:12]
    if data[6:102] != mac * 16:
        return None
    return ":".join(f"{b:02x}" for b in mac)


def send_magic(inv: Inventory, nodes: list[Node]) -> None:
    """One magic packet per node, broadcast on the compute subnet from the compute interface."""
    require_interface(inv.control.compute_interface, inv.path)
    iface = inv.control.compute_interface
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        try:
            s.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, iface.encode())
        except PermissionError as e:
            raise UserError(f"binding to {iface} needs root (CAP_NET_RAW)", "run it with sudo") from e
        for node in nodes:
            s.sendto(magic_packet(node.mac), (str(inv.control.broadcast), WOL_PORT))


@dataclass(frozen=True)
class NodeStatus:
    name: str
    ok: bool
    image: str = "-"
    version: str = "-"
    uptime_s: float | None = None
    error: str = ""
    elapsed: float = 0.0

    @property
    def uptime(self) -> str:
        if self.uptime_s is None:
            return "-"
        m = int(self.uptime_s // 60)
        return f"{m // 60}h{m % 60:02d}m" if m >= 60 else f"{m}m{int(self.uptime_s % 60):02d}s"


def node_status(inv: Inventory, node: Node) -> NodeStatus:
    r = ssh.run(inv, node, STATUS_CMD)
    if not r.ok:
        return NodeStatus(node.name, False, error=r.reason(), elapsed=r.elapsed)
    elapsed = r.elapsed
    facts = dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line)
    image = facts.get("ONEDOTZERO_IMAGE", "")
    ok = bool(image)
    return NodeStatus(node.name, ok, image or "unknown", facts.get("ONEDOTZERO_VERSION", "-"),
                      float(facts["UPTIME"]) if facts.get("UPTIME") else None,
                      "" if ok else "not booted from an onedotzero image", elapsed)


def status(inv: Inventory, nodes: list[Node]) -> list[NodeStatus]:
    return ssh.parallel(lambda n: node_status(inv, n), nodes)


@dataclass(frozen=True)
class ActionResult:
    name: str
    ok: bool
    message: str


def power_action(inv: Inventory, nodes: list[Node], action: str) -> list[ActionResult]:
    """`shutdown -h now` (down) or `shutdown -r now` (restart) over SSH; an unreachable node is reported."""
    flag = {"down": "-h", "restart": "-r"}[action]
    # Detach the shutdown so the SSH session ends cleanly before the network goes away.
    command = f"sudo -n sh -c 'nohup sh -c \"sleep 1; shutdown {flag} now\" >/dev/null 2>&1 &'"

    def one(node: Node) -> ActionResult:
        r = ssh.run(inv, node, command)
        if r.ok:
            return ActionResult(node.name, True, f"{'shutting down' if action == 'down' else 'restarting'}")
        if r.unreachable:
            return ActionResult(node.name, action == "down", f"unreachable (already down?): {r.stderr.strip()[-200:]}")
        return ActionResult(node.name, False, f"`shutdown {flag} now` exited {r.returncode} after {r.elapsed:.1f}s "
                                              f"on {node.ip}: {r.stderr.strip()[-300:]}")

    return ssh.parallel(one, nodes)


def wake(inv: Inventory, nodes: list[Node], timeout: float | None = None, resend_every: float = 15.0,
         poll_every: float = 1.0) -> tuple[list[NodeStatus], bool]:
    """Send magic packets, wait until every node answers (or timeout, or Ctrl-C: interrupted=True)."""
    send_magic(inv, nodes)
    log.info("magic packets sent to %s via %s", ", ".join(n.name for n in nodes), inv.control.compute_interface)
    start = last_send = time.monotonic()
    pending = list(nodes)
    up: dict[str, NodeStatus] = {}
    interrupted = False
    try:
        while pending:
            for st in status(inv, pending):
                if st.ok:
                    up[st.name] = st
                    log.info("%s: up (%s %s) after %.0fs", st.name, st.image, st.version, time.monotonic() - start)
            pending = [n for n in pending if n.name not in up]
            now = time.monotonic()
            if not pending or (timeout is not None and now - start >= timeout):
                break
            if now - last_send >= resend_every:
                send_magic(inv, pending)
                last_send = now
            time.sleep(poll_every)
    except KeyboardInterrupt:
        interrupted = True
    return [up.get(n.name) or NodeStatus(n.name, False, error="not up yet") for n in nodes], interrupted
