"""Measurements taken on the nodes for a run (over SSH, as the admin user), beside the load itself.

  bandwidth(inv, node, n)     a STREAM-like copy: n processes (the engine's threads) each memcpy 256 MiB between
                              two buffers already in memory, all at once; bytes read + written per second
                              (STREAM's "Copy" convention), summed over the processes, best of 5 passes;
                              python3 is on every node (Ansible needs it)
  counters(inv, nodes, links) per node: CPU jiffies (/proc/stat), the fabric interfaces' byte counters
                              (/proc/net/dev), the engine processes' RSS; taken before and after the load
  Sampler(...)                once a second during the sweep, per node: CPU busy, fabric bytes/s (the timeline)
  rpc_round_trips(...)        graph computations the RPC workers logged between two times (inference.debug on):
                              the blocking round trips a token waits for
  engine_bench(inv, head, …)  llama-bench on the head alone, or across the split (the RPC workers; the head's
                              server paused meanwhile): prompt processing and generation tokens/s
"""

from __future__ import annotations

import json
import shlex
import subprocess
import threading
import time

from inference.artifacts import PREFIX
from inference.service import UNITS
from onedotzero import ssh
from onedotzero.errors import UserError
from onedotzero.inventory import Inventory, Node

BANDWIDTH = r"""
import multiprocessing as mp, sys, time
n = 256 << 20
passes = 5


def copy(start, out):
    a, b = bytearray(n), bytearray(n)
    a[::4096] = b"\1" * (n // 4096)   # touch every page of both first: the copy measures memory, not page faults
    b[::4096] = b"\1" * (n // 4096)
    rates = []
    for _ in range(passes):
        start.wait()                     # every process copies at once: a pass's rates add up to the node's
        t = time.perf_counter()
        b[:] = a                         # one memcpy of n bytes into memory already mapped
        rates.append(2 * n / (time.perf_counter() - t))
    out.put(rates)


procs = int(sys.argv[1])
start, out = mp.Barrier(procs), mp.Queue()
ps = [mp.Process(target=copy, args=(start, out)) for _ in range(procs)]
for p in ps:
    p.start()
each = [out.get() for _ in ps]
for p in ps:
    p.join()
print(max(sum(r[i] for r in each) for i in range(passes)) / 1e9)   # the best simultaneous pass
"""

# Node-side readings both scripts below share (this network namespace's view: /proc/net/dev, not a container's
# /sys/class/net, which may be its host's).
READINGS = r"""
import json, os, subprocess, sys, time


def cpu():
    j = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    return sum(j) - j[3] - j[4], sum(j)   # busy (all but idle and iowait), total jiffies


def net():
    dev = {}
    for line in open("/proc/net/dev").readlines()[2:]:
        name, _, rest = line.partition(":")
        f = rest.split()
        dev[name.strip()] = (int(f[0]), int(f[8]))   # rx, tx bytes
    return dev


def fabric(addrs):   # {address: interface} of the node's fabric addresses
    out = subprocess.run(["ip", "-j", "-4", "addr"], capture_output=True, text=True).stdout or "[]"
    return {i["local"]: a["ifname"] for a in json.loads(out) for i in a.get("addr_info", [])
            if i.get("local") in addrs}
"""

COUNTERS = READINGS + r"""
busy, total = cpu()
dev = net()
nets = {addr: {"ifname": ifname, "rx_bytes": dev[ifname][0], "tx_bytes": dev[ifname][1]}
        for addr, ifname in fabric(set(sys.argv[1].split(",")) - {""}).items() if ifname in dev}
rss = 0
for pid in os.listdir("/proc"):
    if pid.isdigit():
        try:
            comm = open("/proc/%s/comm" % pid).read().strip()
            if comm in ("llama-server", "rpc-server", "ggml-rpc-server"):
                for line in open("/proc/%s/status" % pid):
                    if line.startswith("VmRSS:"):
                        rss += int(line.split()[1]) * 1024
        except OSError:
            pass
print(json.dumps({"cpu": {"busy": busy, "total": total}, "net": nets, "engine_rss": rss, "cpus": os.cpu_count()}))
"""


SAMPLER = READINGS + r"""
interval = float(sys.argv[1])
ifs = set(fabric(set(sys.argv[2].split(",")) - {""}).values())


def read():
    busy, total = cpu()
    dev = net()
    return (time.monotonic(), busy, total, sum(dev[i][1] for i in ifs if i in dev),
            sum(dev[i][0] for i in ifs if i in dev))


prev = read()
while True:
    time.sleep(interval)
    cur = read()
    dt, total = cur[0] - prev[0], cur[2] - prev[2]
    print(json.dumps([(cur[1] - prev[1]) / total if total else 0.0, (cur[3] - prev[3]) / dt, (cur[4] - prev[4]) / dt]),
          flush=True)
    prev = cur
"""


class Sampler:
    """Per node, once a second during the sweep: CPU busy share and fabric bytes/s sent and received, from one
    long-lived SSH session per node running a small loop (it wakes once a second: no load worth measuring).
    Samples are stamped on arrival with the control node's clock, so the nodes' clocks do not matter."""

    def __init__(self, inv: Inventory, nodes: list[Node], addresses: dict[str, list[str]], interval: float = 1.0):
        self.inv, self.nodes, self.addresses, self.interval = inv, nodes, addresses, interval
        self.start = 0.0
        self.samples: dict[str, list[list[float]]] = {n.name: [] for n in nodes}
        self.procs: list[subprocess.Popen] = []
        self.threads: list[threading.Thread] = []

    def _read(self, name: str, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            try:
                cpu, tx, rx = json.loads(line)
            except ValueError:
                continue
            self.samples[name].append([round(time.monotonic() - self.start, 3), cpu, tx, rx])

    def __enter__(self) -> Sampler:
        self.start, self.wall = time.monotonic(), time.time()
        for n in self.nodes:
            cmd = shlex.join(["python3", "-u", "-c", SAMPLER, f"{self.interval:g}",
                              ",".join(self.addresses.get(n.name, []))])
            proc = subprocess.Popen(ssh.argv(self.inv, n, cmd), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.DEVNULL, text=True)
            self.procs.append(proc)
            t = threading.Thread(target=self._read, args=(n.name, proc), daemon=True)
            t.start()
            self.threads.append(t)
        return self

    def now(self) -> float:
        return round(time.monotonic() - self.start, 3)

    def since(self, epoch: float) -> float:
        """A wall-clock time (this host's) on the timeline's axis."""
        return round(epoch - self.wall, 3)

    def __exit__(self, *exc) -> None:
        for proc in self.procs:  # the session closes; the loop's next print fails and it exits
            proc.terminate()
        for proc, t in zip(self.procs, self.threads, strict=True):
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
            t.join(5)


def _python(inv: Inventory, node: Node, code: str, *args: str, timeout: float = 120) -> str:
    r = ssh.run(inv, node, shlex.join(["python3", "-c", code, *args]), timeout=timeout)
    if not r.ok:
        raise UserError(f"probe on {node.name} failed: {r.reason()}", "is the node up? `./cluster.py compute status`")
    return r.stdout.strip()


def bandwidth(inv: Inventory, node: Node, procs: int = 1) -> float:
    """GB/s (read + written) of procs simultaneous 256 MiB memcpys on the node (as many as the engine's threads):
    the memory bandwidth the engine's CPU threads can draw."""
    return float(_python(inv, node, BANDWIDTH, str(procs)))


def counters(inv: Inventory, nodes: list[Node], addresses: dict[str, list[str]]) -> dict[str, dict]:
    """Each node's counters now; addresses[node] are its fabric addresses (whose interfaces are counted)."""
    out = ssh.parallel(lambda n: json.loads(_python(inv, n, COUNTERS, ",".join(addresses.get(n.name, [])))), nodes)
    return {n.name: c for n, c in zip(nodes, out, strict=True)}


def usage(before: dict[str, dict], after: dict[str, dict], seconds: float) -> dict[str, dict]:
    """Per node over the load: CPU busy share, fabric bytes each way per interface, the engine's RSS."""
    result = {}
    for name, a in after.items():
        b = before[name]
        total = a["cpu"]["total"] - b["cpu"]["total"]
        busy = a["cpu"]["busy"] - b["cpu"]["busy"]
        links = {addr: {"ifname": v["ifname"], "rx_bytes": v["rx_bytes"] - b["net"][addr]["rx_bytes"],
                        "tx_bytes": v["tx_bytes"] - b["net"][addr]["tx_bytes"]}
                 for addr, v in a["net"].items() if addr in b["net"]}
        result[name] = {"cpu_busy": busy / total if total else 0.0, "seconds": seconds, "links": links,
                        "engine_rss": a["engine_rss"], "cpus": a["cpus"]}
    return result


def _journal_count(inv: Inventory, node: Node, unit: str, since: str, until: str, pattern: str) -> int:
    """Lines of unit's journal between two times matching pattern (grep's exit 1, no line, is a count of 0)."""
    r = ssh.run(inv, node, f"set -o pipefail; sudo -n journalctl -u {unit} -o cat --no-pager --since '@{since}' "
                           f"--until '@{until}' | grep -c -E {shlex.quote(pattern)}", timeout=60)
    if r.returncode not in (0, 1) or not r.stdout.strip().isdigit():
        raise UserError(f"reading {unit}'s journal on {node.name} failed: {r.reason()}",
                        "is the node up and the admin allowed sudo?")
    return int(r.stdout.strip())


def rpc_round_trips(inv: Inventory, workers: list[Node], since: float, until: float) -> dict[str, int]:
    """Graph computations each RPC worker ran between two times (epoch seconds): each is a blocking round trip
    for the head. Logged only with inference.debug (GGML_RPC_DEBUG)."""
    return {w.name: _journal_count(inv, w, "onedotzero-rpc-server", f"{since:.0f}", f"{until:.0f}",
                                   r"graph_(re)?compute") for w in workers}


LLAMA_BENCH = f"{PREFIX}/llama_cpp/current/bin/llama-bench"


def engine_bench(inv: Inventory, head: Node, model_path: str, threads: int, prompt: int, gen: int,
                 split: tuple[str, int | str] | None = None) -> dict:
    """llama-bench on the head: prompt processing and generation tokens/s. Alone (its GPU, or its CPU), or with
    split=(rpc, gpu_layers) across the RPC workers as the engine splits the model. The workers serve one client at
    a time, so the head's server is stopped for it and started again whatever happens (the caller waits for it)."""
    argv = [LLAMA_BENCH, "-m", model_path, "-p", str(prompt), "-n", str(gen), "-t", str(threads), "-r", "2",
            "-o", "json"]
    cmd = shlex.join(argv)
    if split:
        argv += ["--rpc", split[0], "-ngl", str(split[1])]
        unit = UNITS["llama_cpp"]["head"]
        cmd = (f"trap 'sudo -n systemctl start {unit}' EXIT; sudo -n systemctl stop {unit} && "
               f"{shlex.join(argv)}")
    r = ssh.run(inv, head, cmd, timeout=900)
    if not r.ok:
        return {"error": f"llama-bench on {head.name}: {r.reason()}"}
    try:
        rows = json.loads(r.stdout)
    except ValueError:
        return {"error": f"llama-bench on {head.name} printed no JSON"}
    out = {"node": head.name, "build": rows[0].get("build_commit") if rows else None}
    for row in rows:
        kind = "prompt" if row.get("n_prompt") else "generation"
        out[kind] = {"tokens": row.get("n_prompt") or row.get("n_gen"), "tokens_per_second": row.get("avg_ts"),
                     "stddev": row.get("stddev_ts"), "backend": row.get("backends")}
    return out


def image_versions(inv: Inventory, nodes: list[Node]) -> dict[str, dict]:
    """The image each node runs: /etc/onedotzero-release (version, distro, roles), stamped by the image build."""
    def one(n: Node) -> dict:
        r = ssh.run(inv, n, "cat /etc/onedotzero-release", timeout=30)
        if not r.ok:
            return {"error": r.reason()}
        pairs = (line.split("=", 1) for line in r.stdout.splitlines() if "=" in line)
        return {k.removeprefix("ONEDOTZERO_").lower(): v for k, v in pairs}
    return dict(zip([n.name for n in nodes], ssh.parallel(one, nodes), strict=True))
