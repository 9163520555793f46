"""Clustered inference in the virtual cluster: llama.cpp built by the toolkit (its cached artefact, in the
container nodes' image), a small generated model imported and pushed onto the nodes' /models, split across
node2 (head) and node3 (an RPC worker over the fabric cable), served by the control node's nginx at /v1/ with a
chat page at /chat/, reachable from a workstation network while the engines' own ports are not.

One cluster serves every test here. Answers are gibberish (random weights): the mechanics are what is tested.
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
from testbed.bed import Testbed
from testbed.links import shape
from testbed.tiny_model import write_gguf

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
    assert proc.stdout.strip() and re.search(r"\(\d+ pieces in [\d.]+s, first token after [\d.]+s\)", proc.stderr)


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


def test_inference_down_stops_every_engine_unit(bed):
    assert in_ns(bed, "inference", "down").returncode == 0
    for node in NODES:
        r = on(bed, node, "sudo -n systemctl is-active onedotzero-llama-server onedotzero-rpc-server")
        assert r.stdout.split() == ["inactive", "inactive"], (node, r.stdout, r.stderr)
    assert in_ns(bed, "inference", "status").returncode == 1
