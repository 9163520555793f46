#!/usr/bin/env python3
"""`inventory.load()` wall time for 1,000 and 4,000 nodes (goal: 4,000 nodes with a fabric in under a second).

Validation must stay linear: the ratio 4,000/1,000 is about 4x when it is, 16x when something is quadratic.
Earlier code, for reference: duplicate checks comparing every node with every other took 4.5 s (reported) at 4,000
nodes; the fabric port check scanning every link for each node with two links took 20.6 s for the
4,000-node ring below, and the per-node lookups 35 s (commit fd605a4, same machine). Two fabrics:

  pairs  intel-arc nodes (one USB4 port each) cabled in pairs: 2,000 links for 4,000 nodes
  ring   amd-ryzen-ai-max nodes (two ports each, named) in one ring: 4,000 links for 4,000 nodes

Also timed: what renderers do once per node on the loaded ring (`inv.node()`, `fabric.links_of()`,
`fabric.address()`): dictionary lookups, a fraction of a microsecond each; at a few milliseconds in all,
their ratio mostly shows the CPU caches (per node it steps up between 2,000 and 4,000, then stays flat).
Printed beside a baseline run on the same files: reading and parsing the YAML alone
(plain PyYAML, libyaml's parser when present), the floor that validation adds to; once as anyone calls it,
once with the cyclic garbage collector paused as load() does (its full passes over the growing heap make
plain PyYAML superlinear).

    python benchmarks/inventory_scale.py [--repeat 5] [--profile]
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import ipaddress
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from onedotzero import inventory, yamlfile  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SIZES = (1000, 4000)
GOAL_S = 1.0
FABRICS = {  # name -> (hardware, distro, link lines for count nodes)
    "pairs": ("intel-arc", "ubuntu-22.04",
              lambda count: [f"    - {{nodes: [n{i:04d}, n{i + 1:04d}], kind: usb4}}" for i in range(0, count, 2)]),
    "ring": ("amd-ryzen-ai-max", "ubuntu-24.04",
             lambda count: [f'    - {{nodes: [n{i:04d}, n{(i + 1) % count:04d}], ports: ["pci-0000:00:0d.2", '
                            f'"pci-0000:00:0d.3"]}}' for i in range(count)]),
}


def write_inventory(tmp: Path, count: int, fabric: str = "pairs") -> Path:
    """count nodes on a /16 (as an operator writes them: one flow mapping a line) and a fabric on another."""
    hardware, distro, link_lines = FABRICS[fabric]
    hosts = ipaddress.IPv4Network("10.8.0.0/16")
    lines = [
        "cluster: bench",
        "control: {name: ctl, compute_interface: eth0, address: 10.8.0.1, subnet: 10.8.0.0/16,",
        "          dhcp_range: [10.8.255.1, 10.8.255.254]}",
        f"image: {{distro: {distro}, store: {tmp / 'store'}, cache: {tmp / 'cache'}}}",
        f"admin: {{user: admin, ssh_public_key: {REPO / 'tests/data/test_key.pub'}}}",
        "nodes:",
    ]
    for i in range(count):
        mac = f"52:54:00:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}"
        lines.append(f'  - {{name: n{i:04d}, mac: "{mac}", ip: {hosts[i + 2]}, hardware: {hardware}}}')
    lines += ["fabric:", "  prefix: 10.9.0.0/16", "  links:", *link_lines(count)]
    path = tmp / f"cluster-{fabric}-{count}.yml"
    path.write_text("\n".join(lines) + "\n")
    return path


def median_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def parse_only(path: Path, paused: bool = False) -> None:
    with yamlfile.paused_gc() if paused else contextlib.nullcontext():
        yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # noqa: S506


def lookups(inv: inventory.Inventory) -> None:
    fab = inv.fabric
    assert fab is not None
    for n in inv.nodes:
        inv.node(n.name)
        fab.links_of(n.name)
        fab.address(n.name)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--profile", action="store_true", help="cProfile one 4,000-node ring load (top 15 by own time)")
    args = p.parse_args()
    rows: dict[str, dict[int, float]] = {}
    links: dict[tuple[str, int], int] = {}
    with tempfile.TemporaryDirectory() as t:
        for count in SIZES:
            for fabric in FABRICS:
                path = write_inventory(Path(t), count, fabric)
                inv = inventory.load(path)  # warm: profiles are read once per process, as in the CLI
                assert len(inv.nodes) == count and inv.fabric is not None
                links[fabric, count] = len(inv.fabric.links)
                rows.setdefault(f"load(), {fabric} fabric", {})[count] = median_time(
                    lambda path=path: inventory.load(path), args.repeat)
                if fabric == "ring":
                    rows.setdefault("per-node lookups, ring", {})[count] = median_time(
                        lambda inv=inv: lookups(inv), args.repeat)
            pairs_file = Path(t) / f"cluster-pairs-{count}.yml"
            rows.setdefault("baseline: YAML parse only, pairs", {})[count] = median_time(
                lambda f=pairs_file: parse_only(f), args.repeat)
            rows.setdefault("  the same, GC paused", {})[count] = median_time(
                lambda f=pairs_file: parse_only(f, paused=True), args.repeat)
        if args.profile:
            prof = cProfile.Profile()
            prof.runcall(inventory.load, Path(t) / f"cluster-ring-{SIZES[-1]}.yml")
            pstats.Stats(prof).sort_stats("tottime").print_stats(15)
    small, big = SIZES
    counts = ", ".join(f"{f} {links[f, small]}/{links[f, big]}" for f in FABRICS)
    print(f"runs: {args.repeat} (medians); fabric links for {small:,}/{big:,} nodes: {counts}")
    print(f"{'':34s} {f'{small:,} nodes':>12s} {f'{big:,} nodes':>12s} {f'ratio {big}/{small}':>16s}")
    for label, t in rows.items():
        print(f"{label:34s} {t[small] * 1000:9.1f} ms {t[big] * 1000:9.1f} ms {t[big] / t[small]:14.1f} x")
    floor = rows["baseline: YAML parse only, pairs"]
    pairs = rows["load(), pairs fabric"]
    print(f"{'load() pairs / baseline':34s} {pairs[small] / floor[small]:10.1f} x {pairs[big] / floor[big]:10.1f} x")
    worst = max(rows[f"load(), {f} fabric"][big] for f in FABRICS)
    print(f"linear is about {big / small:.0f}x, quadratic {(big / small) ** 2:.0f}x; "
          f"goal load() of {big:,} nodes < {GOAL_S:.0f} s: {'met' if worst < GOAL_S else 'NOT met'}"
          f" (slowest {worst:.2f} s)")


if __name__ == "__main__":
    main()
