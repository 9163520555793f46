"""Telemetry without a cluster: the GPU metrics converter on intel_gpu_top's JSON, the rendered Prometheus config
checked by Prometheus's own promtool, and the figures a report derives from stored series."""

from __future__ import annotations

import copy
import importlib.machinery
import importlib.util
import io
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO
from test_bench import a_run

from bench import report, results
from netboot import render
from onedotzero import inventory, yamlfile
from telemetry import prometheus

CONVERTER = REPO / "playbooks/roles/intel_arc/files/onedotzero-gpu-metrics"
PROMTOOL = Path("/var/cache/onedotzero/tools/prometheus/usr/bin/promtool")  # `make setup` unpacks it
# intel_gpu_top -J (IGT 1.27) as it streams: an array that never closes, objects separated by commas.
STREAM = """[
{
\t"period": {"duration": 1000.1, "unit": "ms"},
\t"frequency": {"requested": 2100.0, "actual": 2050.0, "unit": "MHz"},
\t"interrupts": {"count": 10.0, "unit": "irq/s"},
\t"rc6": {"value": 12.5, "unit": "%"},
\t"power": {"GPU": 180.25, "Package": 40.0, "unit": "W"},
\t"engines": {
\t\t"Render/3D": {"busy": 87.5, "sema": 0.0, "wait": 0.0, "unit": "%"},
\t\t"Compute": {"busy": 99.0, "sema": 0.0, "wait": 0.0, "unit": "%"}
\t}
},
{
\t"period": {"duration": 1000.0, "unit": "ms"},
\t"rc6": {"value": 100.0, "unit": "%"},
\t"engines": {"Compute": {"busy": 0.0, "sema": 0.0, "wait": 0.0, "unit": "%"}}
}"""


def converter():
    loader = importlib.machinery.SourceFileLoader("gpu_metrics", str(CONVERTER))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader("gpu_metrics", loader))
    loader.exec_module(module)
    return module


def test_intel_gpu_tops_stream_becomes_one_metrics_file_per_sample():
    conv = converter()
    samples = list(conv.samples(io.StringIO(STREAM)))
    assert len(samples) == 2 and samples[1]["rc6"]["value"] == 100.0
    text = conv.metrics(samples[0])
    assert 'onedotzero_gpu_engine_busy_percent{engine="Compute"} 99\n' in text
    assert 'onedotzero_gpu_engine_busy_percent{engine="Render/3D"} 87.5\n' in text
    assert 'onedotzero_gpu_frequency_mhz{kind="actual"} 2050\n' in text
    assert 'onedotzero_gpu_power_watts{domain="GPU"} 180.25\n' in text and "unit" not in text.replace("# ", "")
    assert "onedotzero_gpu_rc6_percent 12.5\n" in text
    assert "frequency" not in conv.metrics(samples[1]), "a sample without a section exports none of it"


def test_the_metrics_file_follows_the_tool_and_goes_with_it(tmp_path):
    """Run as its unit runs it (a stand-in prints the stream, then waits like the real tool): each sample replaces the
    file whole; on systemd's SIGTERM the file is removed, so no stale figure outlives intel_gpu_top."""
    out = tmp_path / "intel_gpu.prom"
    fake = tmp_path / "stream.json"
    fake.write_text(STREAM + ",\n")
    proc = subprocess.Popen([sys.executable, str(CONVERTER), str(out), "sh", "-c", f"cat {fake}; exec sleep 60"])
    try:
        deadline = time.monotonic() + 10
        while "rc6_percent 100" not in (out.read_text() if out.exists() else "") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "onedotzero_gpu_rc6_percent 100\n" in out.read_text(), "the second sample replaced the first"
        assert not (tmp_path / "intel_gpu.prom.tmp").exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
    assert not out.exists()


@pytest.mark.parametrize("api_key", [False, True])
def test_the_rendered_prometheus_config_passes_promtool(tmp_path, api_key):
    promtool = shutil.which("promtool") or (str(PROMTOOL) if PROMTOOL.is_file() else None)
    if promtool is None:
        pytest.skip("no promtool: `sudo make setup` unpacks Debian's prometheus")
    data = yamlfile.load(REPO / "tests/data/inventory.yml")
    if api_key:
        (tmp_path / "api.key").write_text("secret\n")
        data["inference"]["api_key_file"] = str(tmp_path / "api.key")
    src = tmp_path / "cluster.yml"
    src.write_text(yaml.safe_dump(yamlfile.plain(data)))
    inv = inventory.parse(yamlfile.load(src), src)
    config = tmp_path / "prometheus.yml"
    config.write_text(render.service_files(inv)["etc/prometheus/prometheus.yml"])
    r = subprocess.run([promtool, "check", "config", str(config)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert ("credentials_file: " + str(tmp_path / "api.key") in config.read_text()) == api_key


def series(name: str, node: str, values: list[tuple[float, float]], **labels) -> dict:
    return {"labels": {"__name__": name, "node": node, **labels}, "values": [list(v) for v in values]}


def telemetry(gpu: bool = False) -> dict:
    """Stored telemetry of a run: node2 busy half the time, sending 1 kB/s on its fabric port, 16 tokens/s."""
    ts = [1000.0, 1002.0, 1004.0]
    cpu = [{"labels": {"node": n, "mode": "idle"}, "values": [[t, 100 + i] for i, t in enumerate(ts)]}
           for n in ("node2", "node3")]
    cpu += [{"labels": {"node": "node2", "mode": "user"}, "values": [[t, 50 + i] for i, t in enumerate(ts)]},
            {"labels": {"node": "node3", "mode": "user"}, "values": [[t, 50.0] for t in ts]}]
    out = {"url": "http://192.168.1.1:9090", "start": 1000.0, "end": 1004.0, "step": 2, "series": {
        "cpu": cpu,
        "memory": [series("node_memory_MemTotal_bytes", "node2", [(t, 8 << 30) for t in ts]),
                   series("node_memory_MemAvailable_bytes", "node2", [(t, 6 << 30) for t in ts])],
        "net": [series("node_network_transmit_bytes_total", "node2", [(t, 2000 + 1000 * (t - 1000)) for t in ts],
                       device="fab-node3"),
                series("node_network_receive_bytes_total", "node2", [(t, 5.0) for t in ts], device="fab-node3")],
        "gpu": [series("onedotzero_gpu_engine_busy_percent", "node2", [(t, 90.0) for t in ts], engine="Compute")]
        if gpu else [],
        "engine": [series("llamacpp:tokens_predicted_total", "node2", [(1000.0, 0), (1002.0, 32), (1004.0, 64)])],
        "up": [{"labels": {"__name__": "up", "job": "node", "node": "node2"}, "values": [[t, 1] for t in ts]},
               {"labels": {"__name__": "up", "job": "engine", "node": "node2"}, "values": [[1000.0, 0], [1002, 1]]}],
    }}
    return out


def test_the_reports_figures_come_from_the_stored_series():
    t = telemetry()
    assert prometheus.cpu_busy(t) == {"node2": [(1002.0, 0.5), (1004.0, 0.5)], "node3": [(1002.0, 0.0), (1004.0, 0.0)]}
    assert prometheus.net_rates(t) == {("node2", "fab-node3"): [(1002.0, 1000.0), (1004.0, 1000.0)]}
    assert prometheus.memory_used(t)["node2"][0] == (1000.0, 2 << 30)
    assert prometheus.engine_tokens(t) == [(1002.0, 16.0), (1004.0, 16.0)]
    assert prometheus.health(t) == {"node/node2": 1.0, "engine/node2": 0.5}
    assert prometheus.gpu_series(t) == {}
    assert prometheus.gpu_series(telemetry(gpu=True)) == {
        ("node2", "onedotzero_gpu_engine_busy_percent{engine=Compute}"): [[t, 90.0] for t in (1000.0, 1002.0, 1004.0)]}
    assert prometheus.rate([[0, 10], [1, 5], [2, 7]]) == [(2, 2.0)], "a counter reset is skipped, not negative"


def test_a_report_shows_telemetry_and_says_when_there_is_none(tmp_path):
    runs = [a_run(), a_run("20261129T061000Z-gbe", "gbe", 0.9, 25.0), a_run("20261129T062000Z-x", "usb4", 1, 20)]
    runs[0]["telemetry"] = telemetry()
    runs[1]["telemetry"] = telemetry(gpu=True)
    runs[2]["telemetry"] = {"url": "http://192.168.1.1:9090", "start": 0, "end": 1, "step": 2,
                            "error": "ConnectionError: refused"}
    for r in runs:
        results.publish(results.staging(tmp_path, r["id"]), r)
    stored = [results.load(results.resolve(tmp_path, r["id"])) for r in runs]
    page = report.render(stored)
    assert page == report.render(copy.deepcopy(stored)), "regenerated from stored runs: identical"
    assert page.count("data:image/png;base64,") == 4 and "Telemetry from Prometheus over the sweep" in page
    first = page.split("<h2>Run ")[1]
    assert "<td>node2</td><td>50</td><td>50</td><td>2.00</td><td>fab-node3 1.0</td>" in first
    assert "none exported (no GPU figures)" in first and "engine/node2 50%" in first
    assert "onedotzero_gpu_engine_busy_percent{engine=Compute} 90" in page.split("<h2>Run ")[2]
    assert "could not be read (ConnectionError: refused)" in page.split("<h2>Run ")[3]
