#!/usr/bin/env python3
"""What `bench run`'s telemetry costs the engine (goal: <= 3% of output tokens/s).

During a load point the telemetry is AIPerf scraping the engine's Prometheus /metrics (its `--server-metrics`)
and, on every node, the once-a-second sampler of CPU and fabric counters (bench/probe.py's SAMPLER). So: the same
load point against one llama-server (the toolkit's own llama.cpp build, from the artifact cache; a small
generated model; loopback only; the engine and the sampler pinned to one CPU, AIPerf to the others),
alternately with and without both, several rounds after a warm-up; the median tokens/s of each side by side,
their ratio, and the round-to-round spread that bounds what the ratio can resolve.

    sudo .venv/bin/python benchmarks/bench_telemetry.py [--rounds 3] [--concurrency 2] [--requests 24]
Needs the llama.cpp artifact (built by `make image` or the test suite) and AIPerf (installed on first use).
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

from bench import loadgen, probe  # noqa: E402
from inference import artifacts  # noqa: E402
from onedotzero import inventory, paths, profiles, yamlfile  # noqa: E402
from testbed.tiny_model import write_gguf  # noqa: E402

PORT = 18631


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
    aiperf = loadgen.install(inv.image.cache)
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
                    # with: also the per-second sampler a node runs during a sweep, on the engine's own CPU
                    sampler = subprocess.Popen(["taskset", "-c", str(engine_cpu), sys.executable, "-c", probe.SAMPLER,
                                                "1", ""], stdout=subprocess.DEVNULL) if side == "with" else None
                    try:
                        out = loadgen.profile(aiperf, url, "tiny", point, work / f"{side}-{r}", {}, metrics)
                    finally:
                        if sampler:
                            sampler.kill()
                            sampler.wait()
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
    print(f"goal: ratio >= 0.97 -> {'met' if tele / base >= 0.97 else 'NOT met'}")


if __name__ == "__main__":
    main()
