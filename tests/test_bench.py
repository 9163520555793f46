"""`cluster.py bench` without a cluster: the analysis of recorded runs (numbers derived from the data), reports
regenerated identically from stored runs, the results folder, compare, and bad input."""

from __future__ import annotations

import copy
import json

import pytest
from conftest import run_cli

from bench import analysis, loadgen, report, results
from bench.run import Sweep
from onedotzero.errors import UserError


def point(c: int, itl: float, ttft: float, tps: float, cpu: dict[str, float]) -> dict:
    return {"name": f"c{c}-p128-o64", "concurrency": c, "prompt_tokens": 128, "output_tokens": 64, "requests": 8,
            "result": {"inter_token_latency": {"unit": "ms", "p50": itl, "avg": itl},
                       "time_to_first_token": {"unit": "ms", "p50": ttft, "p99": ttft * 1.5},
                       "request_latency": {"unit": "ms", "p50": ttft + 63 * itl},
                       "output_token_throughput": {"unit": "tokens/sec", "avg": tps},
                       "output_token_throughput_per_user": {"unit": "tokens/sec/user", "avg": tps / c},
                       "usage_prompt_tokens": {"unit": "tokens", "avg": 140.0}, "goodput": {"avg": 1.0},
                       "errors": []},
            "nodes": {n: {"cpu_busy": b, "seconds": 10.0, "engine_rss": 1, "cpus": 2,
                          "links": {"10.10.0.1": {"ifname": "fab", "rx_bytes": 100, "tx_bytes": 50000}}}
                      for n, b in cpu.items()}}


def a_run(run_id: str = "20261129T060000Z-usb4", kind: str = "usb4", gbit: float = 8.0, itl: float = 20.0) -> dict:
    """A split over node2 (layers 0-3, 10 GB/s) and node3 (4-7, 5 GB/s) of a 100 MB model on the CPU backend."""
    return {
        "schema": 1, "id": run_id,
        "context": {"started": run_id[:16], "cluster": "testbed", "inventory": {"path": "x", "fingerprint": "f"},
                    "images": {}, "notes": {},
                    "engine": {"name": "llama_cpp", "version": "b1", "commit": "c", "backend": "cpu", "threads": 1,
                               "context": 2048},
                    "model": {"ref": "tiny@1", "sha256": "0" * 64, "file": "m.gguf", "bytes": 100_000_000, "layers": 8,
                              "embedding_length": 512, "weights": "MOSTLY_F16"},
                    "topology": {"head": "node2", "workers": ["node3"], "nodes": ["node2", "node3"],
                                 "layers": {"node2": [0, 4], "node3": [4, 8]}, "hardware": {},
                                 "links": [{"name": "node2-node3", "kind": kind, "ends": ["node2", "node3"],
                                            "mtu": 65520}]}},
        "sweep": {"concurrency": [1, 2], "shapes": [[128, 64]], "requests": 8, "slo": {}, "load_generator": "aiperf"},
        "probes": {"bandwidth_gbs": {"node2": 10.0, "node3": 5.0}, "spec_bandwidth_gbs": {},
                   "links": [{"name": "node2-node3", "kind": kind, "forward_gbit": gbit, "reverse_gbit": gbit + 2,
                              "rtt_ms": 0.1, "error": ""}],
                   "engine_bench": {"prompt": {"tokens_per_second": 700.0}, "generation": {"tokens_per_second": 50}},
                   "engine_bench_split": {"prompt": {"tokens_per_second": 600.0},
                                          "generation": {"tokens_per_second": 40}},
                   "round_trips": {"completion_tokens": 32, "prompt_tokens": 10, "fabric_bytes": 32 * 4000,
                                   "graph_computes": {"node3": 40}}},
        "points": [{**point(1, itl, 200.0, 1000 / itl, {"node2": 0.5, "node3": 0.4}), "window": [0.1, 5.0]},
                   {**point(2, itl * 1.2, 300.0, 1.6 * 1000 / itl, {"node2": 0.9, "node3": 0.6}),
                    "window": [5.2, 9.0]}],
        "timeline": {"interval": 1.0, "columns": ["seconds", "cpu_busy", "fabric_tx_Bps", "fabric_rx_Bps"],
                     "nodes": {n: [[t + 0.5, 0.1 * t % 1, 1000.0 * t, 500.0 * t] for t in range(10)]
                               for n in ("node2", "node3")}},
    }


def test_memory_roofline_is_each_nodes_share_at_its_bandwidth():
    mem = analysis.memory(a_run())
    assert mem["nodes"]["node2"]["ms_per_token"] == pytest.approx(5.0)  # 50 MB at 10 GB/s
    assert mem["nodes"]["node3"]["ms_per_token"] == pytest.approx(10.0)  # 50 MB at 5 GB/s
    assert mem["ms_per_token"] == pytest.approx(15.0)
    assert mem["roofline_tokens_per_second"] == pytest.approx(1000 / 15)


def test_a_gpu_backend_uses_the_spec_bandwidth():
    run = a_run()
    run["context"]["engine"]["backend"] = "vulkan"
    run["probes"]["spec_bandwidth_gbs"] = {"node2": 500.0, "node3": 500.0}
    mem = analysis.memory(run)
    assert mem["ms_per_token"] == pytest.approx(0.2)  # 100 MB at 500 GB/s
    assert mem["nodes"]["node2"]["source"].startswith("spec")


def test_the_link_cost_is_measured_bytes_and_round_trips_at_measured_rates():
    lnk = analysis.link(a_run())
    assert lnk["bytes_per_token"] == 4000
    assert lnk["round_trips_per_token"] == pytest.approx(1.25)
    assert lnk["gbit"] == 8.0  # the slower direction
    assert lnk["ms_per_token"] == pytest.approx(4000 * 8 / 8e9 * 1e3 + 1.25 * 0.1)
    assert lnk["ms_per_token_nominal"] == pytest.approx(4000 * 8 / 8e9 * 1e3 + 1.25 * 0.130)  # usb4: 65 us one way


def test_the_binding_constraint_is_the_largest_share_of_a_token():
    a = analysis.analyse(a_run())
    assert a["binding"] == "memory bandwidth"  # 15 of 20 ms
    assert a["shares"]["memory bandwidth"] == pytest.approx(0.75)
    assert a["verdict"].startswith("Binding constraint: memory bandwidth - decode takes 20.00 ms per token")
    slow = a_run(itl=100.0)
    b = analysis.analyse(slow)
    assert b["binding"] == "computation and per-token overhead"
    assert "busiest CPU node2 at 70%" in b["verdict"]  # (0.5 + 0.9) / 2
    one = a_run()
    one["context"]["topology"].update(workers=[], nodes=["node2"], layers={"node2": [0, 8]}, links=[])
    one["probes"]["round_trips"] = {}
    c = analysis.analyse(one)
    assert c["link"] == {} and "no link (one node)" in c["verdict"]
    assert c["memory"]["ms_per_token"] == pytest.approx(10.0)


def test_weights_faster_than_memory_allows_are_cache_resident_not_the_bottleneck():
    run = a_run(itl=4.0)  # 15 ms of memory time per token cannot fit in 4 ms: the weights come from caches
    a = analysis.analyse(run)
    assert a["memory"]["cache_resident"] and "memory bandwidth" not in a["shares"]
    assert a["binding"] == "computation and per-token overhead"
    assert "served from caches" in a["verdict"] and "at most 50.0 MB per node" in a["verdict"]


def test_runs_without_probes_or_tokens_get_no_verdict_rather_than_a_wrong_one():
    bare = a_run()
    bare["probes"] = {}  # --no-probes: no bandwidth, links or round trips
    a = analysis.analyse(bare)
    assert a["verdict"].startswith("No verdict: the run has no probes") and "binding" not in a
    assert a["link"] == {"kinds": ["usb4"], "measured": False}
    silent = a_run()
    silent["points"][0]["result"]["inter_token_latency"]["p50"] = 0.0
    assert analysis.analyse(silent)["verdict"].startswith("No verdict: the run has no decode measurement")
    unlogged = a_run()
    unlogged["probes"]["round_trips"]["graph_computes"] = {"node3": 0}  # debug off: nothing logged, not 0 trips
    lnk = analysis.analyse(unlogged)["link"]
    assert lnk["round_trips_per_token"] is None and "ms_per_token" not in lnk


def test_link_cost_is_only_claimed_between_runs_that_differ_in_the_link_alone():
    runs = [a_run(), a_run("20261129T061000Z-gbe", "gbe", 0.9, 25.0)]
    assert report.link_cost(runs, [analysis.analyse(r) for r in runs]).startswith("The link: gbe")
    runs[1]["context"]["model"]["sha256"] = "1" * 64  # another model: the ITL difference is not the link's
    assert report.link_cost(runs, [analysis.analyse(r) for r in runs]) is None


def test_prefill_and_scaling_come_from_the_points():
    a = analysis.analyse(a_run())
    assert a["prefill"]["tokens_per_second"] == pytest.approx(140 / 0.2)
    assert a["prefill"]["ratio"] == pytest.approx(1.0)
    assert a["scaling"]["gain"] == pytest.approx(1.6) and a["scaling"]["ideal"] == 2


def test_llama_bench_alone_and_across_the_split_give_what_the_split_adds_per_token():
    eng = analysis.analyse(a_run())["engine"]
    assert eng["alone"] == {"prompt": 700.0, "generation": 50} and eng["split"] == {"prompt": 600.0, "generation": 40}
    assert eng["split_ms_per_token"] == pytest.approx(25.0 - 20.0)
    alone = a_run()
    del alone["probes"]["engine_bench_split"]  # one node: no split to compare
    assert analysis.analyse(alone)["engine"]["split_ms_per_token"] is None
    assert "llama-bench generation: 50.0 tokens/s on the head alone, 40.0 across the split (+5.00 ms per token)" \
        in report.render([a_run()])


def test_a_report_regenerated_from_stored_runs_is_identical(tmp_path):
    runs = [a_run(), a_run("20261129T061000Z-gbe", "gbe", 0.9, 25.0)]
    for r in runs:
        d = results.staging(tmp_path, r["id"])
        results.publish(d, r)
    stored = [results.load(results.resolve(tmp_path, x)) for x in ("usb4", "gbe")]
    first, second = report.render(stored), report.render(copy.deepcopy(stored))
    assert first == second
    assert first.count("data:image/png;base64,") == 3
    last = first.rsplit("<p id=conclusion>", 1)[1]
    assert last.startswith("Binding constraint: memory bandwidth") and "The link: gbe" in last
    assert "+5.00 ms measured" in last  # 25 vs 20 ms per token
    assert "+0.032 ms from the link" in last and "158.5x what those explain" in last  # 5 / (0.1606 - 0.1290)


def test_results_are_published_whole_and_found_by_id_label_or_prefix(tmp_path):
    d = results.staging(tmp_path, "20261129T060000Z-usb4")
    assert results.ids(tmp_path) == []  # a run being written is not a run
    results.publish(d, a_run())
    assert results.ids(tmp_path) == ["20261129T060000Z-usb4"]
    assert not list(tmp_path.glob(".tmp-*"))
    for ref in ("20261129T060000Z-usb4", "usb4", "20261129T06"):
        assert results.resolve(tmp_path, ref).name == "20261129T060000Z-usb4"
    with pytest.raises(UserError, match="no run 'nope'"):
        results.resolve(tmp_path, "nope")
    with pytest.raises(UserError, match="not a usable run label"):
        results.new_id("20261129T060000Z", "Bad Label")


def test_compare_puts_each_shared_point_side_by_side_with_its_delta():
    a, b = a_run(), a_run("20261129T061000Z-gbe", "gbe", 0.9, 25.0)
    rows = results.compare_rows(a, b)
    itl = [r for r in rows if r[0] == "c1-p128-o64" and r[1] == "ITL p50 ms"][0]
    assert itl[2:] == ("20.00", "25.00", "+25.0%")
    diff = dict((r[0], r[1:]) for r in results.context_rows(a, b)[1:])
    assert diff["topology.links"][1].count("gbe") == 1
    b["points"] = []
    with pytest.raises(UserError, match="share no load point"):
        results.compare_rows(a, b)


def test_the_aiperf_command_streams_and_counts_tokens_on_the_server(tmp_path):
    argv = loadgen.command(tmp_path, "http://c:8000", "tiny", loadgen.Point(4, 128, 64, 8), tmp_path / "o",
                           {"ttft_ms": 500.0, "itl_ms": 50.0}, ["http://h:8080/metrics"], {"cache_prompt": False})
    joined = " ".join(argv)
    for part in ("--streaming", "--use-server-token-count", "--concurrency 4", "--request-count 8",
                 "--prompt-input-tokens-mean 128", "--prompt-output-tokens-mean 64",
                 '{"cache_prompt": false, "ignore_eos": true}', "--server-metrics http://h:8080/metrics"):
        assert part in joined
    assert argv[argv.index("--goodput") + 1] == "inter_token_latency:50 time_to_first_token:500"
    assert [p.name for p in Sweep((1, 2), ((16, 8), (32, 4)), requests=1).points()] == [
        "c1-p16-o8", "c2-p16-o8", "c1-p32-o4", "c2-p32-o4"]


def test_a_points_load_span_is_its_measured_requests_alone(tmp_path):
    def record(phase: str, start: float, end: float) -> str:
        return json.dumps({"metadata": {"benchmark_phase": phase, "request_start_ns": int(start * 1e9),
                                        "request_end_ns": int(end * 1e9)}, "metrics": {}})
    f = tmp_path / "profile_export.jsonl"
    f.write_text("\n".join([record("warmup", 90, 99), record("profiling", 100, 101.5), record("profiling", 100.5, 103),
                            "not json"]) + "\n")
    assert loadgen.load_span(f) == pytest.approx([100, 103])
    assert loadgen.load_span(tmp_path / "missing.jsonl") is None


def test_bench_cli_reports_from_a_results_folder_and_refuses_bad_input(tmp_path):
    for r in (a_run(), a_run("20261129T061000Z-gbe", "gbe", 0.9, 25.0)):
        results.publish(results.staging(tmp_path, r["id"]), r)
    base = ["bench", "--results", str(tmp_path)]
    listed = run_cli(*base, "list")
    assert listed.returncode == 0 and "20261129T061000Z-gbe" in listed.stdout and "usb4" in listed.stdout
    out = tmp_path / "r.html"
    made = run_cli(*base, "report", "usb4", "gbe", "-o", str(out))
    assert made.returncode == 0, made.stderr
    assert made.stdout.startswith("Binding constraint:") and out.read_text().endswith("</html>\n")
    cmp = run_cli(*base, "compare", "usb4", "gbe")
    assert cmp.returncode == 0 and "+25.0%" in cmp.stdout
    for args, message in ((("compare", "usb4", "nope"), "no run 'nope'"),
                          (("run", "--concurrency", "1,x"), "comma-separated numbers"),
                          (("run", "--shape", "12"), "PROMPT:OUTPUT"),
                          (("run", "--slo", "ttft=5"), "NAME=MILLISECONDS")):
        bad = run_cli(*base, *args)
        assert bad.returncode != 0 and message in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
    unwritable = run_cli(*base, "report", "usb4", "-o", str(tmp_path / "missing" / "r.html"))
    assert unwritable.returncode != 0 and "cannot write the report" in unwritable.stderr
    assert "Traceback" not in unwritable.stderr
    (tmp_path / "20261129T080000Z-other").mkdir()
    (tmp_path / "20261129T080000Z-other" / "run.json").write_text("[]")
    other = run_cli(*base, "report", "other")
    assert other.returncode != 0 and "not a run of this version" in other.stderr
    assert "unreadable" in run_cli(*base, "list").stdout  # one bad run does not hide the others
    (tmp_path / "20261129T070000Z-broken").mkdir()
    (tmp_path / "20261129T070000Z-broken" / "run.json").write_text("{")
    broken = run_cli(*base, "report", "broken")
    assert broken.returncode != 0 and "cannot be read" in broken.stderr and "Traceback" not in broken.stderr
    assert json.loads((tmp_path / "20261129T060000Z-usb4" / "run.json").read_text())["id"] == "20261129T060000Z-usb4"
