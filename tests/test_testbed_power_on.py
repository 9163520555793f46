"""`cluster.py testbed power-on`: the virtual cluster's power button (full mode has no toolkit on its
control VM to send magic packets). A fast-mode testbed with no image is enough: the VM only has to start."""

from __future__ import annotations

import os

import pytest
from conftest import make_testbed_inventory, needs_root, run_cli, running

from onedotzero import inventory
from testbed.bed import Testbed


def test_power_on_refuses_a_testbed_that_is_not_up(inventory_file):
    proc = run_cli("-i", str(inventory_file), "testbed", "--name", "nope", "power-on")
    assert proc.returncode == 1 and proc.stdout == ""
    assert "testbed 'nope' is not up" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.integration
@needs_root("qemu-system-x86_64", "dnsmasq", "nginx", "ganesha.nfsd")
def test_power_on_starts_the_node_vm_once(workdir):
    inv = inventory.load(make_testbed_inventory(workdir, "power-on.yml", store=str(workdir / "power-on-store")))
    name = f"p{os.getpid() % 100000}"
    with running(Testbed(inv, name)) as bed:
        assert not bed.is_on("node0")
        first = run_cli("-i", str(inv.path), "testbed", "--name", name, "power-on", "node0")
        assert first.returncode == 0 and first.stdout == "node0: powered on\n", first.stderr
        assert bed.is_on("node0") and not bed.is_on("node1")
        again = run_cli("-i", str(inv.path), "testbed", "--name", name, "power-on", "node0", "node1")
        assert again.stdout == "node0: already on\nnode1: powered on\n", again.stderr
        # A container node with no golden image to boot stays off, and says why.
        nothing = run_cli("-i", str(inv.path), "testbed", "--name", name, "power-on", "node2")
        assert nothing.returncode == 1 and "node2 did not start: " in nothing.stderr
        assert "node2 is set to boot menu: a container node boots golden images only" in nothing.stderr
