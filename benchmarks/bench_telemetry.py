#!/usr/bin/env python3
"""What telemetry costs the engine (goal: <= 3% of output tokens/s).

During a bench run the telemetry is: AIPerf scraping the engine's Prometheus /metrics (its `--server-metrics`);
on every node, the once-a-second sampler of CPU and fabric counters (bench/probe.py's SAMPLER) and the node
exporter (the node_exporter role's own command line), both scraped by the control node's Prometheus every
telemetry.SCRAPE_SECONDS, as is the engine's /metrics. So: the same load point against one llama-server (the
toolkit's own llama.cpp build, from the artifact cache; a small generated model; the engine, the sampler and the
node exporter pinned to one CPU, AIPerf and Prometheus to the others), alternately with and without all of it,
several rounds after a warm-up; the median tokens/s of each side by side, their ratio, and the round-to-round
spread that bounds what the ratio can resolve. Everything runs in a network namespace of its own (loopback only).

    sudo .venv/bin/python benchmarks/bench_telemetry.py [--rounds 3] [--concurrency 2] [--requests 24]
Needs the llama.cpp artifact (built by `make image` or the test suite), AIPerf (installed on first use) and the
Prometheus and node exporter binaries `make setup` unpacks.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jinja2  # noqa: E402

import telemetry  # noqa: E402
from bench import loadgen, probe  # noqa: E402
from inference import artifacts  # noqa: E402
from onedotzero import inventory, paths, profiles, yamlfile  # noqa: E402
from testbed.bed import prometheus_binary  # noqa: E402
from testbed.tiny_model import write_gguf  # noqa: E402

PORT = 18631
PROM_PORT = 18632
EXPORTER = Path("/var/cache/onedotzero/tools/prometheus-node-exporter/usr/bin/prometheus-node-exporter")
ROLE = paths.PLAYBOOKS_DIR / "roles" / "node_exporter"


def exporter_argv() -> list[str]:
    """The node exporter's command line as the node_exporter role configures it (its template on its defaults)."""
    variables = {**yamlfile.load(ROLE / "defaults" / "main.yml"), "node_exporter_port": telemetry.NODE_EXPORTER_PORT}
    text = jinja2.Template((ROLE / "templates" / "prometheus-node-exporter.j2").read_text()).render(**variables)
    line = next(x for x in text.splitlines() if x.startswith("ARGS="))
    return [str(EXPORTER), *line.removeprefix("ARGS=").strip('"').split()]


def telemetry_on(work: Path, cpu: int) -> list[subprocess.Popen]:
    """The nodes' side (exporter and sampler, on the engine's CPU) and the control node's Prometheus scraping the
    exporter and the engine every telemetry.SCRAPE_SECONDS (on the other CPUs)."""
    config = work / "prometheus.yml"
    targets = {"node": telemetry.NODE_EXPORTER_PORT, "engine": PORT}
    config.write_text(f"global: {{scrape_interval: {telemetry.SCRAPE_SECONDS}s}}\nscrape_configs:\n" + "".join(
        f"  - {{job_name: {job}, static_configs: [{{targets: ['127.0.0.1:{port}']}}]}}\n"
        for job, port in targets.items()))
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    return [subprocess.Popen(["taskset", "-c", str(cpu), *exporter_argv()], **quiet),
            subprocess.Popen(["taskset", "-c", str(cpu), sys.executable, "-c", probe.SAMPLER, "1", ""], **quiet),
            subprocess.Popen([str(prometheus_binary()), f"--config.file={config}",
                              f"--storage.tsdb.path={work / 'tsdb'}", f"--web.listen-address=127.0.0.1:{PROM_PORT}"],
                             **quiet)]


def node_cpu(helpers: list[subprocess.Popen]) -> float:
    """CPU seconds the nodes' side (the exporter and the sampler, on the engine's CPU) has used so far."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for h in helpers[:2]:
        fields = Path(f"/proc/{h.pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / ticks


def scraped(work: Path) -> int:
    """How many samples of the engine and the exporter Prometheus holds (proof the telemetry side ran)."""
    r = requests.get(f"http://127.0.0.1:{PROM_PORT}/api/v1/query",
                     params={"query": "sum(count_over_time(up[1h]))"}, timeout=10).json()
    return int(float(r["data"]["result"][0]["value"][1])) if r["data"]["result"] else 0


def isolate() -> None:
    """Re-run in a network namespace of its own with only loopback up: every server here is local to it."""
    if os.environ.get("ODZ_BENCH_NETNS") != "1":
        os.environ["ODZ_BENCH_NETNS"] = "1"
        os.execvp("unshare", ["unshare", "--net", "--", sys.executable, *sys.argv])
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)


def server(work: Path, inv) -> tuple[subprocess.Popen, int]:
    build = artifacts.engine("llama_cpp", "cpu")
    tar = artifacts.artifact_path(inv.image.cache, build, profiles.distro("debian-12"))
    if not tar.is_file():
        sys.exit(f"no llama.cpp artifact at {tar}: build the testbed's images first (make test or make demo)")
    with tarfile.open(tar) as t:
        t.extractall(work, filter="tar")
    binary = next(work.rglob("bin/llama-server"))
    model = write_gguf(work / "tiny.gguf")
    # the engine on the last CPU, AIPerf (this process's children) on the others: they do not compete for a core
    last = max(os.sched_getaffinity(0))
    os.sched_setaffinity(0, (os.sched_getaffinity(0) - {last}) or {last})
    argv = ["taskset", "-c", str(last), binary, "-m", model, "--host", "127.0.0.1", "--port", str(PORT), "-t", "1",
            "-c", "2048", "--metrics", "--alias", "tiny", "-np", "4"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if requests.get(f"http://127.0.0.1:{PORT}/health", timeout=2).status_code == 200:
                return proc, last
        except requests.RequestException:
            pass
        time.sleep(0.5)
    proc.kill()
    sys.exit("llama-server did not become healthy")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--requests", type=int, default=24)
    args = ap.parse_args()
    src = paths.REPO / "testbed" / "cluster.yml"
    inv = inventory.parse(yamlfile.load(src), src)  # its cache only: no key or node is needed
    aiperf = loadgen.install(inv.image.cache)  # before the namespace: PyPI is outside it
    if not EXPORTER.is_file() or prometheus_binary() is None:
        sys.exit("no node exporter or Prometheus binary: run `sudo make setup` (it unpacks Debian's packages)")
    isolate()
    samples: list[int] = []
    share: list[float] = []  # the nodes' side's CPU time per second of load, on the engine's CPU
    point = loadgen.Point(args.concurrency, 64, 32, args.requests)
    url = f"http://127.0.0.1:{PORT}"
    tps: dict[str, list[float]] = {"without": [], "with": []}
    with tempfile.TemporaryDirectory(prefix="odz-telemetry-") as tmp:
        work = Path(tmp)
        proc, engine_cpu = server(work, inv)
        try:
            loadgen.profile(aiperf, url, "tiny", point, work / "warm-up", {}, [])  # a fresh server's first load: slow
            for r in range(args.rounds):
                for side in ("without", "with") if r % 2 == 0 else ("with", "without"):  # alternate the order
                    metrics = [f"{url}/metrics"] if side == "with" else []
                    helpers = telemetry_on(work, engine_cpu) if side == "with" else []
                    try:
                        if helpers:
                            time.sleep(telemetry.SCRAPE_SECONDS)  # Prometheus and the exporter are up and scraping
                            t0, cpu0 = time.monotonic(), node_cpu(helpers)
                        out = loadgen.profile(aiperf, url, "tiny", point, work / f"{side}-{r}", {}, metrics)
                        if helpers:
                            share.append((node_cpu(helpers) - cpu0) / (time.monotonic() - t0))
                            samples.append(scraped(work))
                    finally:
                        for h in helpers:
                            h.terminate()
                            h.wait(30)
                    tps[side].append(out["output_token_throughput"]["avg"])
                    print(f"round {r + 1} {side:7} telemetry: {tps[side][-1]:.1f} tokens/s", flush=True)
        finally:
            proc.terminate()
            proc.wait(30)
    base, tele = statistics.median(tps["without"]), statistics.median(tps["with"])
    print(f"\n{'':26}{'without':>10}{'with':>10}{'ratio':>8}")
    print(f"{'median output tokens/s':26}{base:10.1f}{tele:10.1f}{tele / base:8.3f}")
    spread = max(max(v) / min(v) - 1 for v in tps.values())
    print(f"round-to-round spread within a side: up to {spread * 100:.0f}% (a ratio inside it is noise)")
    print(f"samples Prometheus held after each 'with' point: {samples} (every {telemetry.SCRAPE_SECONDS} s)")
    print(f"CPU the exporter and the sampler took on the engine's CPU: median {statistics.median(share) * 100:.2f}% "
          f"of it (per point: {', '.join(f'{x * 100:.2f}%' for x in share)}); an engine bound by that CPU loses at "
          f"most about that share")
    cost = statistics.median(share)
    print(f"goal (<= 3%): the nodes' side takes {cost * 100:.2f}% of the engine's CPU -> "
          f"{'met' if cost <= 0.03 else 'NOT met'}; tokens/s ratio {tele / base:.3f} "
          + ("(inside the spread: throughput alone cannot resolve 3% on this machine)" if spread > 0.03 else
             f"-> {'met' if tele / base >= 0.97 else 'NOT met'}"))


if __name__ == "__main__":
    main()
