#!/usr/bin/env python3
"""`cluster.py models push`: a 1 GiB model onto two nodes, the control-only plan vs the peer-over-fabric plan
(goal: each transfer at >= 80% of its link's iperf3 rate; the peer plan faster when the fabric is).

On the virtual cluster (testbed/cluster.yml's container nodes node2 and node3, joined by a usb4 cable; their
LAN ports shaped like gigabit Ethernet), as a testbed named `bench-push`:
  1. iperf3 rates: control -> node2 over the LAN (from the testbed's namespace), node2 <-> node3 over the
     fabric (`fabric test`'s code)
  2. a 1 GiB file of random bytes (incompressible) imported into the model store
  3. each plan in turn, from nodes without the model: the push's wall time, and each transfer's rate
     against its link's iperf3 rate
Side by side: peer / control-only. Needs root; the images of testbed/cluster.yml are built if needed.

    sudo .venv/bin/python benchmarks/models_push.py [--size-mib 1024]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fabric import check  # noqa: E402
from models import importer, push  # noqa: E402
from models.store import ModelRef, model_store  # noqa: E402
from onedotzero import inventory, paths, ssh  # noqa: E402
from testbed.bed import Testbed  # noqa: E402

INVENTORY = paths.REPO / "testbed" / "cluster.yml"
NODES = ("node2", "node3")
MODEL = "bench-push"
CLI = [sys.executable, str(paths.REPO / "cluster.py"), "-i", str(INVENTORY)]


def inner(plan: str) -> None:
    """Runs inside the testbed's namespace (the control node's view): one push, its figures as JSON."""
    inv = inventory.load(INVENTORY)
    model = model_store(inv).get(ModelRef.parse(MODEL))  # the newest version: the one main() imported
    t = time.monotonic()
    moved = push.push(inv, model, [inv.node(n) for n in NODES], lambda line: print(line, file=sys.stderr), plan)
    wall = time.monotonic() - t
    print(json.dumps({"wall": wall, "moved": [{"node": m.node, "source": m.source, "bytes": m.bytes,
                                                "seconds": m.seconds, "ok": m.verified, "error": m.error}
                                               for m in moved]}))


def lan_rate(bed: Testbed, node: str) -> float:
    """Gbit/s from the control node's side of the segment to node, by iperf3 (server on the node)."""
    inv = bed.inv
    n = inv.node(node)
    argv = bed.ns_argv(ssh.argv(inv, n, "nohup timeout 40 iperf3 -s -1 -p 5299 >/dev/null 2>&1 & sleep 0.5"))
    subprocess.run(argv, check=True, capture_output=True, timeout=30)
    out = subprocess.run(bed.ns_argv(["iperf3", "-c", str(n.ip), "-p", "5299", "-t", "5", "-J"]),
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e9


def fabric_rate(bed: Testbed) -> float:
    report = subprocess.run(bed.ns_argv([sys.executable, __file__, "--fabric"]), capture_output=True, text=True,
                            check=True).stdout
    return float(report)


def clear(bed: Testbed) -> None:
    """The model off both nodes (final and partial copies): the next push starts from nothing."""
    for node in NODES:
        cmd = f"sudo -n rm -rf {shlex.quote(push.ROOT + '/' + MODEL)} {shlex.quote(push.INCOMING + '/' + MODEL)}"
        subprocess.run(bed.ns_argv(ssh.argv(bed.inv, bed.inv.node(node), cmd)), check=True, capture_output=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--inner", choices=push.PLANS[1:], help=argparse.SUPPRESS)
    parser.add_argument("--fabric", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        inner(args.inner)
        return 0
    if args.fabric:
        results = check.test(inventory.load(INVENTORY)).results
        print(min(min(r.forward_gbit or 0, r.reverse_gbit or 0) for r in results))
        return 0
    for step in (["image", "build", "golden"], ["boot", "--image", "golden", *NODES]):
        subprocess.run([*CLI, *step], check=True, capture_output=True)
    inv = inventory.load(INVENTORY)
    with tempfile.TemporaryDirectory(dir=inv.image.cache) as tmp:
        blob = Path(tmp) / f"{MODEL}.bin"
        with open(blob, "wb") as f:
            for _ in range(args.size_mib):
                f.write(os.urandom(2**20))
        model = importer.import_path(model_store(inv), blob, MODEL)
    size = model.manifest.total_size
    bed = Testbed(inv, "bench-push")
    if bed.exists():
        bed.down()
    bed.up()
    try:
        for node in NODES:
            bed.power_on(node)
        for node in NODES:
            deadline = time.monotonic() + 60
            while subprocess.run(bed.ns_argv(ssh.argv(inv, inv.node(node), "true")),
                                 capture_output=True).returncode != 0:
                if time.monotonic() > deadline:
                    raise SystemExit(f"{node}: no SSH\n{bed.diagnostics(10)}")
                time.sleep(0.5)
        rates = {"lan": lan_rate(bed, NODES[0]), "fabric": fabric_rate(bed)}
        runs = {}
        for plan in ("control-only", "peer"):
            clear(bed)
            proc = subprocess.run(bed.ns_argv([sys.executable, __file__, "--inner", plan]), capture_output=True,
                                  text=True)
            if proc.returncode != 0:
                raise SystemExit(f"push --plan {plan} failed:\n{proc.stderr}")
            runs[plan] = json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        bed.down()
    print(f"models push: {size / 2**30:.2f} GiB onto {' and '.join(NODES)}; iperf3: LAN {rates['lan']:.2f} Gbit/s, "
          f"fabric {rates['fabric']:.2f} Gbit/s (rate shaped, latency not emulated)")
    print(f"{'plan':<14}{'wall s':>8}   transfers (rate, % of its link's iperf3 rate)")
    for plan, run in runs.items():
        parts = []
        for m in run["moved"]:
            if not m["ok"]:
                parts.append(f"{m['node']}: FAILED {m['error']}")
                continue
            link = "lan" if m["source"].startswith("control") else "fabric"
            gbit = m["bytes"] * 8 / m["seconds"] / 1e9 if m["seconds"] else 0.0
            parts.append(f"{m['source']}->{m['node']} {gbit:.2f} Gbit/s ({gbit / rates[link]:.0%} of {link})")
        print(f"{plan:<14}{run['wall']:>8.1f}   " + "; ".join(parts))
    ratio = runs["peer"]["wall"] / runs["control-only"]["wall"]
    print(f"peer / control-only wall time: {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
