"""Compute-node power and status: Wake-on-LAN, shutdown/reboot and status over SSH.

Runs on the control node. Magic packets leave by the compute interface to the compute subnet's
broadcast address, never by the default route. SSH runs in parallel, so `status` costs about
one node's time whatever the node count.
"""

from __future__ import annotations

import shlex
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from onedotzero.errors import UserError
from onedotzero.inventory import Inventory, Node
from onedotzero.log import log
from onedotzero.proc import require_interface

WOL_PORT = 9
SO_BINDTODEVICE = 25
CONNECT_TIMEOUT = 5
STATUS_CMD = "cat /etc/onedotzero-release 2>/dev/null; echo UPTIME=$(cut -d' ' -f1 /proc/uptime); echo HOST=$(hostname)"


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


def ssh_argv(inv: Inventory, node: Node, command: str, connect_timeout: int = CONNECT_TIMEOUT) -> list[str]:
    return [*ssh_options(inv, connect_timeout), f"{inv.admin.user}@{node.ip}", command]


def ssh_options(inv: Inventory, connect_timeout: int = CONNECT_TIMEOUT) -> list[str]:
    """ssh with the inventory's key, never prompting."""
    # Nodes regenerate host keys on every boot (shared read-only image): do not pin them.
    argv = ["ssh", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={connect_timeout}",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"]
    key = inv.admin.ssh_public_key_path.with_suffix("")
    if key.is_file():
        argv += ["-i", str(key), "-o", "IdentitiesOnly=yes"]
    return argv


def ssh(inv: Inventory, node: Node, command: str, timeout: float = 30) -> tuple[int, str, str, float]:
    argv = ssh_argv(inv, node, command)
    start = time.monotonic()
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        rc, out, err = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired:
        rc, out, err = 255, "", f"timed out after {timeout}s"
    elapsed = time.monotonic() - start
    if rc != 0:
        log.debug("%s: `%s` exited %d after %.1fs: %s", node.name, shlex.join(argv), rc, elapsed, err.strip()[-500:])
    return rc, out, err, elapsed


def node_status(inv: Inventory, node: Node) -> NodeStatus:
    rc, out, err, elapsed = ssh(inv, node, STATUS_CMD)
    if rc != 0:
        reason = (err.strip().splitlines() or [f"exit code {rc}"])[-1]
        return NodeStatus(node.name, False, error=reason, elapsed=elapsed)
    facts = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    image = facts.get("ONEDOTZERO_IMAGE", "")
    ok = bool(image)
    return NodeStatus(node.name, ok, image or "unknown", facts.get("ONEDOTZERO_VERSION", "-"),
                      float(facts["UPTIME"]) if facts.get("UPTIME") else None,
                      "" if ok else "not booted from an onedotzero image", elapsed)


def _parallel(fn, nodes: list[Node]) -> list:
    if not nodes:
        return []
    with ThreadPoolExecutor(max_workers=min(64, len(nodes))) as pool:
        return list(pool.map(fn, nodes))


def status(inv: Inventory, nodes: list[Node]) -> list[NodeStatus]:
    return _parallel(lambda n: node_status(inv, n), nodes)


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
        rc, _, err, elapsed = ssh(inv, node, command)
        if rc == 0:
            return ActionResult(node.name, True, f"{'shutting down' if action == 'down' else 'restarting'}")
        if rc == 255:
            return ActionResult(node.name, action == "down", f"unreachable (already down?): {err.strip()[-200:]}")
        return ActionResult(node.name, False, f"`shutdown {flag} now` exited {rc} after {elapsed:.1f}s on "
                                              f"{node.ip}: {err.strip()[-300:]}")

    return _parallel(one, nodes)


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
