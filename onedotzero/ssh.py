"""SSH to the compute nodes: the inventory's user and key, never a prompt, and a parallel fan-out.

Nodes regenerate their host keys on every boot (a shared read-only image carries none), so host keys
are not pinned. Failures are kept with everything needed to debug them: command, exit code, stderr tail.
"""

from __future__ import annotations

import shlex
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from onedotzero.inventory import Inventory, Node
from onedotzero.log import log

CONNECT_TIMEOUT = 5
UNREACHABLE = 255  # ssh's own exit code: the connection (not the command) failed
T = TypeVar("T")


def options(inv: Inventory, connect_timeout: int = CONNECT_TIMEOUT) -> list[str]:
    """ssh with the inventory's key, never prompting."""
    argv = ["ssh", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={connect_timeout}",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"]
    key = inv.admin.ssh_public_key_path.with_suffix("")
    if key.is_file():
        argv += ["-i", str(key), "-o", "IdentitiesOnly=yes"]
    return argv


def argv(inv: Inventory, node: Node, command: str, connect_timeout: int = CONNECT_TIMEOUT,
         tty: bool = False) -> list[str]:
    return [*options(inv, connect_timeout), *(["-t"] if tty else []), f"{inv.admin.user}@{node.ip}", command]


@dataclass(frozen=True)
class Result:
    node: str
    returncode: int
    stdout: str
    stderr: str
    elapsed: float

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def unreachable(self) -> bool:
        return self.returncode == UNREACHABLE

    def reason(self) -> str:
        """One line: why it failed (ssh's or the command's last words)."""
        return (self.stderr.strip().splitlines() or [f"exit code {self.returncode}"])[-1]


def run(inv: Inventory, node: Node, command: str, timeout: float = 30, input: str | None = None) -> Result:
    """Run command on node as the admin user; never raises for the command's or the connection's failure."""
    cmd = argv(inv, node, command)
    start = time.monotonic()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input,
                           stdin=None if input is not None else subprocess.DEVNULL)
        rc, out, err = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as e:
        rc, out, err = UNREACHABLE, _text(e.stdout), _text(e.stderr) + f"\ntimed out after {timeout}s"
    elapsed = time.monotonic() - start
    if rc != 0:
        log.debug("%s: `%s` exited %d after %.1fs: %s", node.name, shlex.join(cmd), rc, elapsed, err.strip()[-500:])
    return Result(node.name, rc, out, err, elapsed)


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data


def parallel(fn: Callable[[Node], T], nodes: list[Node], limit: int = 64) -> list[T]:
    """fn for every node at once (up to limit), results in the nodes' order."""
    if not nodes:
        return []
    with ThreadPoolExecutor(max_workers=min(limit, len(nodes))) as pool:
        return list(pool.map(fn, nodes))


def stream(inv: Inventory, nodes: list[Node], command: str, emit: Callable[[str, str], None],
           timeout: float | None = None) -> dict[str, int]:
    """Run command on every node at once; emit(node, line) for each line of output as it arrives (stdout and
    stderr merged, in order per node). Returns each node's exit code (UNREACHABLE when ssh could not connect,
    or when it ran past timeout)."""
    codes: dict[str, int] = {}

    def one(node: Node) -> None:
        proc = subprocess.Popen(argv(inv, node, command), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, text=True, errors="replace", bufsize=1)
        timer = threading.Timer(timeout, proc.kill) if timeout else None
        if timer:
            timer.start()
        assert proc.stdout is not None
        for line in proc.stdout:
            emit(node.name, line.rstrip("\n"))
        codes[node.name] = proc.wait()
        if timer:
            timer.cancel()

    parallel(one, nodes)
    return {n.name: codes[n.name] for n in nodes}
