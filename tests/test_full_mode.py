"""Full mode of the virtual cluster: the control node is a VM that the real playbooks/control.yml
configures over SSH (packages from Debian's mirror through QEMU user networking), and a UEFI compute
VM PXE-boots the toolkit's golden image from it. Nothing in the testbed's namespace serves DHCP,
TFTP, HTTP or NFS once the control VM is up: what the node gets, the playbook's services gave it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import make_testbed_inventory, needs_root, run_cli, running

import telemetry
from image.store import ImageRef, Store
from netboot import render
from onedotzero import inventory, ssh
from testbed.base import running_pid
from testbed.full import FullTestbed

pytestmark = [pytest.mark.integration, needs_root("qemu-system-x86_64", "dnsmasq", "mkfs.ext4")]
BOOT_TIMEOUT = 900


@pytest.fixture(scope="module")
def bed(golden_build, workdir):
    inv_path = make_testbed_inventory(workdir, "full.yml", source="testbed/full.yml", store=str(workdir / "full-store"))
    inv = inventory.load(inv_path)
    # The session's golden image, hard-linked into the full-mode store (the control VM's disk is made from it).
    source = Store(inventory.load(golden_build["inventory"]).image.store).get(ImageRef.parse(golden_build["ref"]))
    store = Store(inv.image.store)
    with store.staging("golden") as staging:
        shutil.copytree(source.path, staging / source.name, copy_function=os.link)
        store.publish("golden", source.name, staging / source.name)
    assert run_cli("-i", str(inv_path), "boot", "--image", golden_build["ref"]).returncode == 0
    tb = FullTestbed(inv, f"f{os.getpid() % 100000}")
    start = time.monotonic()
    with running(tb):
        # (A second playbook run changing nothing is shown against a real tree, test_control_node.py: here
        # every Ansible module runs on an emulated CPU, minutes a run.)
        print(f"full mode: testbed up (control VM boot + playbook) took {time.monotonic() - start:.0f}s")
        yield tb


def test_the_control_vm_serves_what_the_playbook_installed(bed):
    out = bed.control_ssh("sudo systemctl is-active dnsmasq nginx nfs-server prometheus; sudo exportfs -v; "
                          "cat /etc/dnsmasq.d/onedotzero.conf")
    assert out.split("\n")[:4] == ["active"] * 4, out
    assert f"{bed.inv.image.store}\n\t\t{bed.inv.control.subnet}(" in out and ",ro," in out, "read-only, subnet only"
    assert render.service_files(bed.inv)["etc/dnsmasq.d/onedotzero.conf"] in out, "the toolkit's rendered drop-in"
    # The namespace only plays a workstation now: the bootstrap DHCP/HTTP servers are gone.
    comms = {Path(f"/proc/{pid}/comm").read_text().strip()
             for pid in subprocess.run(["ip", "netns", "pids", bed.ns], capture_output=True, text=True).stdout.split()}
    assert not comms & {"dnsmasq", "nginx", "ganesha.nfsd", "rpcbind"}, comms
    assert running_pid(bed.path("run", "bootstrap-dhcp.pid")) is None


def test_a_uefi_node_pxe_boots_the_golden_image_from_the_control_vm(bed, golden_build):
    bed.power_on("node0")
    deadline = time.monotonic() + BOOT_TIMEOUT
    while time.monotonic() < deadline:
        status = run_cli("-i", str(bed.inv.path), "compute", "status", netns=bed.ns)
        if status.returncode == 0:
            break
        time.sleep(10)
    else:
        pytest.fail(f"node0 did not come up from the control VM: {status.stdout}{status.stderr}")
    assert status.stdout.splitlines()[1].split()[:4] == ["node0", "up", "golden", golden_build["version"]]
    node = bed.inv.node("node0")
    r = subprocess.run(bed.ns_argv(ssh.argv(bed.inv, node, "findmnt -no SOURCE,FSTYPE /run/live/medium; "
                                                  "test -d /sys/firmware/efi && echo firmware=uefi")),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert f"{bed.inv.control.address}:{bed.inv.image.store} nfs" in r.stdout, "root over the control VM's NFS"
    assert "firmware=uefi" in r.stdout
    served = bed.control_ssh("cat /var/lib/misc/dnsmasq.leases; sudo cat /var/log/nginx/onedotzero.access.log")
    assert f"{node.mac} {node.ip} node0" in served, "the lease came from the control VM's dnsmasq"
    assert f'{node.ip} - - ' in served and f"/boot/{node.mac_hyphen}.ipxe HTTP/1.1\" 200" in served, \
        "the node's own boot script, from the control VM's nginx"
    # The playbook's Prometheus scrapes the exporter the golden image runs (on the compute address, 9090).
    url = f"http://{bed.inv.control.address}:{telemetry.PROMETHEUS_PORT}/api/v1/targets"
    query = (f"import json, urllib.request; t = json.load(urllib.request.urlopen('{url}'))['data']['activeTargets']; "
             f"print([x['health'] for x in t if x['labels'].get('node') == 'node0' and x['labels']['job'] == 'node'])")
    deadline = time.monotonic() + 120
    while (health := subprocess.run(bed.ns_argv([sys.executable, "-c", query]), capture_output=True,
                                    text=True)).stdout.strip() != "['up']" and time.monotonic() < deadline:
        time.sleep(3)
    assert health.stdout.strip() == "['up']", health.stdout + health.stderr


def test_down_ends_the_control_vm(bed):
    pid = running_pid(bed.path("run", "control.pid"))
    assert pid is not None
    bed.down()
    assert running_pid(bed.path("run", "control.pid")) is None and not Path(f"/proc/{pid}").exists()
    assert not bed.exists()
