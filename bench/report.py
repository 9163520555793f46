"""`cluster.py bench report RUN...`: one self-contained HTML file (plots as embedded PNG, made with matplotlib) from
stored runs only. The same runs give the same bytes: no clock, no host name, PNGs without a Software stamp.

  plots     latency vs load (TTFT, ITL, end to end), throughput vs concurrency (aggregate, per user), per-node
            CPU and fabric traffic over the sweep (sampled once a second; each load point's time shaded); what
            Prometheus scraped meanwhile (CPU, memory, every NIC, the engine's tokens/s, GPU gauges where exported)
  analysis  per run: the decode time per token split into memory, link and the rest (bench/analysis.py)
  last line the binding constraint and its evidence (and, across runs on different links, what the link costs)
"""

from __future__ import annotations

import base64
import html
import io
import json

from bench import analysis
from telemetry import prometheus

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, metadata={"Software": None})
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _series(run: dict, metric: str, stat: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for p in analysis.first_shape(run):
        v = p["result"].get(metric, {}).get(stat)
        if v is not None:
            xs.append(p["concurrency"])
            ys.append(v)
    return xs, ys


def _concurrency_axis(ax, runs: list[dict], title: str) -> None:
    ax.set_title(title)
    ax.set_xlabel("concurrency")
    ax.set_xticks(sorted({p["concurrency"] for r in runs for p in r["points"]}))
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)


def _lines(plt, runs: list[dict], stat: str, size: tuple[float, float], panels: tuple[tuple[str, str], ...]) -> str:
    """One panel per (metric, title): the statistic against concurrency, a line per run."""
    fig, axes = plt.subplots(1, len(panels), figsize=size)
    for (metric, title), ax in zip(panels, axes, strict=True):
        for i, run in enumerate(runs):
            xs, ys = _series(run, metric, stat)
            ax.plot(xs, ys, "o-", color=COLORS[i % len(COLORS)], label=run["id"])
        _concurrency_axis(ax, runs, title)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def _plots(runs: list[dict]) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.hashsalt": "onedotzero", "font.size": 9})
    out = [("Latency vs load", _lines(plt, runs, "p50", (12, 3.4), (
                ("time_to_first_token", "TTFT p50 (ms)"), ("inter_token_latency", "ITL p50 (ms)"),
                ("request_latency", "end-to-end p50 (ms)")))),
           ("Throughput vs concurrency", _lines(plt, runs, "avg", (9, 3.4), (
               ("output_token_throughput", "aggregate output tokens/s"),
               ("output_token_throughput_per_user", "tokens/s per stream"))))]
    fig, axes = plt.subplots(len(runs), 2, figsize=(11, 2.6 * len(runs)), squeeze=False)
    for r, run in enumerate(runs):
        timeline = run.get("timeline", {}).get("nodes", {})
        for j, node in enumerate(sorted(timeline)):
            rows = timeline[node]
            ts = [x[0] for x in rows]
            axes[r][0].plot(ts, [x[1] * 100 for x in rows], color=COLORS[j % len(COLORS)], label=node)
            axes[r][1].plot(ts, [x[2] / 1e3 for x in rows], color=COLORS[j % len(COLORS)], label=node)
        for ax, title in zip(axes[r], ("CPU busy (% of the node's CPUs)", "fabric sent (kB/s)"), strict=True):
            for k, p in enumerate(run["points"]):  # each load point's time, shaded and named
                if "window" in p:
                    ax.axvspan(*p["window"], color="#eee" if k % 2 else "#ddd", zorder=0)
                    ax.text(p["window"][0], 1.0, p["name"], transform=ax.get_xaxis_transform(), fontsize=6,
                            va="bottom")
            ax.set_title(f"{run['id']}: {title}", fontsize=8, pad=12)
            ax.set_xlabel("seconds into the sweep")
            ax.set_ylim(bottom=0)
            ax.grid(alpha=0.3)
        if timeline:
            axes[r][0].legend(fontsize=7)
    fig.tight_layout()
    out.append(("Per-node utilisation and link traffic over the sweep", _png(fig)))
    scraped = [run for run in runs if run.get("telemetry", {}).get("series")]
    if scraped:
        out.append(("Telemetry from Prometheus over the sweep", _telemetry_plot(plt, scraped)))
    return out


def _telemetry_plot(plt, runs: list[dict]) -> str:
    """Per run: CPU busy, memory in use, every NIC's traffic, the engine's tokens/s and, where a node exports any,
    its GPU gauges; seconds from the sweep's start, one line per node (and device or gauge)."""
    gpu_any = any(prometheus.gpu_series(r["telemetry"]) for r in runs)
    titles = ["CPU busy (%)", "memory in use (GiB)", "NIC sent (kB/s)", "engine tokens/s"]
    titles += ["GPU"] if gpu_any else []
    fig, axes = plt.subplots(len(runs), len(titles), figsize=(3.1 * len(titles), 2.6 * len(runs)), squeeze=False)
    for r, run in enumerate(runs):
        t = run["telemetry"]
        t0 = t["start"]
        lines = [[(node, xs, 100) for node, xs in sorted(prometheus.cpu_busy(t).items())],
                 [(node, xs, 2 ** -30) for node, xs in sorted(prometheus.memory_used(t).items())],
                 [(f"{node} {dev}", xs, 1e-3) for (node, dev), xs in sorted(prometheus.net_rates(t).items())],
                 [("engine", prometheus.engine_tokens(t), 1)]]
        if gpu_any:
            lines.append([(f"{node} {name}", xs, 1) for (node, name), xs in sorted(prometheus.gpu_series(t).items())])
        for ax, title, series in zip(axes[r], titles, lines, strict=True):
            for j, (label, xs, scale) in enumerate(series):
                ax.plot([x[0] - t0 for x in xs], [x[1] * scale for x in xs], color=COLORS[j % len(COLORS)],
                        label=label)
            if not series or not any(xs for _, xs, _ in series):
                ax.text(0.5, 0.5, "nothing exported", ha="center", transform=ax.transAxes, fontsize=8)
            ax.set_title(f"{run['id']}: {title}", fontsize=8)
            ax.set_xlabel("seconds into the sweep")
            ax.set_ylim(bottom=0)
            ax.grid(alpha=0.3)
            if 0 < len(series) <= 6:
                ax.legend(fontsize=6)
    fig.tight_layout()
    return _png(fig)


def _telemetry_html(run: dict) -> str:
    """Per node: CPU busy (mean, peak), memory in use (peak), each NIC's peak traffic, and its GPU gauges' peaks or
    why there are none; the targets' scrape health."""
    t = run.get("telemetry")
    if not t:
        return "<p>No telemetry was recorded with this run.</p>"
    if "error" in t:
        return (f"<p>No telemetry: Prometheus at {html.escape(t['url'])} could not be read "
                f"({html.escape(t['error'])}).</p>")
    cpu, mem, net = prometheus.cpu_busy(t), prometheus.memory_used(t), prometheus.net_rates(t)
    gpu = prometheus.gpu_series(t)
    rows = [("node", "CPU busy mean %", "CPU busy peak %", "memory peak GiB", "NIC peak sent kB/s", "GPU peaks")]
    for node in run["context"]["topology"]["nodes"]:
        busy = [v for _, v in cpu.get(node, [])]
        used = [v for _, v in mem.get(node, [])]
        nics = ", ".join(f"{dev} {max((v for _, v in xs), default=0) / 1e3:.1f}"
                         for (n, dev), xs in sorted(net.items()) if n == node)
        gpus = ", ".join(f"{name} {max((v for _, v in xs), default=0):g}"
                         for (n, name), xs in sorted(gpu.items()) if n == node) or "none exported (no GPU figures)"
        rows.append((node, _fmt(sum(busy) / len(busy) * 100 if busy else None, ".0f"),
                     _fmt(max(busy) * 100 if busy else None, ".0f"), _fmt(max(used) / 2 ** 30 if used else None),
                     nics or "-", gpus))
    up = ", ".join(f"{target} {share * 100:.0f}%" for target, share in sorted(prometheus.health(t).items()))
    return (_table(rows) + f"<p>Prometheus every {t['step']:g} s; scrapes that succeeded: {html.escape(up or 'none')}"
            "</p>")


def _fmt(x, spec: str = ".2f", none: str = "-") -> str:
    return none if x is None else format(x, spec)


def _table(rows: list[tuple]) -> str:
    head, *body = rows
    th = "".join(f"<th>{html.escape(str(c))}</th>" for c in head)
    trs = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in body)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>"


def _summary_rows(runs: list[dict], found: list[dict]) -> list[tuple]:
    rows = [("run", "engine", "model", "weights", "nodes", "link", "measured Gbit/s", "RTT ms", "ITL ms (c=1)",
             "memory ms/token", "link ms/token", "roofline tokens/s", "binding")]
    for run, a in zip(runs, found, strict=True):
        c, lnk = run["context"], a["link"]
        rows.append((run["id"], f"{c['engine']['name']} {c['engine']['version']} ({c['engine']['backend']})",
                     c["model"]["ref"], c["model"]["weights"], "+".join(c["topology"]["nodes"]),
                     ",".join(lnk.get("kinds", [])) or "none", _fmt(lnk.get("gbit")), _fmt(lnk.get("rtt_ms"), ".3f"),
                     _fmt(a["itl_ms"]), _fmt(a["memory"].get("ms_per_token"), ".3f"),
                     _fmt(lnk.get("ms_per_token"), ".3f"), _fmt(a["memory"].get("roofline_tokens_per_second"), ".1f"),
                     a.get("binding", "-")))
    return rows


def _point_rows(run: dict) -> list[tuple]:
    rows = [("point", "requests", "TTFT p50", "TTFT p99", "ITL p50", "E2E p50", "tokens/s/user", "tokens/s",
             "goodput req/s", "errors")]
    for p in run["points"]:
        def g(m: str, s: str, r: dict = p["result"]) -> str:
            return _fmt(r.get(m, {}).get(s))
        rows.append((p["name"], p["requests"], g("time_to_first_token", "p50"), g("time_to_first_token", "p99"),
                     g("inter_token_latency", "p50"), g("request_latency", "p50"),
                     g("output_token_throughput_per_user", "avg"), g("output_token_throughput", "avg"),
                     g("goodput", "avg"), len(p["result"].get("errors", []))))
    return rows


def _analysis_html(run: dict, a: dict) -> str:
    pr, sc, b = a["prefill"], a["scaling"], a["busiest"]
    lines = []
    for node, v in a["memory"]["nodes"].items():
        lines.append(f"{node}: {v['layers']} layers, {v['bytes_per_token'] / 1e6:.2f} MB read per token at "
                     f"{_fmt(v['bandwidth_gbs'], '.1f')} GB/s ({v['source']}) = {_fmt(v['ms_per_token'], '.3f')} ms")
    lnk = a["link"]
    if lnk:
        lines.append(f"fabric ({', '.join(lnk['kinds'])}): {lnk['bytes_per_token'] / 1e3:.2f} kB per token, "
                     f"{_fmt(lnk['round_trips_per_token'])} blocking round trips per token, measured "
                     f"{_fmt(lnk['gbit'])} Gbit/s and {_fmt(lnk['rtt_ms'], '.3f')} ms RTT: "
                     f"{_fmt(lnk.get('ms_per_token'), '.3f')} ms per token; at the kind's nominal "
                     f"{_fmt(lnk['nominal_rtt_ms'], '.3f')} ms RTT: {_fmt(lnk.get('ms_per_token_nominal'), '.3f')} ms")
    if pr.get("tokens_per_second"):
        alone = (f"; the head alone (llama-bench): {pr['engine_alone']:.1f} tokens/s" if pr["engine_alone"]
                 else " (no llama-bench figure: llama.cpp only)")
        lines.append(f"prefill: {_fmt(pr['prompt_tokens'], '.0f')} prompt tokens in {_fmt(pr['ttft_ms'])} ms = "
                     f"{pr['tokens_per_second']:.1f} tokens/s through the endpoint{alone}")
    eng = a["engine"]
    if eng["split"]["generation"]:
        lines.append(f"llama-bench generation: {_fmt(eng['alone']['generation'], '.1f')} tokens/s on the head alone, "
                     f"{eng['split']['generation']:.1f} across the split ({_fmt(eng['split_ms_per_token'], '+.2f')} ms "
                     f"per token); prompt: {_fmt(eng['alone']['prompt'], '.1f')} alone, "
                     f"{_fmt(eng['split']['prompt'], '.1f')} across the split")
    if sc.get("gain"):
        lines.append(f"concurrency {sc['points'][0][0]} -> {sc['points'][-1][0]}: aggregate tokens/s x{sc['gain']:.2f} "
                     f"(ideal x{sc['ideal']:.0f})")
    if b:
        lines.append(f"busiest CPU over the sweep: {b[0]}, {b[1] * 100:.0f}% of its CPUs")
    items = "".join(f"<li>{html.escape(x)}</li>" for x in lines)
    return f"<ul>{items}</ul><p class=verdict>{html.escape(a['verdict'])}</p>"


def _same_but_link(run: dict) -> str:
    """What must be equal for two runs' difference to be the link's: engine, model, nodes and their layers."""
    c = run["context"]
    return json.dumps([c["engine"], c["model"]["sha256"], c["topology"]["nodes"], c["topology"]["layers"],
                       run["sweep"]["shapes"]], sort_keys=True)


def link_cost(runs: list[dict], found: list[dict]) -> str | None:
    """Across runs that differ only in the link kind: what the slower link costs per token (measured ITL)."""
    keyed = {}
    for run, a in zip(runs, found, strict=True):
        kinds = tuple(a["link"].get("kinds", []))
        if kinds and a["itl_ms"] and a["link"].get("measured"):
            keyed.setdefault(kinds, (run, a))
    same = {_same_but_link(r) for r, _ in keyed.values()}
    if len(keyed) < 2 or len(same) > 1:
        return None
    (ka, (ra, aa)), (kb, (rb, ab)) = sorted(keyed.items(), key=lambda kv: kv[1][1]["link"].get("gbit") or 0)[:2]
    d = aa["itl_ms"] - ab["itl_ms"]
    est = (aa["link"].get("ms_per_token") or 0) - (ab["link"].get("ms_per_token") or 0)
    line = (f"The link: {','.join(ka)} ({ra['id']}) vs {','.join(kb)} ({rb['id']}): decode {aa['itl_ms']:.2f} vs "
            f"{ab['itl_ms']:.2f} ms per token ({d:+.2f} ms measured; {est:+.3f} ms from the link's bytes and round "
            f"trips at the measured rates).")
    if est > 0 and d / est >= 2:
        line += (f" The measured difference is {d / est:.1f}x what those explain: the rest is not in an idle link's "
                 f"rate and RTT (queueing on the link under load, or run-to-run noise: repeat the runs).")
    return line


def render(runs: list[dict]) -> str:
    found = [analysis.analyse(r) for r in runs]
    parts = ["<!doctype html><html><head><meta charset=utf-8><title>onedotzero bench report</title><style>",
             "body{font-family:sans-serif;margin:1.5em;max-width:1200px}table{border-collapse:collapse;font-size:12px;"
             "margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}th{background:#eee}"
             "td:first-child{text-align:left}.verdict{font-weight:bold}pre{font-size:11px;background:#f6f6f6}"
             "#conclusion{font-size:15px;font-weight:bold;border-top:2px solid #333;padding-top:.5em}</style></head>",
             f"<body><h1>onedotzero bench report</h1><p>runs: {html.escape(', '.join(r['id'] for r in runs))}</p>",
             "<h2>Summary</h2>", _table(_summary_rows(runs, found))]
    for title, src in _plots(runs):
        parts.append(f"<h2>{html.escape(title)}</h2><img alt='{html.escape(title)}' src='{src}'>")
    for run, a in zip(runs, found, strict=True):
        parts += [f"<h2>Run {html.escape(run['id'])}</h2>", _table(_point_rows(run)), "<h3>Analysis</h3>",
                  _analysis_html(run, a), "<h3>Telemetry</h3>", _telemetry_html(run),
                  "<details><summary>context</summary><pre>",
                  html.escape(json.dumps(run["context"], indent=1, sort_keys=True)), "</pre></details>"]
    parts.append(f"<p id=conclusion>{html.escape(conclusion(runs, found))}</p></body></html>\n")
    return "".join(parts)


def conclusion(runs: list[dict], found: list[dict]) -> str:
    """The report's last line: the binding constraint with its evidence (per run when there are several)."""
    cost = link_cost(runs, found)
    if len(runs) == 1:
        return found[0]["verdict"]
    per = "; ".join(f"{r['id']}: {a.get('binding', 'no verdict')}" for r, a in zip(runs, found, strict=True))
    return f"{found[-1]['verdict']} Across runs: {per}." + (f" {cost}" if cost else "")
