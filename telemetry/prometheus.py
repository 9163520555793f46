"""The control node's Prometheus, read back for a bench run (runs on the control node: in the virtual cluster, in
the testbed's namespace). `collect` stores what was scraped during a time window, as returned by Prometheus's
range queries; the functions below it derive the report's figures from that stored data alone.

  cpu       sum by (node, mode) of node_cpu_seconds_total: busy = every mode but idle and iowait
  memory    MemTotal and MemAvailable per node
  net       every NIC's byte counters but lo, per node (the fabric's interfaces among them)
  gpu       whatever GPU gauges a node exports: onedotzero_gpu_* (intel_arc: intel_gpu_top -J) and node_drm_*
            (amd_gpu: the exporter's drm collector); none on CPU-only nodes, and none is made up for them
  engine    the engine's own counters and gauges (llama.cpp's llamacpp:*, vLLM's vllm:*), histograms left out
  up        each target's scrape health over the window
"""

from __future__ import annotations

import requests

QUERIES = {
    "cpu": 'sum by (node, mode) (node_cpu_seconds_total{{job="node", node=~"{nodes}"}})',
    "memory": '{{job="node", node=~"{nodes}", __name__=~"node_memory_(MemTotal|MemAvailable)_bytes"}}',
    "net": '{{job="node", node=~"{nodes}", device!="lo", '
           '__name__=~"node_network_(transmit|receive)_bytes_total"}}',
    "gpu": '{{job="node", node=~"{nodes}", __name__=~"onedotzero_gpu_.*|node_drm_.*"}}',
    "engine": '{{job="engine", __name__=~"(llamacpp|vllm):.*", __name__!~".*_(bucket|created)"}}',
    "up": 'up{{node=~"{nodes}"}}',
}
IDLE_MODES = ("idle", "iowait")
# Counters of generated tokens, by engine: the engine's own tokens/s over the window.
TOKEN_COUNTERS = ("llamacpp:tokens_predicted_total", "vllm:generation_tokens_total")


def collect(url: str, nodes: list[str], start: float, end: float, step: float) -> dict:
    """The window's series of the nodes (Unix times), query by query; {"error": ...} when Prometheus cannot be
    read (the run is still recorded: telemetry is evidence beside the load, not the load)."""
    match = "|".join(nodes)
    out: dict = {"url": url, "start": start, "end": end, "step": step, "series": {}}
    try:
        for key, query in QUERIES.items():
            r = requests.get(f"{url}/api/v1/query_range", timeout=30,
                             params={"query": query.format(nodes=match), "start": start, "end": end, "step": step})
            r.raise_for_status()
            body = r.json()
            if body.get("status") != "success":
                raise ValueError(f"{key}: {body.get('error', body)}")
            out["series"][key] = sorted(
                ({"labels": s["metric"], "values": [[float(t), float(v)] for t, v in s["values"]]}
                 for s in body["data"]["result"]), key=lambda s: sorted(s["labels"].items()))
    except (requests.RequestException, ValueError) as e:
        return {"url": url, "start": start, "end": end, "step": step, "error": f"{type(e).__name__}: {e}"}
    return out


# --- figures from stored telemetry (pure) ---------------------------------------------------------

def rate(values: list[list[float]]) -> list[tuple[float, float]]:
    """Per-second increase between consecutive samples of a counter (a reset, i.e. a decrease, is skipped)."""
    return [(t1, (v1 - v0) / (t1 - t0)) for (t0, v0), (t1, v1) in zip(values, values[1:], strict=False)
            if t1 > t0 and v1 >= v0]


def cpu_busy(telemetry: dict) -> dict[str, list[tuple[float, float]]]:
    """Per node: the fraction of its CPU time busy, between consecutive samples."""
    busy: dict[str, dict[float, float]] = {}
    total: dict[str, dict[float, float]] = {}
    for s in telemetry.get("series", {}).get("cpu", []):
        node, mode = s["labels"].get("node"), s["labels"].get("mode")
        for t, v in s["values"]:
            total.setdefault(node, {}).setdefault(t, 0.0)
            total[node][t] += v
            if mode not in IDLE_MODES:
                busy.setdefault(node, {}).setdefault(t, 0.0)
                busy[node][t] += v
    out = {}
    for node, tot in total.items():
        ts = sorted(tot)
        b = busy.get(node, {})
        out[node] = [(t1, (b.get(t1, 0) - b.get(t0, 0)) / (tot[t1] - tot[t0]))
                     for t0, t1 in zip(ts, ts[1:], strict=False) if tot[t1] > tot[t0]]
    return out


def net_rates(telemetry: dict, direction: str = "transmit") -> dict[tuple[str, str], list[tuple[float, float]]]:
    """(node, device): bytes per second sent (or received) between consecutive samples."""
    name = f"node_network_{direction}_bytes_total"
    return {(s["labels"].get("node"), s["labels"].get("device")): rate(s["values"])
            for s in telemetry.get("series", {}).get("net", []) if s["labels"].get("__name__") == name}


def memory_used(telemetry: dict) -> dict[str, list[tuple[float, float]]]:
    """Per node: bytes in use (MemTotal - MemAvailable) at each sample."""
    by: dict[str, dict[str, dict[float, float]]] = {}
    for s in telemetry.get("series", {}).get("memory", []):
        by.setdefault(s["labels"].get("node"), {})[s["labels"].get("__name__")] = dict(map(tuple, s["values"]))
    out = {}
    for node, m in by.items():
        tot, avail = m.get("node_memory_MemTotal_bytes", {}), m.get("node_memory_MemAvailable_bytes", {})
        out[node] = [(t, tot[t] - avail[t]) for t in sorted(tot) if t in avail]
    return out


def gpu_series(telemetry: dict) -> dict[tuple[str, str], list[list[float]]]:
    """(node, metric with its labels): every GPU gauge a node exported; empty on CPU-only nodes."""
    out = {}
    for s in telemetry.get("series", {}).get("gpu", []):
        labels = {k: v for k, v in s["labels"].items() if k not in ("__name__", "node", "job", "instance")}
        extra = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        out[(s["labels"].get("node"), s["labels"]["__name__"] + (f"{{{extra}}}" if extra else ""))] = s["values"]
    return out


def engine_tokens(telemetry: dict) -> list[tuple[float, float]]:
    """The engine's generated tokens per second, from its own counter."""
    for s in telemetry.get("series", {}).get("engine", []):
        if s["labels"].get("__name__") in TOKEN_COUNTERS:
            return rate(s["values"])
    return []


def health(telemetry: dict) -> dict[str, float]:
    """Per target (job/node): the fraction of the window's samples in which its scrape succeeded."""
    out = {}
    for s in telemetry.get("series", {}).get("up", []):
        vals = [v for _, v in s["values"]]
        out[f"{s['labels'].get('job')}/{s['labels'].get('node')}"] = sum(vals) / len(vals) if vals else 0.0
    return out
