"""The bottleneck analysis of one recorded run: its measurements against physical limits (pure: reads run.json's
data only, so a report regenerated from a stored run says the same).

Decode, one stream (the sweep's lowest concurrency, first shape): the time per token (ITL p50) split into
  memory   the weights each token reads, at each node's memory bandwidth, node after node (a layer split runs
           its nodes in turn): sum over nodes of (its share of the layers x model bytes / bandwidth). Bandwidth is
           the GPU's spec where the engine runs on a GPU, else the node's measured STREAM-like copy rate.
  link     the bytes each token moved across the fabric and the blocking round trips it waited for (both
           measured on one request of known length), at the link's measured throughput and round-trip time;
           also at the link kind's nominal one-way latency (what the real cable adds: the virtual cluster's
           veth cannot add delay)
  rest     what neither explains: computation and per-token software overhead (sampling, HTTP, scheduling)
The largest part is the binding constraint. Prefill is compared with llama-bench's prompt rate on the head
alone (compute-bound on every backend), and concurrency scaling with the single stream.
"""

from __future__ import annotations

from onedotzero import profiles

MB = 1e6


def first_shape(run: dict) -> list[dict]:
    """The load points of the sweep's first (prompt, output) shape, by concurrency: what the analysis and the
    plots compare."""
    pts = run.get("points", [])
    if not pts:
        return []
    first = (pts[0]["prompt_tokens"], pts[0]["output_tokens"])
    return sorted((p for p in pts if (p["prompt_tokens"], p["output_tokens"]) == first),
                  key=lambda p: p["concurrency"])


def _point(run: dict) -> dict | None:
    """The single-stream point: lowest concurrency of the first shape."""
    return next(iter(first_shape(run)), None)


def _stat(point: dict | None, metric: str, stat: str = "p50") -> float | None:
    if point is None:
        return None
    return point["result"].get(metric, {}).get(stat)


def memory(run: dict) -> dict:
    """Per node: layers held, bytes read per token, the bandwidth used and where it comes from, the time."""
    ctx, pr = run["context"], run.get("probes", {})
    total_layers = ctx["model"]["layers"] or 1
    size = ctx["model"]["bytes"]
    gpu = ctx["engine"]["backend"] != "cpu"
    nodes = {}
    for node, (first, last) in ctx["topology"]["layers"].items():
        share = (last - first) / total_layers
        spec = pr.get("spec_bandwidth_gbs", {}).get(node)
        measured = pr.get("bandwidth_gbs", {}).get(node)
        bw, source = (spec, "spec (GPU memory)") if gpu and spec else (measured, "measured (CPU copy)")
        read = share * size
        nodes[node] = {"layers": last - first, "bytes_per_token": read, "bandwidth_gbs": bw, "source": source,
                       "ms_per_token": (read / (bw * 1e9) * 1e3) if bw else None}
    times = [v["ms_per_token"] for v in nodes.values()]
    total = sum(times) if times and all(t is not None for t in times) else None
    return {"nodes": nodes, "ms_per_token": total, "roofline_tokens_per_second": (1e3 / total) if total else None}


def link(run: dict) -> dict:
    """The fabric's cost per generated token, from the measured bytes and round trips of one request."""
    ctx, pr = run["context"], run.get("probes", {})
    trips = pr.get("round_trips") or {}
    tokens = trips.get("completion_tokens")
    if not ctx["topology"]["workers"]:
        return {}
    kinds = sorted({x["kind"] for x in ctx["topology"]["links"]})
    if not tokens:
        return {"kinds": kinds, "measured": False}
    links = [x for x in pr.get("links", []) if x.get("forward_gbit") and x.get("reverse_gbit")]
    gbit = min((min(x["forward_gbit"], x["reverse_gbit"]) for x in links), default=None)
    rtt = max((x["rtt_ms"] for x in links if x.get("rtt_ms") is not None), default=None)
    nominal_rtt = max((2 * profiles.link_kind(k).latency_us / 1e3 for k in kinds), default=None)
    per_token = trips["fabric_bytes"] / tokens
    computes = trips.get("graph_computes")
    # none logged (inference.debug off when the engine started) is "not known", not zero round trips
    round_trips = sum(computes.values()) / tokens if computes and sum(computes.values()) else None
    transfer = per_token * 8 / (gbit * 1e9) * 1e3 if gbit else None
    out = {"kinds": kinds, "measured": True, "bytes_per_token": per_token, "gbit": gbit, "rtt_ms": rtt,
           "nominal_rtt_ms": nominal_rtt, "round_trips_per_token": round_trips, "transfer_ms": transfer}
    if transfer is not None and round_trips is not None and rtt is not None:
        out["ms_per_token"] = transfer + round_trips * rtt
        if nominal_rtt is not None:
            out["ms_per_token_nominal"] = transfer + round_trips * nominal_rtt
    return out


def prefill(run: dict) -> dict:
    p = _point(run)
    ttft, prompt = _stat(p, "time_to_first_token"), _stat(p, "usage_prompt_tokens", "avg")
    measured = prompt / (ttft / 1e3) if ttft and prompt else None
    eb = (run.get("probes", {}).get("engine_bench") or {}).get("prompt") or {}
    alone = eb.get("tokens_per_second")
    return {"ttft_ms": ttft, "prompt_tokens": prompt, "tokens_per_second": measured, "engine_alone": alone,
            "ratio": (measured / alone) if measured and alone else None}


def scaling(run: dict) -> dict:
    same = first_shape(run)
    if not same:
        return {}
    tps = [(q["concurrency"], q["result"].get("output_token_throughput", {}).get("avg")) for q in same]
    tps = [(c, t) for c, t in tps if t]
    if len(tps) < 2:
        return {"points": tps}
    (c0, t0), (c1, t1) = tps[0], tps[-1]
    return {"points": tps, "gain": t1 / t0, "ideal": c1 / c0}


def busiest(run: dict) -> tuple[str, float] | None:
    """The node whose CPU was busiest over the sweep (share of all its CPUs), and that share."""
    shares: dict[str, list[float]] = {}
    for p in run.get("points", []):
        for node, u in p.get("nodes", {}).items():
            shares.setdefault(node, []).append(u["cpu_busy"])
    if not shares:
        return None
    node = max(shares, key=lambda n: sum(shares[n]) / len(shares[n]))
    return node, sum(shares[node]) / len(shares[node])


def engine_levels(run: dict) -> dict:
    """llama-bench's tokens/s on the head alone and across the split, and the time per generated token the split
    adds at the engine level (no HTTP, no server scheduling: the workers' share and the hand-offs over the link)."""
    probes = run.get("probes", {})

    def rates(bench: dict | None) -> dict:
        return {k: ((bench or {}).get(k) or {}).get("tokens_per_second") for k in ("prompt", "generation")}

    out = {"name": run.get("context", {}).get("engine", {}).get("name"), "alone": rates(probes.get("engine_bench")),
           "split": rates(probes.get("engine_bench_split"))}
    g1, g2 = out["alone"]["generation"], out["split"]["generation"]
    out["split_ms_per_token"] = 1e3 / g2 - 1e3 / g1 if g1 and g2 else None
    return out


def analyse(run: dict) -> dict:
    p = _point(run)
    itl = _stat(p, "inter_token_latency")
    mem, lnk = memory(run), link(run)
    out = {"itl_ms": itl, "concurrency": p["concurrency"] if p else None, "memory": mem, "link": lnk,
           "prefill": prefill(run), "scaling": scaling(run), "busiest": busiest(run), "engine": engine_levels(run)}
    if not itl:
        out["verdict"] = "No verdict: the run has no decode measurement (no streamed tokens)."
        return out
    mem_ms = mem.get("ms_per_token")
    if mem_ms is None or lnk.get("measured") is False:
        out["verdict"] = ("No verdict: the run has no probes (memory bandwidth, the link's bytes and round trips); "
                          "record one without --no-probes.")
        return out
    known = {}
    if mem_ms is not None and mem_ms > itl:
        # faster than reading the weights from DRAM allows: they come from the CPU's caches (a small model)
        mem["cache_resident"] = True
    elif mem_ms is not None:
        known["memory bandwidth"] = mem_ms
    if lnk.get("ms_per_token") is not None:
        known["the fabric link"] = lnk["ms_per_token"]
    rest = max(itl - sum(known.values()), 0.0)
    shares = {**known, "computation and per-token overhead": rest}
    # estimates that add up to more than the measured time overlap: shares are of their sum then
    out["shares"] = {k: v / max(itl, sum(known.values())) for k, v in shares.items()}
    binding = max(shares, key=lambda k: shares[k])
    out["binding"] = binding
    out["verdict"] = _verdict(binding, itl, out)
    return out


def _pct(x: float | None, whole: float) -> str:
    return "?" if x is None else f"{x / whole * 100:.0f}%"


def _verdict(binding: str, itl: float, a: dict) -> str:
    mem, lnk = a["memory"], a["link"]
    mem_ms = mem.get("ms_per_token")
    bws = ", ".join(f"{n} {v['bandwidth_gbs']:.1f} GB/s {v['source'].split()[0]}"
                    for n, v in mem["nodes"].items() if v["bandwidth_gbs"])
    weights = sum(v["bytes_per_token"] for v in mem["nodes"].values()) / MB
    if not mem_ms:
        evidence_mem = "memory bandwidth was not measured"
    elif mem.get("cache_resident"):
        largest = max(v["bytes_per_token"] for v in mem["nodes"].values()) / MB
        evidence_mem = (f"reading the weights ({weights:.1f} MB per token) from memory at {bws} would take "
                        f"{mem_ms:.3f} ms, more than the whole token: at most {largest:.1f} MB per node, they are "
                        f"served from caches, so memory bandwidth does not limit this model here")
    else:
        evidence_mem = (f"reading the weights ({weights:.1f} MB per token at {bws}) takes {mem_ms:.3f} ms, "
                        f"{_pct(mem_ms, itl)}")
    if lnk.get("ms_per_token") is not None:
        evidence_link = (f"the link ({lnk['bytes_per_token'] / 1e3:.1f} kB and {lnk['round_trips_per_token']:.2f} "
                         f"blocking round trips per token at {lnk['gbit']:.2f} Gbit/s and {lnk['rtt_ms']:.3f} ms RTT) "
                         f"{lnk['ms_per_token']:.3f} ms, {_pct(lnk['ms_per_token'], itl)}")
    elif lnk:
        why = ("inference.debug is off" if a["engine"]["name"] == "llama_cpp"
               else "only llama.cpp's RPC workers log their computations")
        evidence_link = (f"the link carried {lnk['bytes_per_token'] / 1e3:.1f} kB per token (round trips not counted: "
                         f"{why})")
    else:
        evidence_link = "no link (one node)"
    head = f"decode takes {itl:.2f} ms per token at concurrency {a['concurrency']}: {evidence_mem}; {evidence_link}"
    if binding == "computation and per-token overhead":
        b = a["busiest"]
        where = f"; busiest CPU {b[0]} at {b[1] * 100:.0f}%" if b else ""
        return (f"Binding constraint: computation and per-token overhead, not memory bandwidth or the link - {head}; "
                f"the remaining {a['shares'][binding] * itl:.2f} ms ({a['shares'][binding] * 100:.0f}%) is neither"
                f"{where}.")
    return f"Binding constraint: {binding} - {head}."
