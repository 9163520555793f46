#!/usr/bin/env python3
"""`cluster.py compute status` wall time for 1, 8 and 32 SSH endpoints (goal: 32 cost <= 1.5 x one).

Starts sshd (own host key, user key, port 22; 16 addresses per instance) on loopback 127.0.0.10-41 of
a network namespace of its own (the benchmark re-runs itself under `unshare --net`), each standing in
for a node (ForceCommand prints what an onedotzero node's status command prints).
Baseline, side by side: the same nodes asked one after another. Also printed: the CPU time of the
ssh clients alone, i.e. the control node's share; here every sshd runs on the same cores too, which
a real cluster spreads over its nodes. Needs root (namespace, port 22, a temporary user).

    sudo python benchmarks/status_fanout.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from onedotzero import inventory, power  # noqa: E402

COUNTS = (1, 8, 32)
USER = "odzbench"  # a temporary system user (the inventory refuses root as admin)
FIRST = 10


def start_sshd(d: Path, count: int) -> list[subprocess.Popen]:
    """sshd instances for `count` loopback endpoints (one sshd listens on at most 16 addresses)."""
    for name in ("host_key", "user_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True)
    shutil.copy(d / "user_key.pub", d / "authorized_keys")
    Path("/run/sshd").mkdir(exist_ok=True)
    procs = []
    for first in range(0, count, 16):
        listen = "".join(f"ListenAddress 127.0.0.{FIRST + i}\n" for i in range(first, min(count, first + 16)))
        cfg = d / f"sshd_config.{first}"
        cfg.write_text(
            f"Port 22\n{listen}HostKey {d}/host_key\nAuthorizedKeysFile {d}/authorized_keys\nPidFile {d}/pid{first}\n"
            "UsePAM no\nStrictModes no\nPasswordAuthentication no\nPermitRootLogin prohibit-password\n"
            "MaxStartups 100:30:200\nLogLevel ERROR\n"
            "ForceCommand echo ONEDOTZERO_IMAGE=golden; echo ONEDOTZERO_VERSION=bench; echo UPTIME=60.0\n")
        procs.append(subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(cfg)]))
    for _ in range(100):
        try:
            socket.create_connection((f"127.0.0.{FIRST + count - 1}", 22), 0.2).close()
            return procs
        except OSError:
            time.sleep(0.1)
    for p in procs:
        p.kill()
    raise SystemExit("sshd did not start")


def make_inventory(d: Path, count: int) -> inventory.Inventory:
    data = {
        "control": {"name": "ctl", "compute_interface": "lo", "address": "127.0.0.1", "subnet": "127.0.0.0/24",
                    "dhcp_range": ["127.0.0.200", "127.0.0.250"]},
        "image": {"distro": "debian-12", "store": str(d / "store"), "cache": str(d / "cache")},
        "admin": {"user": USER, "ssh_public_key": str(d / "user_key.pub")},
        "nodes": [{"name": f"n{i}", "mac": f"52:54:00:00:00:{i:02x}", "ip": f"127.0.0.{FIRST + i}",
                   "hardware": "virtual-uefi"} for i in range(count)],
    }
    return inventory.parse(data, d / "cluster.yml")


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def timed(fn) -> tuple[float, float]:
    """Wall time, and CPU time of the child processes (the ssh clients; sshd's sessions are its own)."""
    cpu, start = children_cpu(), time.perf_counter()
    results = fn()
    elapsed = time.perf_counter() - start
    assert all(s.ok for s in results), [s.error for s in results if not s.ok]
    return elapsed, children_cpu() - cpu


def median_run(fn, repeat: int) -> tuple[float, float]:
    runs = [timed(fn) for _ in range(repeat)]
    return statistics.median(w for w, _ in runs), statistics.median(c for _, c in runs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (a network namespace, sshd on port 22 of its loopback addresses)")
    if os.environ.get("ODZ_BENCH_NETNS") != "1":  # sshd and every connection stay in a namespace of their own
        os.environ["ODZ_BENCH_NETNS"] = "1"
        os.execvp("unshare", ["unshare", "--net", "--", sys.executable, *sys.argv])
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    # Password "*" (no password, but not a locked account, which sshd would refuse without PAM).
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/bin/sh", "-p", "*", USER], check=True)
    with tempfile.TemporaryDirectory() as t:
        d = Path(t)
        os.chmod(d, 0o755)
        try:
            sshds = start_sshd(d, max(COUNTS))
        except BaseException:
            subprocess.run(["userdel", USER], check=False)
            raise
        try:
            inv = make_inventory(d, max(COUNTS))
            rows = []
            for count in COUNTS:
                nodes = list(inv.nodes[:count])
                par, cpu = median_run(lambda ns=nodes: power.status(inv, ns), args.repeat)
                seq, _ = median_run(lambda ns=nodes: [power.node_status(inv, n) for n in ns], args.repeat)
                rows.append((count, par, seq, cpu))
        finally:
            for p in sshds:  # ended by PID: the processes this benchmark started
                p.terminate()
                p.wait()
            subprocess.run(["userdel", USER], check=False)
    one = rows[0][1]
    print(f"{'nodes':>5}  {'status (parallel)':>18}  {'x one node':>10}  {'baseline (sequential)':>22}  "
          f"{'speed-up':>8}  {'ssh client CPU':>14}")
    for count, par, seq, cpu in rows:
        print(f"{count:5d}  {par:17.2f}s  {par / one:9.2f}x  {seq:21.2f}s  {seq / par:7.1f}x  {cpu:13.2f}s")
    print(f"{os.cpu_count()} CPUs shared by the clients and all {max(COUNTS)} sshd endpoints")
    ratio = rows[-1][1] / one
    print(f"goal: {max(COUNTS)} nodes cost <= 1.5 x one node: {'met' if ratio <= 1.5 else 'NOT met'} ({ratio:.2f}x)")


if __name__ == "__main__":
    main()
