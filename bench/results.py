"""The results folder: one directory per run, published whole (written as .tmp-<id>, then renamed).

  <results>/<id>/run.json            the context, the probes, every load point's figures, per-point node usage
  <results>/<id>/points/<point>/     AIPerf's own files of that point (per-request records, server metrics, log)

Pure file operations (run on the control node, or anywhere a results folder is copied to).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from onedotzero.errors import UserError

RUN_FILE = "run.json"
ID_RE = re.compile(r"^\d{8}T\d{6}Z(-[a-z0-9][a-z0-9._-]{0,40})?$")
LABEL_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,40}$")


def new_id(stamp: str, label: str | None) -> str:
    if label is not None and not LABEL_RE.match(label):
        raise UserError(f"{label!r} is not a usable run label", "lower-case letters, digits, '.', '_' or '-'")
    return f"{stamp}-{label}" if label else stamp


def staging(results: Path, run_id: str) -> Path:
    d = results / f".tmp-{run_id}"
    shutil.rmtree(d, ignore_errors=True)
    try:
        (d / "points").mkdir(parents=True)
    except OSError as e:
        raise UserError(f"cannot write runs to {results}: {e.strerror}",
                        "run as root, or give --results (or ONEDOTZERO_BENCH_RESULTS) a folder you can write") from None
    return d


def publish(tmp: Path, run: dict) -> Path:
    """Write run.json, then rename the run into place: a run is either whole in the results folder or absent."""
    (tmp / RUN_FILE).write_text(json.dumps(run, indent=1, sort_keys=True) + "\n")
    final = tmp.parent / tmp.name.removeprefix(".tmp-")
    os.rename(tmp, final)
    return final


def ids(results: Path) -> list[str]:
    if not results.is_dir():
        return []
    return sorted(p.name for p in results.iterdir() if ID_RE.match(p.name) and (p / RUN_FILE).is_file())


def resolve(results: Path, ref: str) -> Path:
    """A run by id, by a unique prefix of its id, or by its label (the newest run with that label)."""
    known = ids(results)
    if ref in known:
        return results / ref
    by_label = [i for i in known if i.split("-", 1)[-1] == ref and "-" in i]
    if by_label:
        return results / by_label[-1]
    prefixed = [i for i in known if i.startswith(ref)]
    if len(prefixed) == 1:
        return results / prefixed[0]
    if not known:
        raise UserError(f"no runs in {results}", "record one: ./cluster.py bench run")
    hint = "ambiguous: " + ", ".join(prefixed[:5]) if prefixed else "known: " + ", ".join(known[-5:])
    raise UserError(f"no run {ref!r} in {results}", hint)


SCHEMA = 1


def load(path: Path) -> dict:
    try:
        run = json.loads((path / RUN_FILE).read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path / RUN_FILE} cannot be read: {e}", "is it a results folder of `bench run`?") from None
    if not isinstance(run, dict) or run.get("schema") != SCHEMA or not {"id", "context", "points"} <= set(run):
        raise UserError(f"{path / RUN_FILE} is not a run of this version (schema {SCHEMA})",
                        "record it again with `./cluster.py bench run`")
    return run


def _best_aggregate(run: dict) -> float | None:
    tps = [p["result"].get("output_token_throughput", {}).get("avg") for p in run.get("points", [])]
    tps = [t for t in tps if t is not None]
    return max(tps) if tps else None


def list_rows(results: Path) -> list[tuple[str, ...]]:
    rows = [("RUN", "ENGINE", "MODEL", "NODES", "LINK", "POINTS", "BEST tokens/s")]
    for i in ids(results):
        try:
            run = load(results / i)
        except UserError as e:
            rows.append((i, "unreadable:", e.message[:60], "", "", "", ""))
            continue
        c = run["context"]
        best = _best_aggregate(run)
        rows.append((i, f"{c['engine']['name']} ({c['engine']['backend']})", c["model"]["ref"],
                     "+".join(c["topology"]["nodes"]), ",".join(sorted({x["kind"] for x in c["topology"]["links"]}))
                     or "-", str(len(run.get("points", []))), "-" if best is None else f"{best:.1f}"))
    return rows


# What `bench compare` puts side by side for every load point both runs measured: (label, metric, statistic).
COMPARED = (("TTFT p50 ms", "time_to_first_token", "p50"), ("ITL p50 ms", "inter_token_latency", "p50"),
            ("E2E p50 ms", "request_latency", "p50"), ("tokens/s/user", "output_token_throughput_per_user", "avg"),
            ("tokens/s", "output_token_throughput", "avg"), ("goodput req/s", "goodput", "avg"))


def compare_rows(a: dict, b: dict) -> list[tuple[str, ...]]:
    rows = [("POINT", "FIGURE", a["id"], b["id"], "DELTA")]
    bpoints = {p["name"]: p for p in b.get("points", [])}
    for pa in a.get("points", []):
        pb = bpoints.get(pa["name"])
        if pb is None:
            continue
        for label, metric, stat in COMPARED:
            va = pa["result"].get(metric, {}).get(stat)
            vb = pb["result"].get(metric, {}).get(stat)
            if va is None and vb is None:
                continue
            delta = f"{(vb - va) / va * 100:+.1f}%" if va and vb is not None else "-"
            rows.append((pa["name"], label, "-" if va is None else f"{va:.2f}", "-" if vb is None else f"{vb:.2f}",
                         delta))
    if len(rows) == 1:
        raise UserError(f"{a['id']} and {b['id']} share no load point",
                        "compare runs of the same sweep (--concurrency, --shape)")
    return rows


def context_rows(a: dict, b: dict) -> list[tuple[str, ...]]:
    """What differs between the two runs' contexts (the reason their figures may differ)."""
    def flat(d: dict, prefix: str = "") -> dict:
        out = {}
        for k, v in d.items():
            if isinstance(v, dict):
                out.update(flat(v, f"{prefix}{k}."))
            else:
                out[f"{prefix}{k}"] = json.dumps(v) if isinstance(v, list) else str(v)
        return out
    fa, fb = flat(a["context"]), flat(b["context"])
    return [("CONTEXT", a["id"], b["id"])] + [(k, fa.get(k, "-"), fb.get(k, "-")) for k in sorted(set(fa) | set(fb))
                                               if fa.get(k) != fb.get(k) and not k.startswith("started")]
