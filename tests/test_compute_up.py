"""`compute up` stopping: Ctrl-C gives a summary and exit 130; --timeout names the nodes still down.

Runs in a network namespace of its own whose compute interface is a veth link with the control
address: the magic packets are real broadcasts, but they stay in that namespace, and no node answers.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO, needs_root, netns, run_cli

pytestmark = [pytest.mark.integration, needs_root("ip")]


@pytest.fixture
def lonely_ns(inventory_file):
    # eth9: one end of a veth pair whose other end sits in the same namespace, with no one behind it
    with netns(f"odz-up{os.getpid() % 100000}", ["link", "add", "eth9", "type", "veth", "peer", "name", "eth9p"],
               ["addr", "add", "192.168.1.1/24", "dev", "eth9"], ["link", "set", "eth9p", "up"],
               ["link", "set", "eth9", "up"]) as ns:
        yield ns


def test_timeout_names_the_nodes_still_down(inventory_file, lonely_ns):
    proc = run_cli("-i", str(inventory_file), "compute", "up", "--timeout", "2", netns=lonely_ns)
    assert proc.returncode == 1
    assert "magic packets sent to node0, node1 via eth9" in proc.stderr
    assert proc.stderr.strip().endswith("error: not up after 2s: node0, node1 (check power, BIOS wake settings, "
                                        "cabling)")
    assert [line.split()[:2] for line in proc.stdout.splitlines()[1:]] == [["node0", "DOWN"], ["node1", "DOWN"]]


def test_ctrl_c_stops_waiting_with_a_summary(inventory_file, lonely_ns):
    proc = subprocess.Popen(["ip", "netns", "exec", lonely_ns, sys.executable, str(REPO / "cluster.py"), "-i",
                             str(inventory_file), "compute", "up"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    time.sleep(3)  # waiting for nodes that will never answer
    os.kill(proc.pid, signal.SIGINT)  # `ip netns exec` execs in place: this is cluster.py
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "interrupted: stopped waiting" in err and "Traceback" not in err
    assert out.splitlines()[0].split()[:2] == ["NODE", "STATE"]
    assert [line.split()[1] for line in out.splitlines()[1:]] == ["DOWN", "DOWN"]
