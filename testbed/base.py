"""What every part of the virtual cluster shares: where its state lives, process bookkeeping by PID file,
and the recipe that powers a node on (for the testbed, the Wake-on-LAN listener and `testbed power-on`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from onedotzero.errors import UserError
from onedotzero.proc import run

STATE_ROOT = Path("/var/lib/onedotzero/testbed")
NODES_FILE = "nodes.json"  # mac -> NodeSpec, written at `up`


@dataclass(frozen=True)
class NodeSpec:
    """How to power one node on, whatever its kind (see testbed/nodes.py)."""

    name: str
    mac: str
    kind: str  # "qemu" or "container"
    argv: list[str]  # the command that powers it on
    pidfile: str  # the node is on while this PID lives
    log: str  # its console
    detach: bool  # True: argv is a long-running supervisor, started in a session of its own

    def is_on(self) -> bool:
        return running_pid(Path(self.pidfile)) is not None


def write_specs(path: Path, specs: list[NodeSpec]) -> None:
    path.write_text(json.dumps({s.mac: asdict(s) for s in specs}, indent=1))


def read_specs(path: Path) -> dict[str, NodeSpec]:
    """mac -> spec; {} when the testbed was never up."""
    try:
        return {mac: NodeSpec(**d) for mac, d in json.loads(path.read_text()).items()}
    except FileNotFoundError:
        return {}


def start_node(spec: NodeSpec) -> bool:
    """Press the power button. False if the node was already on."""
    if spec.is_on():
        return False
    if spec.detach:
        with open(spec.log, "ab") as log:
            proc = subprocess.Popen(spec.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        for _ in range(200):  # the supervisor writes its PID file once it has started
            if spec.is_on():
                return True
            if proc.poll() is not None:  # it gave up: its last words say why
                lines = Path(spec.log).read_text(errors="replace").strip().splitlines() or ["no output"]
                raise UserError(f"testbed: {spec.name} did not start: {lines[-1]}", f"see {spec.log}")
            time.sleep(0.05)
        raise UserError(f"testbed: {spec.name} did not start", f"see {spec.log}")
    run(spec.argv, host=f"testbed node {spec.name}")
    return True


def running_pid(pidfile: Path) -> int | None:
    """The PID in pidfile if that process is alive, else None."""
    try:
        pid = int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    return pid


def stop_pid(pidfile: Path, grace: float = 5.0) -> None:
    """SIGTERM the process in pidfile, SIGKILL it if it outlives grace seconds."""
    pid = running_pid(pidfile)
    if pid is None:
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if running_pid(pidfile) is None:
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def ns_argv(ns: str, argv: list[str]) -> list[str]:
    """argv run inside a network namespace."""
    return ["ip", "netns", "exec", ns, *argv]
