#!/usr/bin/env python3
"""PXE power-on -> SSH-ready in the virtual cluster: golden over NFS, golden fetched over HTTP, live.

Boots every testbed node per round (all at once, as a real cluster powers on), `--rounds` rounds per
mode, and prints the median and range per mode. The golden NFS boot is the baseline the others are
compared with. Needs root and a built golden image (`make image INVENTORY=testbed/cluster.yml`).
Live boots the newest live image in the testbed store; Ubuntu's ISO is out of reach here, so
--live-fixture first publishes the Debian fixture live ISO (tests/fixtures/live_fixture.py) through the
real live pipeline: it boots the same way (the whole ISO fetched into RAM, cloud-init seed).

    sudo python benchmarks/boot_time.py [--rounds 3] [--live-fixture]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from image.store import ImageRef, Store  # noqa: E402
from netboot import selection  # noqa: E402
from onedotzero import inventory, ssh  # noqa: E402
from testbed.bed import Testbed  # noqa: E402

INVENTORY = Path(__file__).resolve().parent.parent / "testbed" / "cluster.yml"
TIMEOUT = 900


def ssh_ready(bed: Testbed, node) -> bool:
    argv = bed.ns_argv(ssh.argv(bed.inv, node, "true", connect_timeout=3))  # admin logged in: ready
    return subprocess.run(argv, capture_output=True, timeout=30).returncode == 0


def boot_round(bed: Testbed, nodes) -> list[float]:
    start = time.monotonic()
    for node in nodes:
        bed.power_on(node.name)
    pending, times = list(nodes), []
    while pending and time.monotonic() - start < TIMEOUT:
        for node in list(pending):
            if ssh_ready(bed, node):
                times.append(time.monotonic() - start)
                pending.remove(node)
        time.sleep(1)
    for node in nodes:
        bed.power_off(node.name)
    if pending:
        raise SystemExit(f"not up after {TIMEOUT}s: {[n.name for n in pending]}\n{bed.diagnostics(15)}")
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--live-fixture", action="store_true", help="publish the Debian fixture live ISO first")
    args = p.parse_args()
    inv = inventory.load(INVENTORY)
    store = Store(inv.image.store)
    if args.live_fixture:
        from tests.fixtures.live_fixture import publish_fixture_live

        with tempfile.TemporaryDirectory(dir=inv.image.cache) as work:
            print(f"published {publish_fixture_live(inv, Path(work)).ref} (Debian fixture live ISO)", flush=True)
    modes = [("golden over NFS", "golden", "nfs"), ("golden over HTTP (into RAM)", "golden", "http")]
    if store.versions("live"):
        modes.append(("live", "live", None))
    bed = Testbed(inv, "bench")
    qemu = [n for n in inv.nodes if n.profile.virtual == "qemu"]  # the boot chain: firmware, PXE, kernel
    bed.up()
    results = {}
    try:
        for title, kind, root in modes:
            selection.point(inv, ImageRef(kind), [n.name for n in qemu], root)
            samples = [t for _ in range(args.rounds) for t in boot_round(bed, qemu)]
            results[title] = samples
            print(f"{title}: {', '.join(f'{t:.0f}s' for t in samples)}", flush=True)
    finally:
        bed.down()
    base = statistics.median(results["golden over NFS"])
    print(f"\n{len(qemu)} QEMU nodes booting at once under TCG")
    print(f"{'mode':30s} {'median':>8} {'min':>6} {'max':>6} {'vs NFS':>7}")
    for title, samples in results.items():
        med = statistics.median(samples)
        print(f"{title:30s} {med:7.0f}s {min(samples):5.0f}s {max(samples):5.0f}s {med / base:6.2f}x")
    if "live" not in results:
        print("live: no live image in the testbed store (Ubuntu is out of reach here; try --live-fixture)")


if __name__ == "__main__":
    main()
