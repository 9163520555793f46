"""Clustered inference in the virtual cluster: llama.cpp built by the toolkit (its cached artefact, in the
container nodes' image), a small generated model imported and pushed onto the nodes' /models, split across
node2 (head) and node3 (an RPC worker over the fabric cable), served by the control node's nginx at /v1/ with a
chat page at /chat/, reachable from a workstation network while the engines' own ports are not.

One cluster serves every test here, `cluster.py bench` included (runs over the usb4 cable, the same cable
shaped to gbe, and the head alone; one report of the three). Answers are gibberish (random weights): the
mechanics are what is tested.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO, boot_session_images, needs_root, run_cli, running

from onedotzero import inventory, profiles, ssh
from telemetry import prometheus
from testbed.bed import Testbed
from testbed.links import shape
from testbed.tiny_model import write_gguf, write_hf

pytestmark = [pytest.mark.integration, needs_root("systemd-nspawn", "nft", "chromium", "chromedriver")]
NODES = ("node2", "node3")
WS = ("172.31.0.1", "172.31.0.2")  # the control node's address on the workstation network, and the laptop's
ARTIFACTS = REPO / "test-artifacts"


def in_ns(bed: Testbed, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return run_cli("-i", str(bed.inv.path), *args, netns=bed.ns, timeout=timeout)


def on(bed: Testbed, node: str, command: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(bed.ns_argv(ssh.argv(bed.inv, bed.inv.node(node), command)), capture_output=True,
                          text=True, timeout=timeout)


def endpoint(bed: Testbed, path: str) -> str:
    return f"http://{bed.inv.control.address}:{bed.inv.inference.port}{path}"


def ns_python(bed: Testbed, code: str, *args: str, ns: str | None = None, timeout: float = 120) -> str:
    proc = subprocess.run(["ip", "netns", "exec", ns or bed.ns, sys.executable, "-c", code, *args],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


STREAM = """
import json, sys, requests
r = requests.post(sys.argv[1], json={"messages": [{"role": "user", "content": "hello cluster"}], "stream": True,
                                      "max_tokens": 24, "seed": 7, "temperature": 0}, stream=True, timeout=300)
chunks = [line for line in r.iter_lines(decode_unicode=True) if line.startswith("data:")]
print(json.dumps({"status": r.status_code, "type": r.headers.get("content-type"), "chunks": chunks}))
"""


@pytest.fixture(scope="module")
def bed(golden_build, workdir):
    """The virtual cluster's container nodes up, the tiny model imported and pushed, inference up."""
    inv = inventory.load(golden_build["inventory"])
    tb = Testbed(inv, f"n{os.getpid() % 100000}")
    boot_session_images(inv.path, golden_build, NODES)
    model = write_gguf(workdir / "tiny-chat.gguf")
    with running(tb):
        steps = [("compute", "up", "--timeout", "120", *NODES), ("models", "import", str(model), "--name", "tiny-chat"),
                 ("models", "push", "tiny-chat", *NODES), ("inference", "up", "--timeout", "300")]
        for args in steps:
            proc = in_ns(tb, *args)
            assert proc.returncode == 0, f"{args}: {proc.stdout}{proc.stderr}{tb.diagnostics()}"
        yield tb


def test_a_streamed_completion_through_the_control_node(bed):
    out = json.loads(ns_python(bed, STREAM, endpoint(bed, "/v1/chat/completions")))
    assert out["status"] == 200 and out["type"].startswith("text/event-stream")
    assert out["chunks"][-1] == "data: [DONE]" and len(out["chunks"]) > 3, "token by token, through nginx"
    # llama-server's first and last deltas carry "content": null (the role, the finish reason)
    pieces = [json.loads(c[5:])["choices"][0]["delta"].get("content") or "" for c in out["chunks"][:-1]
              if json.loads(c[5:]).get("choices")]
    assert "".join(pieces), "an answer (gibberish: random weights)"


def test_the_model_is_split_and_both_nodes_compute(bed):
    status = in_ns(bed, "inference", "status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert re.search(r"^node2\s+head\s+onedotzero-llama-server\s+active\s+0-3 \(4\)\s+checksum ok", status.stdout,
                     re.M), status.stdout
    assert re.search(r"^node3\s+worker\s+onedotzero-rpc-server\s+active\s+4-7 \(4\)\s+[\d.]+ MiB of weights",
                     status.stdout, re.M), status.stdout
    computed = "sudo journalctl -u onedotzero-rpc-server -b -o cat | grep -c -E 'graph_(re)?compute'"
    before = on(bed, "node3", computed).stdout
    ns_python(bed, STREAM, endpoint(bed, "/v1/chat/completions"))
    after = on(bed, "node3", computed).stdout
    assert int(after) > int(before or 0), "node3's worker computed its layers for that request"
    head_log = on(bed, "node2", "sudo journalctl -u onedotzero-llama-server -b -o cat").stdout
    assert re.search(r"RPC0\[10\.10\.0\.253:50052\] model buffer size", head_log), "the worker over the fabric"
    again = in_ns(bed, "inference", "status").stdout
    assert re.search(r"health ok, last request [\d.]+ tokens/s", again), again


def test_cluster_chat_streams_an_answer(bed):
    proc = in_ns(bed, "chat", "What does a fabric link carry?", "--max-tokens", "16")
    assert proc.returncode == 0, proc.stderr
    # Random weights may answer in whitespace alone: the streamed pieces are the evidence, not the text's look.
    pieces = re.search(r"\((\d+) pieces in [\d.]+s, first token after [\d.]+s\)", proc.stderr)
    assert proc.stdout and pieces and int(pieces.group(1)) > 0, (proc.stdout, proc.stderr)


@pytest.fixture
def workstation(bed):
    """A laptop on the control node's other network: a namespace behind a veth, routed via the control node."""
    ns = f"{bed.ns}-ws"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        for argv in (["ip", "link", "add", "wsa", "type", "veth", "peer", "name", "wsb"],
                     ["ip", "link", "set", "wsa", "netns", ns], ["ip", "link", "set", "wsb", "netns", bed.ns],
                     ["ip", "-n", ns, "addr", "add", f"{WS[1]}/24", "dev", "wsa"],
                     ["ip", "-n", bed.ns, "addr", "add", f"{WS[0]}/24", "dev", "wsb"],
                     ["ip", "-n", ns, "link", "set", "wsa", "up"], ["ip", "-n", ns, "link", "set", "lo", "up"],
                     ["ip", "-n", bed.ns, "link", "set", "wsb", "up"],
                     ["ip", "-n", ns, "route", "add", "default", "via", WS[0]]):
            subprocess.run(argv, check=True)
        yield ns
    finally:
        subprocess.run(["ip", "netns", "delete", ns], capture_output=True)


REACH = """
import socket, sys
for target in sys.argv[1:]:
    host, port = target.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
        print(target, "open")
    except OSError as e:
        print(target, type(e).__name__)
"""


def test_the_endpoint_reaches_a_workstation_and_the_engines_ports_do_not(bed, workstation):
    head, worker = bed.inv.node("node2"), bed.inv.fabric.address("node3")
    s = bed.inv.inference
    out = ns_python(bed, REACH, f"{WS[0]}:{s.port}", f"{head.ip}:{s.engine_port}", f"{worker}:{s.rpc_port}",
                    ns=workstation)
    lines = dict(line.split(" ", 1) for line in out.strip().splitlines())
    assert lines[f"{WS[0]}:{s.port}"] == "open", "the control node's endpoint, from the workstation network"
    assert lines[f"{head.ip}:{s.engine_port}"] != "open", "the head's server: cluster network only"
    assert lines[f"{worker}:{s.rpc_port}"] != "open", "the RPC worker: fabric only"
    reply = ns_python(bed, "import requests, sys; print(requests.get(sys.argv[1], timeout=10).json()['data'][0]['id'])",
                      f"http://{WS[0]}:{s.port}/v1/models", ns=workstation)
    assert "tiny-chat" in reply
    # and it is the firewall that stops it: the control node does route for its nodes
    counters = subprocess.run(["ip", "netns", "exec", bed.ns, "nft", "list", "table", "inet", "onedotzero"],
                              capture_output=True, text=True).stdout
    assert re.search(r"counter packets [1-9]", counters), counters


CHAT_PAGE = """
import sys
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

url, artifacts = sys.argv[1], sys.argv[2]
opts = webdriver.ChromeOptions()
opts.binary_location = "/usr/bin/chromium"
for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--window-size=1100,800", f"--user-data-dir={artifacts}/chromium-profile"):
    opts.add_argument(arg)
driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
try:
    driver.get(url)
    WebDriverWait(driver, 30).until(lambda d: "tiny-chat" in d.find_element(By.ID, "model").text)
    driver.find_element(By.ID, "question").send_keys("Hello, cluster: who answers?")
    driver.find_element(By.ID, "send").click()
    answer = WebDriverWait(driver, 300).until(
        lambda d: next((e for e in d.find_elements(By.CSS_SELECTOR, ".assistant[data-state=done]")), None))
    driver.save_screenshot(f"{artifacts}/chat-page.png")
    print(answer.text.strip())
finally:
    driver.quit()
"""


def test_the_chat_page_answers_in_a_browser(bed):
    """Headless Chromium and its driver both run in the control node's namespace, where the page is served
    (selenium talks to chromedriver over loopback, so the client must be there too)."""
    ARTIFACTS.mkdir(exist_ok=True)
    answer = ns_python(bed, CHAT_PAGE, endpoint(bed, "/"), str(ARTIFACTS), timeout=400)
    assert answer.strip(), "an answer in the page"
    shot = ARTIFACTS / "chat-page.png"
    print(f"screenshot: {shot}")
    assert shot.stat().st_size > 10_000


def test_a_dead_worker_is_named_and_recovers(bed):
    assert on(bed, "node3", "sudo systemctl stop onedotzero-rpc-server").returncode == 0
    try:
        status = in_ns(bed, "inference", "status")
        assert status.returncode == 1
        assert "node3 (worker):" in status.stderr and "inactive" in status.stderr, status.stderr
    finally:
        assert on(bed, "node3", "sudo systemctl start onedotzero-rpc-server").returncode == 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # the head reconnects to its worker on the next request
        try:
            out = json.loads(ns_python(bed, STREAM, endpoint(bed, "/v1/chat/completions")))
            if out["status"] == 200:
                break
        except AssertionError:
            pass
        time.sleep(3)
    assert in_ns(bed, "inference", "status").returncode == 0


def test_a_second_push_moves_nothing(bed):
    proc = in_ns(bed, "models", "push", "tiny-chat", *NODES)
    assert proc.returncode == 0, proc.stderr
    assert "plan none: nothing to move" in proc.stdout
    assert all(re.search(rf"^{n}\s+already there\s+0\.0 MiB", proc.stdout, re.M) for n in NODES), proc.stdout


def test_a_damaged_copy_is_found_and_copied_again(bed):
    """Bit rot on a node's disk (content changed, size and time kept, so rsync's quick check cannot see it):
    `models status --verify` names it, the next push finds it by checksum and copies that file again."""
    rot = ("f=$(ls /models/tiny-chat/*/files/*.gguf | head -1) && sudo -n cp -p \"$f\" /tmp/ref && "
           "printf X | sudo -n dd of=\"$f\" bs=1 seek=4096 conv=notrunc status=none && "
           "sudo -n touch -r /tmp/ref \"$f\"")
    assert on(bed, "node3", rot).returncode == 0
    status = in_ns(bed, "models", "status", "--verify", "node3")
    assert status.returncode == 1 and "MISMATCH" in status.stdout, status.stdout + status.stderr
    proc = in_ns(bed, "models", "push", "tiny-chat", "node3")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "node3: its copy is damaged" in proc.stdout
    assert re.search(r"^node3 .*verified, re-copied files/tiny-chat\.gguf$", proc.stdout, re.M), proc.stdout
    assert in_ns(bed, "models", "status", "--verify", "node3").returncode == 0


def test_an_interrupted_push_resumes_where_it_stopped(bed, workdir):
    """A push killed mid-file keeps what arrived (never under the model's name); the next one moves only the
    rest over the wire (counted on the node's switch port)."""
    size = 48 << 20
    blob = workdir / "resume-me.bin"
    blob.write_bytes(os.urandom(size))  # incompressible
    assert in_ns(bed, "models", "import", str(blob), "--name", "resume-me").returncode == 0
    port = bed.containers["node3"].host_end
    # 48 MiB at 40 Mbit/s: about 10 s, time to interrupt it; the testbed's own shaping is put back after
    bed.ns_run(["tc", "qdisc", "replace", "dev", port, "root", "tbf", "rate", "40mbit", "burst", "64kb",
                "latency", "200ms"])
    try:
        push = subprocess.Popen(bed.ns_argv([sys.executable, str(REPO / "cluster.py"), "-i", str(bed.inv.path),
                                             "models", "push", "resume-me", "node3"]),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 60
        partial = 0
        while time.monotonic() < deadline and partial < (8 << 20):
            r = on(bed, "node3", "sudo -n du -sb /models/.incoming/resume-me 2>/dev/null | cut -f1")
            partial = int(r.stdout.strip() or 0)
            time.sleep(0.3)
        os.killpg(push.pid, signal.SIGKILL)  # the whole push: cluster.py, its rsync and ssh
        push.wait(30)
    finally:  # the port as the testbed left it
        if bed.lan:
            shape(bed.ns, port, profiles.link_kind(bed.lan).rate_gbit)
        else:
            bed.ns_run(["tc", "qdisc", "del", "dev", port, "root"], check=False)
    assert (8 << 20) <= partial < size, f"could not catch the push mid-file ({partial} bytes)"
    time.sleep(2)  # the node's rsync sees the connection drop and keeps the partial file
    assert on(bed, "node3", "ls -A /models/resume-me 2>/dev/null").stdout.strip() == "", "nothing published"

    def sent() -> int:
        return int(bed.ns_run(["cat", f"/sys/class/net/{port}/statistics/tx_bytes"], capture=True).stdout)

    before = sent()
    again = in_ns(bed, "models", "push", "resume-me", "node3")
    assert again.returncode == 0, again.stdout + again.stderr
    wire = sent() - before
    assert wire < size - partial + (4 << 20), f"{wire} bytes crossed the port for the rest of {size - partial}"
    assert in_ns(bed, "models", "status", "--verify", "node3").returncode == 0


def variant(bed: Testbed, name: str, **changes) -> str:
    """The testbed's inventory with the fabric's link kind or the inference section changed (same store and
    cache: the plan in force and the models are shared)."""
    import yaml

    data = yaml.safe_load(bed.inv.path.read_text())
    if "kind" in changes:
        for link in data["fabric"]["links"]:
            link["kind"] = changes["kind"]
    data["inference"].update(changes.get("inference", {}))
    path = bed.inv.path.with_name(f"{name}.yml")
    path.write_text(yaml.safe_dump(data))
    return str(path)


def cable(bed: Testbed, kind: str) -> None:
    """The node2-node3 fabric cable shaped to a link kind's rate, both ends (as the testbed cables it)."""
    for node, ifname in (("node2", "fab-node3"), ("node3", "fab-node2")):
        shape(bed.containers[node].ns, ifname, profiles.link_kind(kind).rate_gbit)


def bench(bed: Testbed, results, *args: str, inv: str | None = None, timeout: float = 900):
    return run_cli("-i", inv or str(bed.inv.path), "bench", "--results", str(results), *args, netns=bed.ns,
                   timeout=timeout)


def test_bench_compares_links_and_one_node_and_names_the_bottleneck(bed, workdir):
    """Three recorded runs on the same model: the split over a usb4 cable, the same over a gbe cable (the testbed's
    cable reshaped to 1 Gbit/s; the inventory says gbe), and the head alone. Then one report of all three."""
    res = workdir / "bench"
    sweep = ("--concurrency", "1,2", "--shape", "32:16", "--requests", "4", "--slo", "ttft_ms=10000")
    runs = {}
    setup = run_cli("-i", str(bed.inv.path), "bench", "setup", timeout=1800)  # outside: PyPI is not in the testbed
    assert setup.returncode == 0, setup.stderr
    usb4 = bench(bed, res, "run", *sweep, "--label", "usb4")
    assert usb4.returncode == 0, usb4.stdout + usb4.stderr
    runs["usb4"] = usb4.stdout.strip()
    gbe_inv = variant(bed, "gbe", kind="gbe")
    cable(bed, "gbe")
    try:
        gbe = bench(bed, res, "run", *sweep, "--label", "gbe", inv=gbe_inv)
    finally:
        cable(bed, "usb4")
    assert gbe.returncode == 0, gbe.stdout + gbe.stderr
    runs["gbe"] = gbe.stdout.strip()
    alone = variant(bed, "alone", inference={"workers": []})
    try:
        up = run_cli("-i", alone, "inference", "up", "--timeout", "300", netns=bed.ns, timeout=600)
        assert up.returncode == 0, up.stdout + up.stderr
        one = bench(bed, res, "run", *sweep, "--label", "one-node", inv=alone)
    finally:
        split = in_ns(bed, "inference", "up", "--timeout", "300")  # the split again, for what follows
    assert one.returncode == 0, one.stdout + one.stderr
    assert split.returncode == 0, split.stdout + split.stderr
    runs["one-node"] = one.stdout.strip()

    data = {k: json.loads((res / v / "run.json").read_text()) for k, v in runs.items()}
    for label, run in data.items():
        assert [p["name"] for p in run["points"]] == ["c1-p32-o16", "c2-p32-o16"], label
        for p in run["points"]:
            r = p["result"]
            assert r["request_count"]["avg"] == 4 and not r["errors"], (label, r)
            assert r["output_sequence_length"]["avg"] == 16, (label, r)  # ignore_eos: every request ran to length
            assert r["output_token_throughput"]["avg"] > 0
        assert run["context"]["model"]["sha256"] == data["usb4"]["context"]["model"]["sha256"], "one model"
        assert run["context"]["images"]["node2"]["version"], run["context"]["images"]
        assert run["probes"]["bandwidth_gbs"]["node2"] > 0.1
        assert run["probes"]["engine_bench"]["generation"]["tokens_per_second"] > 0, run["probes"]["engine_bench"]
        split = run["probes"].get("engine_bench_split")  # llama-bench over the RPC workers, the server paused
        assert (split or {}).get("generation", {}).get("tokens_per_second", 0) > 0 if label != "one-node" \
            else split is None, (label, split)
    links = {k: data[k]["probes"]["links"][0] for k in ("usb4", "gbe")}
    assert [data[k]["context"]["topology"]["links"][0]["kind"] for k in ("usb4", "gbe")] == ["usb4", "gbe"]
    assert links["gbe"]["forward_gbit"] < 1.2 < links["usb4"]["forward_gbit"], links  # the cables as shaped
    for k in ("usb4", "gbe"):
        trips = data[k]["probes"]["round_trips"]
        assert trips["completion_tokens"] == 32 and trips["fabric_bytes"] > 0, trips
        assert trips["graph_computes"]["node3"] >= 32, trips  # the worker computed for every token
    assert data["one-node"]["context"]["topology"]["nodes"] == ["node2"] and not data["one-node"]["probes"]["links"]
    for label, run in data.items():  # the timeline: a sample a second per node through the sweep
        tl, end = run["timeline"]["nodes"], run["points"][-1]["window"][1]
        assert sorted(tl) == run["context"]["topology"]["nodes"], (label, sorted(tl))
        for node, rows in tl.items():
            assert len(rows) >= end - 3 and all(0 <= r[1] <= 1 for r in rows), (label, node, len(rows), end)
        w0, w1 = run["points"][0]["window"]  # the measured requests' time; a sample covers the second before it
        assert 0 < w1 - w0 < 60, (label, w0, w1)
        during = [r[2] for r in tl["node2"] if w0 < r[0] < w1 + run["timeline"]["interval"]]
        assert (max(during) > 0) == (label != "one-node"), (label, during)  # the split sends over the fabric
    for label, run in data.items():  # the same sweep as the control node's Prometheus scraped it
        t, serving = run["telemetry"], run["context"]["topology"]["nodes"]
        assert "error" not in t, (label, t)
        health = prometheus.health(t)  # every node's exporter and the engine answered every scrape
        assert {f"node/{n}" for n in serving} | {f"engine/{serving[0]}"} <= set(health), (label, health)
        assert all(share == 1 for share in health.values()), (label, health)
        busy = prometheus.cpu_busy(t)
        assert sorted(busy) == serving and all(0 <= v <= 1 for xs in busy.values() for _, v in xs), (label, busy)
        assert max(v for _, v in prometheus.memory_used(t)["node2"]) > 1 << 20, label
        assert max((v for _, v in prometheus.engine_tokens(t)), default=0) > 0, (label, t["series"]["engine"][:3])
        sent = {dev: max((v for _, v in xs), default=0) for (n, dev), xs in prometheus.net_rates(t).items()
                if n == "node2"}
        assert (sent.get("fab-node3", 0) > 0) == (label != "one-node"), (label, sent)  # the split, on the fabric
        assert prometheus.gpu_series(t) == {}, "CPU-only nodes export no GPU figures, and none are made up"
    assert data["usb4"]["context"]["inventory"]["fingerprint"] != data["gbe"]["context"]["inventory"]["fingerprint"]

    listed = bench(bed, res, "list")
    assert listed.returncode == 0 and all(v in listed.stdout for v in runs.values()), listed.stdout
    cmp = bench(bed, res, "compare", "usb4", "gbe")
    assert cmp.returncode == 0 and "ITL p50 ms" in cmp.stdout and "topology.links" in cmp.stdout, cmp.stdout

    ARTIFACTS.mkdir(exist_ok=True)
    html = ARTIFACTS / "bench-report.html"
    made = bench(bed, res, "report", "usb4", "gbe", "one-node", "-o", str(html))
    assert made.returncode == 0, made.stderr
    last = made.stdout.strip().splitlines()[-1]
    assert last.startswith("Binding constraint:") and "The link: gbe" in last, last
    first = html.read_bytes()
    again = bench(bed, res, "report", "usb4", "gbe", "one-node", "-o", str(html))
    assert again.returncode == 0 and html.read_bytes() == first, "a report regenerated from stored runs is identical"
    shot = ARTIFACTS / "bench-report.png"
    shot.unlink(missing_ok=True)
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={workdir / 'chromium'}", "--window-size=1280,3000", f"--screenshot={shot}",
                    html.as_uri()], capture_output=True, timeout=120)
    print(f"report: {html}, screenshot: {shot}")
    assert shot.stat().st_size > 20_000


def fabric_bytes(bed: Testbed, node: str, peer: str) -> tuple[int, int]:
    """(received, sent) bytes of node's fabric cable to peer, from /proc/net/dev (the node's own network namespace;
    a container's /sys/class/net need not be)."""
    out = on(bed, node, f"grep -E '^ *fab-{peer}:' /proc/net/dev").stdout
    fields = out.split(":", 1)[1].split()
    return int(fields[0]), int(fields[8])


def units_state(bed: Testbed, node: str) -> list[str]:
    r = on(bed, node, "sudo -n systemctl is-active onedotzero-llama-server onedotzero-rpc-server onedotzero-vllm")
    return r.stdout.split()


def test_vllm_serves_across_both_nodes_and_switching_back_leaves_no_unit(bed, workdir):
    """engine: vllm (its CPU build, in the same images) with the same tiny model in Hugging Face format: rank 0 on
    node2 serves through the control node's /v1/, rank 1 on node3 runs the second half of the layers over the
    fabric. A stopped rank is named; switching back to llama.cpp leaves no vLLM unit running."""
    model = write_hf(workdir / "tiny-hf")
    for args in (("models", "import", str(model), "--name", "tiny-hf"), ("models", "push", "tiny-hf", *NODES)):
        proc = in_ns(bed, *args)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    inv = variant(bed, "vllm", inference={"engine": "vllm", "model": "tiny-hf"})
    start = time.monotonic()
    proc = run_cli("-i", inv, "inference", "up", "--timeout", "900", netns=bed.ns, timeout=1000)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    print(f"vLLM up (2 ranks) in {time.monotonic() - start:.0f}s")
    for node in NODES:
        assert units_state(bed, node) == ["inactive", "inactive", "active"], node

    before = fabric_bytes(bed, "node3", "node2")
    out = json.loads(ns_python(bed, STREAM, endpoint(bed, "/v1/chat/completions"), timeout=300))
    after = fabric_bytes(bed, "node3", "node2")
    assert out["status"] == 200 and out["type"].startswith("text/event-stream"), out
    assert out["chunks"][-1] == "data: [DONE]" and len(out["chunks"]) > 3, "token by token, through nginx"
    # Every token crosses the pipeline both ways: node2's hidden states to node3's stage, node3's output back.
    got, sent = after[0] - before[0], after[1] - before[1]
    assert got > 24 * 512 * 2 and sent > 24 * 4, f"node3's fabric cable moved {got} bytes in, {sent} out"

    status = run_cli("-i", inv, "inference", "status", netns=bed.ns)
    assert status.returncode == 0, status.stdout + status.stderr
    head = re.search(r"^node2\s+head\s+onedotzero-vllm\s+active\s+0-3 \(4\)\s+checksum ok, PP rank 0, (\d+) MiB",
                     status.stdout, re.M)
    rank1 = re.search(r"^node3\s+worker\s+onedotzero-vllm\s+active\s+4-7 \(4\)\s+PP rank 1, (\d+) MiB", status.stdout,
                      re.M)
    assert head and rank1, status.stdout
    limit = inventory.load(inv).node("node2").profile.memory_mb
    print(f"vLLM ranks' memory: node2 {head[1]} MiB, node3 {rank1[1]} MiB (container limit {limit} MiB)")
    assert int(head[1]) < limit and int(rank1[1]) < limit

    assert on(bed, "node3", "sudo -n systemctl stop onedotzero-vllm").returncode == 0
    dead = run_cli("-i", inv, "inference", "status", netns=bed.ns)
    assert dead.returncode == 1 and "node3 (worker): onedotzero-vllm is inactive" in dead.stderr, dead.stderr

    back = in_ns(bed, "inference", "up", "--timeout", "300")  # the testbed's own inventory: llama.cpp
    assert back.returncode == 0, back.stdout + back.stderr
    assert units_state(bed, "node2") == ["active", "inactive", "inactive"]
    assert units_state(bed, "node3") == ["inactive", "active", "inactive"]
    again = json.loads(ns_python(bed, STREAM, endpoint(bed, "/v1/chat/completions")))
    assert again["status"] == 200 and again["chunks"][-1] == "data: [DONE]"


def test_inference_down_stops_every_engine_unit(bed):
    assert in_ns(bed, "inference", "down").returncode == 0
    for node in NODES:
        assert units_state(bed, node) == ["inactive", "inactive", "inactive"], node
    assert in_ns(bed, "inference", "status").returncode == 1
