#!/usr/bin/env python3
"""Container nodes of the virtual cluster: power-on to SSH (goals: <= 5 s for one node, 8 nodes <= 20 s).

An inventory of N container nodes (testbed/cluster.yml's control node, store and key; no fabric, no
inference) is built once (`image build golden`, cached after), pointed at its image, and brought up as a
testbed named `bench`. Measured, each from pressing the power button until `ssh admin@node true` answers:
  one       one node alone
  serial    the N nodes one after another (the baseline: what N times one costs)
  parallel  the N nodes at once
Printed side by side with parallel/serial and the goals. Each round powers the nodes off (pulls the plug)
and starts them again, so every round boots a fresh RAM layer. Needs root.

    sudo .venv/bin/python benchmarks/container_start.py [--nodes 8] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from onedotzero import inventory, paths, ssh  # noqa: E402
from testbed.bed import Testbed  # noqa: E402

SOURCE = paths.REPO / "testbed" / "cluster.yml"
CLI = [sys.executable, str(paths.REPO / "cluster.py")]


def make_inventory(d: Path, count: int) -> Path:
    data = yaml.safe_load(SOURCE.read_text())
    data.pop("fabric", None)
    data.pop("inference", None)
    data["nodes"] = [{"name": f"cn{i}", "mac": f"52:54:00:0e:00:{i:02x}", "ip": f"192.168.1.{40 + i}",
                      "hardware": "virtual-container"} for i in range(count)]
    path = d / "containers.yml"
    path.write_text(yaml.safe_dump(data))
    return path


def cli(inv: Path, *args: str) -> None:
    proc = subprocess.run([*CLI, "-i", str(inv), *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"cluster.py {' '.join(args)} failed:\n{proc.stderr}")


def wait_ssh(bed: Testbed, names: list[str], timeout: float = 120) -> None:
    pending = set(names)
    deadline = time.monotonic() + timeout
    while pending:
        if time.monotonic() > deadline:
            raise SystemExit(f"no SSH within {timeout}s: {', '.join(sorted(pending))}\n{bed.diagnostics(10)}")
        for name in sorted(pending):
            argv = bed.ns_argv(ssh.argv(bed.inv, bed.inv.node(name), "true"))
            if subprocess.run(argv, capture_output=True, timeout=30).returncode == 0:
                pending.discard(name)
        time.sleep(0.1)


def start(bed: Testbed, names: list[str]) -> float:
    """Seconds from the first power button to the last node answering SSH."""
    t = time.monotonic()
    for name in names:
        bed.power_on(name)
    wait_ssh(bed, names)
    return time.monotonic() - t


def off(bed: Testbed, names: list[str]) -> None:
    for name in names:
        bed.power_off(name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        inv_path = make_inventory(Path(tmp), args.nodes)
        cli(inv_path, "image", "build", "golden")
        cli(inv_path, "boot", "--image", "golden")
        bed = Testbed(inventory.load(inv_path), "bench")
        if bed.exists():
            bed.down()
        bed.up()
        names = [n.name for n in bed.inv.nodes]
        rounds: dict[str, list[float]] = {"one": [], "serial": [], "parallel": []}
        try:
            for _ in range(args.repeat):
                rounds["one"].append(start(bed, names[:1]))
                off(bed, names[:1])
                rounds["serial"].append(sum(start(bed, [n]) for n in names))
                off(bed, names)
                rounds["parallel"].append(start(bed, names))
                off(bed, names)
        finally:
            bed.down()
    one, serial, parallel = (statistics.median(rounds[k]) for k in ("one", "serial", "parallel"))
    n = args.nodes
    print(f"container nodes, power-on to SSH (median of {args.repeat}; {n} nodes)")
    print(f"{'case':<34}{'seconds':>9}   goal")
    print(f"{'one node':<34}{one:>9.1f}   <= 5 s  {'met' if one <= 5 else 'MISSED'}")
    print(f"{f'{n} nodes one after another (baseline)':<34}{serial:>9.1f}")
    print(f"{f'{n} nodes at once':<34}{parallel:>9.1f}   <= 20 s {'met' if parallel <= 20 else 'MISSED'}")
    print(f"at once / one after another: {parallel / serial:.2f}x; per node at once: {parallel / n:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
