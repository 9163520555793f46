"""Control groups for container nodes: one per node in every hierarchy nspawn uses, and a memory limit.

A node's supervisor puts its nspawn into the node's groups before exec (nspawn with --keep-unit then
makes payload/ and supervisor/ inside them); teardown kills whatever is still in them and removes them,
so nothing of a node survives `testbed down`, whoever started it. Works on hybrid hosts (cgroup v1 with
name=systemd and a unified v2 mount, as these machines have) and on pure v2 hosts.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")


def _own(controller: str) -> str:
    """This process's path in a v1 hierarchy ("" on v2)."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, names, path = line.split(":", 2)
        if controller in names.split(","):
            return path
    return ""


def pure_v2() -> bool:
    return (ROOT / "cgroup.controllers").is_file()


def groups(name: str) -> list[Path]:
    """The node's group in every hierarchy the node lives in (created by enter, removed by kill_and_remove)."""
    if pure_v2():
        return [ROOT / _own("").lstrip("/") / name.replace("/", "-")]
    out = [ROOT / "systemd" / name]
    if (ROOT / "unified").is_dir():
        out.append(ROOT / "unified" / name)
    if (ROOT / "memory").is_dir():
        # Nested under our own memory group: a limit there is enforced, the node's OOM stays inside it.
        out.append(ROOT / "memory" / _own("memory").lstrip("/") / name.replace("/", "-"))
    return out


def create(name: str, memory_mb: int | None) -> list[Path]:
    paths = groups(name)
    for p in paths:
        p.mkdir(parents=True, exist_ok=True)
        if memory_mb:
            for limit in ("memory.limit_in_bytes", "memory.max"):
                if (p / limit).exists():
                    (p / limit).write_text(str(memory_mb << 20))
    return paths


def enter(paths: list[Path]) -> None:
    """Move the calling process into the groups (run in the child before it execs nspawn)."""
    for p in paths:
        (p / "cgroup.procs").write_text(str(os.getpid()))


def _pids(p: Path) -> list[int]:
    pids = []
    for procs in p.rglob("cgroup.procs"):
        try:
            pids += [int(x) for x in procs.read_text().split()]
        except OSError:
            pass
    return pids


def kill_and_remove(name: str, timeout: float = 5.0) -> None:
    """SIGKILL everything left in the node's groups, then remove them (deepest first)."""
    paths = [p for p in groups(name) if p.exists()]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = [pid for p in paths for pid in _pids(p)]
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)
    for p in paths:
        for d in sorted((d for d in p.rglob("*") if d.is_dir()), key=lambda d: len(d.parts), reverse=True):
            _rmdir(d)
        _rmdir(p)
    if name.count("/") == 1 and not pure_v2():  # the testbed's parent group, once its last node is gone
        for p in paths[:2]:
            _rmdir(p.parent)


def _rmdir(d: Path) -> None:
    try:
        d.rmdir()
    except OSError:
        pass


def leftovers(prefix: str) -> list[str]:
    """Groups whose name starts with prefix in any hierarchy (tests check teardown leaves none)."""
    found = []
    for base in (ROOT / "systemd", ROOT / "unified", ROOT / "memory" / _own("memory").lstrip("/"), ROOT):
        if base.is_dir():
            found += [str(p) for p in base.glob(f"{prefix}*")]
    return found
