#!/usr/bin/env python3
"""`inventory.load()` wall time for 1,000 and 4,000 nodes (goal: 4,000 nodes with a fabric in under a second).

Validation must stay linear: the ratio 4,000/1,000 is about 4x when it is, 16x when something is quadratic
(the old duplicate checks compared every node with every other: 4.5 s at 4,000 nodes). Printed beside a
baseline run on the same files: reading and parsing the YAML alone (plain PyYAML, libyaml's parser when
present), the floor that validation adds to. The nodes are intel-arc (one USB4 port each), cabled in pairs:
a fabric of 2,000 links for 4,000 nodes, 500 for 1,000.

    python benchmarks/inventory_scale.py [--repeat 5] [--profile]
"""

from __future__ import annotations

import argparse
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

from onedotzero import inventory  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SIZES = (1000, 4000)
GOAL_S = 1.0


def write_inventory(tmp: Path, count: int) -> Path:
    """count intel-arc nodes on a /16, each cabled to its neighbour: count/2 links."""
    hosts = ipaddress.IPv4Network("10.8.0.0/16")
    lines = [
        "cluster: bench",
        "control: {name: ctl, compute_interface: eth0, address: 10.8.0.1, subnet: 10.8.0.0/16,",
        "          dhcp_range: [10.8.255.1, 10.8.255.254]}",
        f"image: {{distro: ubuntu-22.04, store: {tmp / 'store'}, cache: {tmp / 'cache'}}}",
        f"admin: {{user: admin, ssh_public_key: {REPO / 'tests/data/test_key.pub'}}}",
        "nodes:",
    ]
    for i in range(count):
        mac = f"52:54:00:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}"
        lines.append(f'  - {{name: n{i:04d}, mac: "{mac}", ip: {hosts[i + 2]}, hardware: intel-arc}}')
    lines += ["fabric:", "  prefix: 10.9.0.0/16", "  links:"]
    lines += [f"    - {{nodes: [n{i:04d}, n{i + 1:04d}], kind: usb4}}" for i in range(0, count, 2)]
    path = tmp / f"cluster-{count}.yml"
    path.write_text("\n".join(lines) + "\n")
    return path


def median_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def parse_only(path: Path) -> None:
    yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # noqa: S506


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--profile", action="store_true", help="cProfile one 4,000-node load (top 15 by own time)")
    args = p.parse_args()
    ours, floor, links = {}, {}, {}
    with tempfile.TemporaryDirectory() as t:
        for count in SIZES:
            path = write_inventory(Path(t), count)
            inv = inventory.load(path)  # warm: profiles are read once per process, as in the CLI
            assert len(inv.nodes) == count and inv.fabric is not None
            links[count] = len(inv.fabric.links)
            ours[count] = median_time(lambda path=path: inventory.load(path), args.repeat)
            floor[count] = median_time(lambda path=path: parse_only(path), args.repeat)
        if args.profile:
            prof = cProfile.Profile()
            prof.runcall(inventory.load, path)
            pstats.Stats(prof).sort_stats("tottime").print_stats(15)
    small, big = SIZES
    print(f"runs: {args.repeat} (medians); fabric links: {links[small]} / {links[big]}")
    print(f"{'':34s} {f'{small:,} nodes':>12s} {f'{big:,} nodes':>12s} {f'ratio {big}/{small}':>16s}")
    for label, t in (("inventory.load() (validated)", ours), ("baseline: YAML parse only", floor)):
        print(f"{label:34s} {t[small] * 1000:9.1f} ms {t[big] * 1000:9.1f} ms {t[big] / t[small]:14.1f} x")
    print(f"{'load / baseline':34s} {ours[small] / floor[small]:10.1f} x {ours[big] / floor[big]:10.1f} x")
    print(f"linear is about {big / small:.0f}x, quadratic {(big / small) ** 2:.0f}x; "
          f"goal {big:,} nodes < {GOAL_S:.0f} s: {'met' if ours[big] < GOAL_S else 'NOT met'}")


if __name__ == "__main__":
    main()
