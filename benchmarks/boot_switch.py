#!/usr/bin/env python3
"""Time to point 1,000 inventory nodes at a new image (`cluster.py boot --image golden`).

Goal: under a second (Cobbler's `sync` takes minutes at ~1,400 systems). Printed beside a baseline
run in the same process: the floor cost of plain-writing the same number of small files (2 per node)
without rendering, validation or atomic replacement.

    python benchmarks/boot_switch.py [--nodes 1000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from image.store import Boot, ImageRef, Manifest  # noqa: E402
from netboot import selection  # noqa: E402
from onedotzero import inventory, roles  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def make_inventory(tmp: Path, count: int) -> inventory.Inventory:
    key = REPO / "tests/data/test_key.pub"
    hosts = list(ipaddress.IPv4Network("10.8.0.0/20").hosts())
    data = {
        "cluster": "bench",
        "control": {"name": "ctl", "compute_interface": "eth0", "address": str(hosts[0]), "subnet": "10.8.0.0/20",
                    "dhcp_range": [str(hosts[-100]), str(hosts[-2])]},
        "image": {"distro": "debian-12", "store": str(tmp / "store"), "cache": str(tmp / "cache")},
        "admin": {"user": "admin", "ssh_public_key": str(key)},
        "nodes": [{"name": f"n{i:04d}", "mac": f"52:54:00:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}",
                   "ip": str(hosts[i + 1]), "hardware": "intel-arc"} for i in range(count)],
    }
    inv = inventory.parse(data, tmp / "cluster.yml")
    spec = roles.image_spec(inv, inv.nodes[0])
    for name in ("20260101T000000Z-aaaaaaaa", "20260102T000000Z-bbbbbbbb"):
        d = inv.image.store / "golden" / name
        (d / "live").mkdir(parents=True)
        Manifest(kind="golden", version=name, distro=spec.distro, input_hash=name[-8:], roles=spec.roles,
                 boot=Boot("vmlinuz", "initrd.img", squashfs="live/filesystem.squashfs")).write(d)
    return dataclasses.replace(inv)


def baseline(tmp: Path, count: int) -> None:
    out = tmp / "baseline"
    out.mkdir(exist_ok=True)
    for i in range(count):
        for suffix in ("ipxe", "pxe"):
            (out / f"{i}.{suffix}").write_text("#!ipxe\nkernel x\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, default=1000)
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        inv = make_inventory(tmp, args.nodes)
        ours, floor, one = [], [], []
        for r in range(args.repeat):
            spec = ImageRef.parse("golden@20260101T000000Z-aaaaaaaa" if r % 2 else "golden@20260102T000000Z-bbbbbbbb")
            start = time.perf_counter()
            selection.point(inv, spec, [])
            ours.append(time.perf_counter() - start)
            start = time.perf_counter()
            selection.point(inv, spec, [inv.nodes[r].name])
            one.append(time.perf_counter() - start)
            start = time.perf_counter()
            baseline(tmp, args.nodes)
            floor.append(time.perf_counter() - start)
    med, base, single = statistics.median(ours), statistics.median(floor), statistics.median(one)
    print(f"nodes: {args.nodes}, runs: {args.repeat} (medians)")
    print(f"{'point all nodes (atomic, rendered)':40s} {med * 1000:9.1f} ms   goal < 1000 ms: "
          f"{'met' if med < 1 else 'NOT met'}")
    print(f"{'point one node of them':40s} {single * 1000:9.1f} ms")
    print(f"{'baseline: plain write of 2 files/node':40s} {base * 1000:9.1f} ms")
    print(f"{'ratio ours / baseline':40s} {med / base:9.1f} x")


if __name__ == "__main__":
    main()
