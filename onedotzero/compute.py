"""What `cluster.py compute` does beyond power: configuring nodes, running commands on them (pdsh-style),
and each node's hardware acceptance checks."""

from __future__ import annotations

import os
import shlex
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass

from onedotzero import acceptance, ansible, power, ssh
from onedotzero.errors import UserError
from onedotzero.inventory import Inventory, Node


def configure(inv: Inventory, nodes: list[Node], netns: str | None = None) -> list[ansible.HostRecap]:
    """Run playbooks/compute.yml on nodes, but only when every one of them is up on an onedotzero image:
    a half-configured cluster is worse than an unconfigured one."""
    bad = [s for s in power.status(inv, nodes) if not s.ok]
    if bad:
        raise UserError("not configuring: not OK: " + ", ".join(f"{s.name} ({s.error})" for s in bad),
                        "bring them up (`compute up`) or name only the nodes to configure")
    return ansible.playbook(inv, "compute.yml", [n.name for n in nodes], netns=netns)


@dataclass(frozen=True)
class RunResult:
    node: str
    code: int

    def describe(self) -> str:
        if self.code == ssh.UNREACHABLE:
            return "unreachable (or timed out)"
        return "ok" if self.code == 0 else f"exit code {self.code}"


def run(inv: Inventory, nodes: list[Node], command: str, out: Callable[[str], None] | None = None,
        timeout: float | None = None) -> list[RunResult]:
    """command on every node in parallel as the admin user; each output line goes to out as `node: line`
    the moment it arrives (one writer at a time, so lines never interleave mid-line)."""
    lock = threading.Lock()
    width = max(len(n.name) for n in nodes)
    write = out or (lambda text: print(text, flush=True))

    def emit(node: str, line: str) -> None:
        with lock:
            write(f"{node.ljust(width)}: {line}")

    codes = ssh.stream(inv, nodes, command, emit, timeout)
    return [RunResult(name, code) for name, code in codes.items()]


def shell(inv: Inventory, node: Node, command: tuple[str, ...] = ()) -> None:
    """Replace this process with an interactive ssh to node (the inventory's user and key)."""
    argv = ssh.argv(inv, node, shlex.join(command) if command else "", tty=sys.stdin.isatty())
    if not command:
        argv = argv[:-1]  # no remote command: a login shell
    os.execvp(argv[0], argv)


def check(inv: Inventory, nodes: list[Node]) -> list[acceptance.NodeCheck]:
    """Every node's hardware acceptance checks, in parallel."""
    return ssh.parallel(lambda n: acceptance.check_node(inv, n), nodes)
