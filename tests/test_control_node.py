"""The control-node playbook and its preflight, against real Debian trees and real network namespaces.

The playbook runs against a Debian 12 tree through the chroot connection: packages install and every
file lands, but services cannot start in a chroot (no PID 1), so pxe_server_start_services=false
there; the rendered files serving real nodes is what test_virtual_cluster.py proves.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, needs_root, netns, run_cli

from image import golden
from netboot import render
from onedotzero import inventory

pytestmark = [pytest.mark.integration, needs_root("debootstrap", "dnsmasq", "ip")]
RECAP = re.compile(r"changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)")


@pytest.fixture(scope="module")
def control_tree(golden_build, tmp_path_factory):
    """A fresh Debian 12 tree (the cached debootstrap base) playing the control node's disk."""
    inv = inventory.load(golden_build["inventory"])
    cfg = golden.GoldenConfig.for_node(inv, inv.node("node0"))
    keys = golden.stage_keys(golden.stage_inputs(cfg))
    ctx = golden.Context(cfg, tmp_path_factory.mktemp("control"), keys, "n/a")
    assert golden.restore(ctx, "base")
    yield ctx.rootfs
    subprocess.run(["umount", "-R", "-l", str(ctx.rootfs / "proc")], capture_output=True)
    shutil.rmtree(ctx.rootfs, ignore_errors=True)


def playbook(inv_path: Path, rootfs: Path, **extra: object) -> subprocess.CompletedProcess:
    # A second inventory source reaches the control node through the chroot; extra vars would also
    # redirect the tasks delegated to localhost (the preflight).
    override = rootfs.parent / "chroot-inventory.yml"
    override.write_text(f"control:\n  hosts:\n    ctl:\n      ansible_connection: community.general.chroot\n"
                        f"      ansible_host: {rootfs}\n")
    args = [str(Path(sys.executable).with_name("ansible-playbook")), "-i", str(REPO / "playbooks/inventory.py"),
            "-i", str(override), str(REPO / "playbooks/control.yml"),
            # JSON: real booleans. Ubuntu's release server is out of reach here: no live image fetch.
            "-e", json.dumps({"pxe_server_start_services": False, "pxe_server_live_image": False, **extra})]
    env = {**os.environ, "ONEDOTZERO_INVENTORY": str(inv_path), "ANSIBLE_CONFIG": str(REPO / "playbooks/ansible.cfg"),
           "ANSIBLE_NOCOLOR": "1"}
    with golden.chroot_env(rootfs):
        return subprocess.run(args, capture_output=True, text=True, env=env, timeout=1200)


def test_preflight_failure_stops_the_play_before_any_change(golden_build, control_tree):
    # The inventory's compute interface (odzbr0) does not exist in this namespace.
    proc = playbook(golden_build["inventory"], control_tree)
    assert proc.returncode != 0
    # Ansible's YAML output doubles quotes and wraps long lines.
    assert re.search(r"compute_interface '+odzbr0'+ does not exist on\s+this\s+host", proc.stdout), proc.stdout
    assert not (control_tree / "usr/sbin/dnsmasq").exists(), "nothing installed"
    assert not (control_tree / "etc/dnsmasq.d/onedotzero.conf").exists()


def test_playbook_configures_the_tree_and_a_second_run_changes_nothing(golden_build, control_tree):
    inv = inventory.load(golden_build["inventory"])
    first = playbook(golden_build["inventory"], control_tree, pxe_server_preflight=False)
    assert first.returncode == 0, first.stdout[-3000:]
    for rel, text in render.service_files(inv).items():
        assert (control_tree / rel).read_text() == text, rel
        assert (control_tree / rel).stat().st_mode & 0o777 == render.file_mode(rel), rel  # the TFTP hook runs
    assert os.readlink(control_tree / "etc/nginx/sites-enabled/onedotzero") == \
        "/etc/nginx/sites-available/onedotzero"
    store = control_tree / str(inv.image.store).lstrip("/")
    for loader in ("lpxelinux.0", "ldlinux.c32", "snponly.efi", "undionly.kpxe"):
        assert (store / "tftp" / loader).stat().st_size > 0
    assert golden_build["version"] in (store / "boot/menu.ipxe").read_text()
    for unit in ("dnsmasq", "nginx", "nfs-server", "prometheus"):  # links into the tree: may dangle seen from the host
        assert os.path.lexists(control_tree / f"etc/systemd/system/multi-user.target.wants/{unit}.service"), unit
    second = playbook(golden_build["inventory"], control_tree, pxe_server_preflight=False)
    assert second.returncode == 0, second.stdout[-3000:]
    assert RECAP.search(second.stdout).groups() == ("0", "0", "0"), second.stdout[-2000:]


@pytest.fixture
def control_ns(golden_build):
    """The control node's network alone: odzbr0 with 192.168.1.1/24, in a namespace of its own."""
    started: list[subprocess.Popen] = []
    with netns(f"odz-pf{os.getpid() % 100000}", ["link", "add", "odzbr0", "type", "bridge"],
               ["addr", "add", "192.168.1.1/24", "dev", "odzbr0"], ["link", "set", "odzbr0", "up"]) as ns:
        try:
            yield ns, started
        finally:
            for p in started:  # ended by PID: what this test started
                p.terminate()
                p.wait(10)
            subprocess.run(["ip", "netns", "delete", f"{ns}-x"], capture_output=True)


def _wait_listening(ns: str, port: str) -> None:
    for _ in range(100):
        if port in subprocess.run(["ip", "netns", "exec", ns, "ss", "-H", "-lntu"], capture_output=True,
                                  text=True).stdout:
            return
        time.sleep(0.1)
    pytest.fail(f"nothing listens on {port} in {ns}")


def test_preflight_passes_on_a_clean_segment(golden_build, control_ns):
    ns, _ = control_ns
    proc = run_cli("-i", str(golden_build["inventory"]), "netboot", "preflight", netns=ns)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("preflight OK: odzbr0 carries 192.168.1.1")


def test_preflight_names_the_process_on_a_busy_port(golden_build, control_ns):
    ns, started = control_ns
    started.append(subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "http.server", "80",
                                     "--bind", "192.168.1.1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    _wait_listening(ns, "192.168.1.1:80")
    proc = run_cli("-i", str(golden_build["inventory"]), "netboot", "preflight", "--no-dhcp-probe", netns=ns)
    assert proc.returncode == 1
    assert re.search(r"port 80/tcp \(HTTP\) on odzbr0 is taken by python3? \(pid \d+\)", proc.stderr), proc.stderr


def test_preflight_refuses_a_foreign_dhcp_server(golden_build, control_ns, tmp_path):
    ns, started = control_ns
    other = f"{ns}-x"  # another machine on the segment, running its own DHCP server
    subprocess.run(["ip", "netns", "add", other], check=True)
    for argv in (["ip", "link", "add", "fx0", "type", "veth", "peer", "name", "fx1"],
                 ["ip", "link", "set", "fx0", "netns", other], ["ip", "link", "set", "fx1", "netns", ns],
                 ["ip", "-n", ns, "link", "set", "fx1", "master", "odzbr0", "up"],
                 ["ip", "-n", other, "addr", "add", "192.168.1.254/24", "dev", "fx0"],
                 ["ip", "-n", other, "link", "set", "fx0", "up"]):
        subprocess.run(argv, check=True)
    started.append(subprocess.Popen(
        ["ip", "netns", "exec", other, "dnsmasq", "--keep-in-foreground", "--port=0", "--interface=fx0",
         "--bind-interfaces", "--dhcp-range=192.168.1.50,192.168.1.60,1h", "--no-ping",
         f"--dhcp-leasefile={tmp_path}/leases", f"--pid-file={tmp_path}/pid"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    _wait_listening(other, ":67")
    proc = run_cli("-i", str(golden_build["inventory"]), "netboot", "preflight", netns=ns)
    assert proc.returncode == 1
    assert "another DHCP server answers on odzbr0: 192.168.1.254" in proc.stderr
    assert "--proxy-dhcp" in proc.stderr

