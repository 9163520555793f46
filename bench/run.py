"""`cluster.py bench run`: one recorded run against the engine that `inference up` started. Runs on the control
node (in the virtual cluster: in the testbed's namespace, which plays it). The order:

  1. context      what was measured: image per node, engine + version + backend, model + checksum + weights'
                  type, topology (head, workers, the links between them and their kind), inventory fingerprint
  2. probes       per serving node a STREAM-like memory bandwidth; the fabric's links between them (iperf3 and
                  ping, as `fabric test`); llama-bench on the head alone
  3. sweep        AIPerf at every (prompt, output) shape x concurrency, node counters read between points and
                  sampled once a second throughout (the timeline); then what the control node's Prometheus
                  scraped meanwhile (node exporters, GPU telemetry where there is a GPU, the engine's /metrics)
  4. round trips  one request of known length, the RPC workers' graph computations counted for it (debug on)
  5. publish      run.json with everything, in the results folder, renamed into place whole
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import requests

import telemetry
from bench import loadgen, probe, results
from fabric import check as fabric_check
from inference import artifacts
from inference import service as inference
from models.store import ModelRef, model_store
from onedotzero import ssh
from onedotzero.errors import UserError
from onedotzero.inventory import Inventory
from onedotzero.log import step
from telemetry import prometheus

SCHEMA = results.SCHEMA
# Request fields per engine. llama.cpp's server reuses the KV cache of a prompt it has seen (AIPerf's prompts
# repeat across runs with the same seed): prefill would be measured only once, so every request computes it.
REQUEST_FIELDS = {"llama_cpp": {"cache_prompt": False}, "vllm": {}}


@dataclass(frozen=True)
class Sweep:
    """What one run measures."""

    concurrency: tuple[int, ...] = (1, 2, 4)
    shapes: tuple[tuple[int, int], ...] = ((128, 64),)  # (prompt tokens, output tokens)
    requests: int = 8  # per load point (at least its concurrency)
    slo: tuple[tuple[str, float], ...] = ()  # (ttft_ms|itl_ms|e2e_ms, limit): goodput counts requests within all
    probes: bool = True  # bandwidth, fabric and llama-bench (off: the load alone)
    fabric_seconds: float = 2.0
    label: str | None = None
    extra: dict = field(default_factory=dict)  # free-form notes kept in the context (e.g. what a test changed)

    def points(self) -> list[loadgen.Point]:
        return [loadgen.Point(c, p, o, max(self.requests, c)) for p, o in self.shapes for c in self.concurrency]


def fingerprint(inv: Inventory) -> str:
    """The inventory's content (its YAML as parsed, key order ignored): equal fingerprints, the same cluster facts."""
    import yaml

    data = yaml.safe_load(inv.path.read_text())
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def parts(plan: dict) -> tuple[str, list[str]]:
    """The head and the workers of the plan in force (what `inference up` applied, not today's inventory)."""
    head = next(n for n, v in plan["nodes"].items() if v["part"] == "head")
    return head, [n for n, v in plan["nodes"].items() if v["part"] == "worker"]


def model_facts(stored, file: str) -> tuple[dict, int]:
    """(layers, hidden size, weights' type; bytes of weights) from the model the engine loads: a GGUF's header, or
    a Hugging Face directory's config.json and its safetensors files."""
    if file.endswith(".gguf"):
        return (inference.gguf_header(stored.path / "files" / file),
                next(f.size for f in stored.manifest.files if f.path == file))
    config = json.loads((stored.path / "files" / "config.json").read_text())
    text = config.get("text_config", config)
    header = {"layers": inference.hf_layers(stored.path / "files"), "embedding_length": text.get("hidden_size"),
              "file_type": str(text.get("torch_dtype") or config.get("torch_dtype") or "unknown")}
    return header, sum(f.size for f in stored.manifest.files if f.path.endswith(".safetensors"))


def context(inv: Inventory, plan: dict, started: str) -> dict:
    """Runs on the control node: everything a run's figures depend on (step 1)."""
    s = inference.settings(inv)
    head, workers = parts(plan)
    serving = [head, *workers]
    nodes = [inv.node(n) for n in serving]
    m = plan["model"]
    stored = model_store(inv).get(ModelRef.parse(f"{m['name']}@{m['version']}"))
    header, size = model_facts(stored, m["file"])
    backend = inference.backend(inv.node(head), plan["engine"])
    build = artifacts.engine(plan["engine"], backend)
    env = plan["nodes"][head]["env"]
    links = [{"name": link.name, "kind": link.kind, "ends": [e.node for e in link.ends], "mtu": link.mtu}
             for link in (inv.fabric.links if inv.fabric else ())
             if all(e.node in serving for e in link.ends)]
    return {
        "started": started,
        "cluster": inv.cluster, "inventory": {"path": str(inv.path), "fingerprint": fingerprint(inv)},
        "images": probe.image_versions(inv, nodes),
        "engine": {"name": plan["engine"], "version": build.version, "commit": build.commit, "backend": backend,
                   "threads": int(env.get("THREADS", s.threads)), "context": int(env.get("CONTEXT", s.context))},
        "model": {"ref": f"{m['name']}@{m['version']}", "sha256": m["sha256"], "file": m["file"], "bytes": size,
                  "layers": header["layers"], "embedding_length": header["embedding_length"],
                  "weights": header["file_type"]},
        "topology": {"head": head, "workers": workers, "nodes": serving,
                     "layers": {n: plan["nodes"][n]["layers"] for n in serving},
                     "hardware": {n.name: n.hardware for n in nodes}, "links": links},
    }


def probes(inv: Inventory, plan: dict, ctx: dict, sweep: Sweep) -> dict:
    """Runs on the control node, measuring on the nodes (step 2); one at a time, so none disturbs another."""
    nodes = [inv.node(n) for n in ctx["topology"]["nodes"]]
    out: dict = {"bandwidth_gbs": {}, "spec_bandwidth_gbs": {}, "links": [], "engine_bench": None}
    for n in nodes:
        with step(f"bench: memory bandwidth of {n.name}"):
            out["bandwidth_gbs"][n.name] = probe.bandwidth(inv, n, ctx["engine"]["threads"])
        gpu = n.profile.gpu
        if gpu is not None and gpu.memory_gbs:
            out["spec_bandwidth_gbs"][n.name] = gpu.memory_gbs
    if ctx["topology"]["links"]:
        with step("bench: the fabric's links (iperf3 both ways, ping)"):
            report = fabric_check.test(inv, sweep.fabric_seconds)
        names = {link["name"] for link in ctx["topology"]["links"]}
        out["links"] = [{"name": r.link.name, "kind": r.link.kind, "forward_gbit": r.forward_gbit,
                         "reverse_gbit": r.reverse_gbit, "rtt_ms": r.rtt_ms, "error": r.error}
                        for r in report.results if r.link.name in names]
    if plan["engine"] == "llama_cpp":
        head = inv.node(ctx["topology"]["head"])
        shape = sweep.shapes[0]
        with step(f"bench: llama-bench on {head.name} alone"):
            out["engine_bench"] = probe.engine_bench(inv, head, plan["model"]["path"], ctx["engine"]["threads"],
                                                     shape[0], shape[1])
        workers = ctx["topology"]["workers"]
        if workers:
            rpc = ",".join(f"{plan['nodes'][w]['address']}:{plan['nodes'][w]['port']}" for w in workers)
            gpu_layers = plan["nodes"][head.name]["env"]["GPU_LAYERS"]
            try:
                with step(f"bench: llama-bench across the split ({head.name} + {', '.join(workers)}; "
                          f"the engine's server paused)"):
                    out["engine_bench_split"] = probe.engine_bench(
                        inv, head, plan["model"]["path"], ctx["engine"]["threads"], shape[0], shape[1],
                        split=(rpc, gpu_layers))
            finally:
                resume(inv, plan, head.name)
    return out


def _health_url(plan: dict, head: str) -> str:
    node = plan["nodes"][head]
    return inference.health_url(node["address"], node["port"])


def resume(inv: Inventory, plan: dict, head: str, timeout: float = 600) -> None:
    """After a probe that paused the head's server: start it (a no-op if the probe's own trap did) and wait until
    it serves again, or stop the run."""
    unit = inference.UNITS[plan["engine"]]["head"]
    ssh.run(inv, inv.node(head), f"sudo -n systemctl start {unit}", timeout=60)
    inference.wait_healthy(_health_url(plan, head), timeout, f"bench: {unit} on {head} serving again",
                           UserError(f"{unit} on {head} did not come back after llama-bench",
                                     "see `./cluster.py inference status`; `inference up` restarts it"))


def _addresses(inv: Inventory, nodes: list[str]) -> dict[str, list[str]]:
    """Each serving node's fabric addresses (whose interfaces' counters are read)."""
    out: dict[str, list[str]] = {n: [] for n in nodes}
    for link in inv.fabric.links if inv.fabric else ():
        for e in link.ends:
            if e.node in out:
                out[e.node].append(str(e.address))
    return out


def round_trips(inv: Inventory, plan: dict, url: str, ctx: dict, api_key: str | None, tokens: int = 32) -> dict:
    """Step 4: one request of `tokens` output tokens alone on the cluster; the workers' graph computations and
    the fabric bytes it caused, per generated token."""
    workers = [inv.node(w) for w in ctx["topology"]["workers"]]
    if not workers:
        return {}
    nodes = [inv.node(n) for n in ctx["topology"]["nodes"]]
    addrs = _addresses(inv, ctx["topology"]["nodes"])
    before = probe.counters(inv, nodes, addrs)
    t0 = time.time()
    time.sleep(1.1)  # journal times are read to the second: nothing of this window belongs to the sweep
    body = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": tokens, "ignore_eos": True,
            "temperature": 0, "model": plan["model"]["name"], **REQUEST_FIELDS[ctx["engine"]["name"]]}
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    r = requests.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=600)
    if r.status_code != 200:
        raise UserError(f"the round-trip probe got HTTP {r.status_code}: {r.text[:200]}")
    usage = r.json().get("usage", {})
    time.sleep(1.1)
    t1 = time.time()
    after = probe.counters(inv, nodes, addrs)
    used = probe.usage(before, after, t1 - t0)
    wire = sum(v["tx_bytes"] for u in used.values() for v in u["links"].values())
    out = {"completion_tokens": usage.get("completion_tokens"), "prompt_tokens": usage.get("prompt_tokens"),
           "fabric_bytes": wire}
    if all(plan["nodes"][w.name]["env"].get("GGML_RPC_DEBUG") for w in workers):  # the workers log computations
        out["graph_computes"] = probe.rpc_round_trips(inv, workers, t0, t1)
    return out


def collect_telemetry(inv: Inventory, nodes: list[str], start: float, end: float,
                      say: Callable[[str], None]) -> dict:
    """Step 3's end: what the control node's Prometheus scraped from the serving nodes and the engine during the
    sweep (after one more scrape interval, so that the sweep's last seconds are in)."""
    time.sleep(telemetry.SCRAPE_SECONDS + 1)
    url = f"http://{inv.control.address}:{telemetry.PROMETHEUS_PORT}"
    with step("bench: telemetry from Prometheus"):
        scraped = prometheus.collect(url, nodes, start, end, telemetry.SCRAPE_SECONDS)
    if "error" in scraped:
        say(f"warning: no telemetry from Prometheus at {url} ({scraped['error']}); the run is recorded without it")
    else:
        down = [t for t, share in prometheus.health(scraped).items() if share < 1]
        say(f"telemetry: {sum(map(len, scraped['series'].values()))} series from Prometheus"
            + (f"; scrapes failed at times for {', '.join(down)}" if down else ""))
    return scraped


def run(inv: Inventory, sweep: Sweep, results_dir: Path, say: Callable[[str], None]) -> Path:
    """Steps 1-5; returns the published run's folder. Nothing is published if any step fails."""
    plan = inference.applied(inv)
    s = inference.settings(inv)
    url = f"http://{inv.control.address}:{s.port}"
    head_name, _ = parts(plan)
    head = plan["nodes"][head_name]
    if not inference.healthy(_health_url(plan, head_name)):
        raise UserError(f"the engine on {head_name} is not healthy", "see `./cluster.py inference status`")
    api_key = s.api_key_file.read_text().strip() if s.api_key_file else None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    run_id = results.new_id(stamp, sweep.label)
    tmp = results.staging(results_dir, run_id)  # first: a folder it cannot write is found before minutes of work
    try:
        aiperf = loadgen.install(inv.image.cache)
        ctx = context(inv, plan, stamp)
        ctx["notes"] = dict(sweep.extra)
        measured = probes(inv, plan, ctx, sweep) if sweep.probes else {}
        nodes = [inv.node(n) for n in ctx["topology"]["nodes"]]
        addrs = _addresses(inv, ctx["topology"]["nodes"])
        metrics = [f"http://{head['address']}:{head['port']}/metrics"]
        points = []
        before = probe.counters(inv, nodes, addrs)
        sweep_start = time.time()
        with probe.Sampler(inv, nodes, addrs) as sampler:
            for point in sweep.points():
                t0, start = time.monotonic(), sampler.now()
                with step(f"bench: {point.name} ({point.requests} requests)"):
                    result = loadgen.profile(aiperf, url, plan["model"]["name"], point, tmp / "points" / point.name,
                                             dict(sweep.slo), metrics, api_key, REQUEST_FIELDS[plan["engine"]])
                end = sampler.now()
                span = result.pop("span", None)  # the measured requests alone, without AIPerf's start-up
                if span:
                    start, end = sampler.since(span[0]), sampler.since(span[1])
                after = probe.counters(inv, nodes, addrs)
                points.append({"name": point.name, "concurrency": point.concurrency,
                               "prompt_tokens": point.prompt_tokens, "output_tokens": point.output_tokens,
                               "requests": point.requests, "result": result, "window": [start, end],
                               "nodes": probe.usage(before, after, time.monotonic() - t0)})
                before = after
                tps = result.get("output_token_throughput", {}).get("avg")
                say(f"{point.name}: {tps:.1f} tokens/s" if tps is not None else f"{point.name}: no tokens")
        timeline = {"interval": sampler.interval, "columns": ["seconds", "cpu_busy", "fabric_tx_Bps", "fabric_rx_Bps"],
                    "nodes": sampler.samples}
        scraped = collect_telemetry(inv, ctx["topology"]["nodes"], sweep_start, time.time(), say)
        trips = round_trips(inv, plan, url, ctx, api_key) if sweep.probes else {}
        run_data = {"schema": SCHEMA, "id": run_id, "context": ctx, "sweep": {
            "concurrency": list(sweep.concurrency), "shapes": [list(x) for x in sweep.shapes],
            "requests": sweep.requests, "slo": dict(sweep.slo), "load_generator": f"aiperf {loadgen.AIPERF}",
            "request_fields": REQUEST_FIELDS[plan["engine"]]},
            "probes": {**measured, "round_trips": trips}, "points": points, "timeline": timeline,
            "telemetry": scraped}
        return results.publish(tmp, run_data)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
