"""The boot chain end to end in the virtual cluster: the toolkit's rendered dnsmasq/nginx/NFS configs
serve QEMU nodes (SeaBIOS+iPXE and OVMF) that are woken by real magic packets, PXE-boot the golden
image built for them by the toolkit, and are driven by `cluster.py compute` over SSH as `admin`. The
same testbed has two container nodes (another kind, with their own image): `compute` drives all four
alike.

One cluster serves every test here (boots under TCG take about two minutes each).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, boot_session_images, needs_root, run_cli, running

from onedotzero import inventory, power, ssh
from testbed import cgroups
from testbed.base import STATE_ROOT
from testbed.bed import Testbed

pytestmark = [pytest.mark.integration, needs_root("qemu-system-x86_64", "dnsmasq", "nginx", "ganesha.nfsd")]
BOOT_TIMEOUT = 900  # two TCG boots at once on 2 cores take 2-3 min; leave room for a loaded CI machine


@pytest.fixture(scope="module")
def bed(golden_build):
    inv = inventory.load(golden_build["inventory"])
    tb = Testbed(inv, f"t{os.getpid() % 100000}")
    boot_session_images(inv.path, golden_build, inv.node_names)  # each node its own kind of image
    with running(tb):
        yield tb


def in_ns(bed: Testbed, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return run_cli("-i", str(bed.inv.path), *args, netns=bed.ns, timeout=timeout)


def node_ssh(bed: Testbed, node: str, command: str) -> subprocess.CompletedProcess:
    argv = ssh.argv(bed.inv, bed.inv.node(node), command)
    return subprocess.run(bed.ns_argv(argv), capture_output=True, text=True, timeout=60)


def send_udp(bed: Testbed, payload_hex: str) -> None:
    code = ("import socket,sys; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
            "s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1); "
            f"s.sendto(bytes.fromhex(sys.argv[1]), ('{bed.inv.control.broadcast}', 9))")
    subprocess.run(bed.ns_argv([sys.executable, "-c", code, payload_hex]), check=True)


def test_wol_ignores_malformed_and_foreign_packets(bed):
    node0 = bed.inv.nodes[0]
    good = power.magic_packet(node0.mac)
    send_udp(bed, good[:-1].hex())  # truncated
    send_udp(bed, (good[:6] + bytes.fromhex("525400aabbcc") + good[12:]).hex())  # one repetition wrong
    send_udp(bed, power.magic_packet("52:54:00:99:99:99").hex())  # a MAC the testbed does not have
    time.sleep(2)
    assert not any(bed.is_on(n.name) for n in bed.inv.nodes)
    log = bed.path("log", "wol.out").read_text()
    assert log.count("ignored a malformed packet") == 2
    assert "ignored a magic packet for unknown MAC 52:54:00:99:99:99" in log


def test_compute_up_wakes_and_boots_bios_and_uefi_nodes(bed, golden_build):
    assert not any(bed.is_on(n.name) for n in bed.inv.nodes), "nodes start powered off"
    proc = in_ns(bed, "compute", "up", "--timeout", str(BOOT_TIMEOUT), timeout=BOOT_TIMEOUT + 60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "magic packets sent to node0, node1, node2, node3 via odzbr0" in proc.stderr
    for node in ("node0", "node1"):
        assert bed.is_on(node)
        r = node_ssh(bed, node, "cat /etc/onedotzero-release; hostname; findmnt -no FSTYPE /; "
                                "findmnt -no SOURCE,FSTYPE /run/live/medium; findmnt -no FSTYPE /models; "
                                "test -d /sys/firmware/efi && echo firmware=uefi || echo firmware=bios; "
                                "sudo -n true && echo sudo=ok")
        assert r.returncode == 0, r.stderr
        out = r.stdout.split("\n")
        assert f"ONEDOTZERO_VERSION={golden_build['version']}" in out
        assert node in out, "hostname from the DHCP lease"
        assert "overlay" in out, "read-only squashfs under a RAM overlay"
        assert f"{bed.inv.control.address}:{bed.inv.image.store} nfs" in out
        assert "ext4" in out, "local disk mounted at /models by label"
        firmware = {"node0": "bios", "node1": "uefi"}[node]
        assert f"firmware={firmware}" in out and "sudo=ok" in out
    wol = bed.path("log", "wol.out").read_text()
    assert all(f"node{i} powered on" in wol for i in range(4))


def test_each_kind_boots_its_own_image(bed, golden_build):
    """QEMU nodes and container nodes are different hardware: each boots the image built for its profile."""
    for node in bed.inv.nodes:
        r = node_ssh(bed, node.name, "cat /etc/onedotzero-release; systemd-detect-virt -c || true")
        assert r.returncode == 0, r.stderr
        assert f"ONEDOTZERO_VERSION={golden_build['refs'][node.name].split('@')[1]}" in r.stdout
        assert ("systemd-nspawn" in r.stdout) == (bed.status()["kinds"][node.name] == "container")
    assert golden_build["refs"]["node0"] != golden_build["refs"]["node2"]


def test_status_reports_each_node(bed, golden_build):
    proc = in_ns(bed, "compute", "status")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:4] == ["NODE", "STATE", "IMAGE", "VERSION"]
    assert lines[1].split()[:4] == ["node0", "up", "golden", golden_build["version"]]


def test_configure_succeeds_on_both_kinds_and_checks_them(bed):
    """One run over QEMU and container nodes alike, ending with each profile's acceptance checks. (A second
    run changing nothing is shown on container nodes, tests/test_container_nodes.py: same roles, native speed;
    every Ansible module on a QEMU node runs on an emulated CPU.)"""
    first = in_ns(bed, "compute", "configure", timeout=900)
    assert first.returncode == 0, first.stdout + first.stderr
    configured = sorted(ln.split(":")[0] for ln in first.stdout.splitlines() if "changed=" in ln)
    assert configured == ["node0", "node1", "node2", "node3"]
    assert re.search(r"^node0\s+\S+\s+-\s+-\s+-\s+ok$", first.stdout, re.M), "QEMU nodes: the kernel only"
    assert re.search(r"^node2\s+\S+\s+pthread-.*llvmpipe.*ok$", first.stdout, re.M), first.stdout


def test_boot_once_then_fall_back_bios_and_uefi(bed, golden_build):
    """`boot --once`: the next boot fetches the root over HTTP; dnsmasq's TFTP hook then puts the NFS
    choice back (BIOS: on pxelinux's config file; UEFI: on iPXE's one-time script, both over TFTP)."""
    ref = golden_build["ref"]
    pointed = ("node0", "node1")  # the QEMU nodes; the testbed's container nodes keep their choice
    proc = in_ns(bed, "boot", "--once", "--image", ref, "--root", "http", *pointed)
    assert proc.returncode == 0, proc.stderr
    shown = in_ns(bed, "boot", "--show").stdout.splitlines()
    assert shown[1].split() == ["node0", ref, "once,", "then", ref, "http"], shown
    proc = in_ns(bed, "compute", "restart", *pointed)
    assert proc.returncode == 0 and "node0: restarting" in proc.stdout and "node1: restarting" in proc.stdout
    time.sleep(20)  # the nodes go down before they come back
    deadline = time.monotonic() + BOOT_TIMEOUT
    pending = {"node0", "node1"}
    while pending and time.monotonic() < deadline:
        for node in sorted(pending):
            r = node_ssh(bed, node, "cat /proc/cmdline; findmnt -no FSTYPE /run/live/medium || echo medium=none")
            if r.returncode == 0 and "fetch=" in r.stdout:
                assert "nfs" not in r.stdout.split("\n")[1:], "the root was fetched into RAM, not mounted over NFS"
                pending.discard(node)
        time.sleep(5)
    assert not pending, f"{pending} did not come back with the HTTP-fetched root{bed.diagnostics()}"
    # Both delivered their one-time boot file, so both are back on their previous choice.
    rows = [line.split() for line in in_ns(bed, "boot", "--show").stdout.splitlines()[1:]]
    assert [r for r in rows if r[0] in pointed] == [["node0", ref, "-"], ["node1", ref, "-"]], rows
    assert not list((bed.inv.image.store / "tftp" / "once").glob("*.ipxe"))
    dnsmasq_log = bed.path("log", "dnsmasq.log").read_text()
    for node in map(bed.inv.node, pointed):  # the hook's own words, logged by dnsmasq
        assert f"{node.mac_hyphen} ({node.ip}) received its one-time boot file" in dnsmasq_log


def test_down_powers_off_and_status_names_it(bed):
    proc = in_ns(bed, "compute", "down", "node1")
    assert proc.returncode == 0 and "node1: shutting down" in proc.stdout
    deadline = time.monotonic() + 120
    while bed.is_on("node1") and time.monotonic() < deadline:
        time.sleep(2)
    assert not bed.is_on("node1"), "shutdown -h ends the QEMU process: the node is off"
    proc = in_ns(bed, "compute", "status")
    assert proc.returncode == 1
    assert "error: not OK: node1" in proc.stderr
    again = in_ns(bed, "compute", "down", "node1")
    assert again.returncode == 0 and "node1: unreachable (already down?)" in again.stdout
    refused = in_ns(bed, "compute", "configure")
    assert refused.returncode == 1 and "not configuring: not OK: node1" in refused.stderr


def test_live_image_boots_into_ram_with_ssh_and_leaves_the_disk_alone(bed, golden_build, tmp_path):
    """The live pipeline end to end: signed sums and a fixture ISO over HTTP, published, PXE-booted into RAM."""
    import hashlib

    from tests.fixtures.live_fixture import publish_fixture_live

    version = publish_fixture_live(bed.inv, tmp_path)
    bed._render()  # the menus and seeds, as `netboot render` leaves them on a control node
    assert in_ns(bed, "boot", "--image", "live", "node1").returncode == 0
    disk = Path(bed.path("disks", "node1-models.img"))
    before = hashlib.sha256(disk.read_bytes()).hexdigest()
    assert not bed.is_on("node1")
    bed.power_on("node1")
    deadline = time.monotonic() + BOOT_TIMEOUT
    while time.monotonic() < deadline:
        r = node_ssh(bed, "node1", "cat /proc/cmdline; findmnt -no FSTYPE /; findmnt -no SOURCE /models || true; "
                                   "sudo -n true && echo sudo=ok")
        if r.returncode == 0:
            break
        time.sleep(5)
    else:
        pytest.fail("node1 did not come up on the live image")
    assert f"fetch=http://{bed.inv.control.address}/live/{version.name}/debian-live-fixture.iso" in r.stdout
    assert "ds=nocloud-net;s=http://192.168.1.1/seed/node1/" in r.stdout and "autoinstall" not in r.stdout
    assert "overlay" in r.stdout.split("\n") and "sudo=ok" in r.stdout, "admin (from the seed) with sudo, in RAM"
    assert in_ns(bed, "compute", "down", "node1").returncode == 0
    deadline = time.monotonic() + 120
    while bed.is_on("node1") and time.monotonic() < deadline:
        time.sleep(2)
    assert hashlib.sha256(disk.read_bytes()).hexdigest() == before, "the local disk is untouched"


def _probe_namespace(bed: Testbed, name: str, bridged: bool) -> str:
    """A second network namespace linked to the control node's: into the bridge, or on a link of its own."""
    ns = f"{bed.ns}-{name}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    here, there = f"{name}a", f"{name}b"
    for argv in (["ip", "link", "add", here, "type", "veth", "peer", "name", there],
                 ["ip", "link", "set", here, "netns", ns], ["ip", "link", "set", there, "netns", bed.ns],
                 ["ip", "-n", ns, "link", "set", here, "up"], ["ip", "-n", bed.ns, "link", "set", there, "up"]):
        subprocess.run(argv, check=True)
    if bridged:
        subprocess.run(["ip", "-n", bed.ns, "link", "set", there, "master", bed.bridge], check=True)
    else:  # an address of the control node's on another link, so a server there would have a reason to answer
        subprocess.run(["ip", "-n", bed.ns, "addr", "add", "10.250.0.1/24", "dev", there], check=True)
    return ns


def test_dhcp_answers_only_on_the_compute_interface(bed):
    probes = {"bridged": f"{bed.ns}-pb", "other": f"{bed.ns}-po"}
    try:
        _probe_namespace(bed, "pb", True)
        _probe_namespace(bed, "po", False)
        offers = {}
        for kind, ns in probes.items():
            iface = "pba" if kind == "bridged" else "poa"
            r = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-m", "onedotzero.dhcp", iface, "7"],
                               capture_output=True, text=True, cwd=REPO, check=True)
            offers[kind] = r.stdout.split()
        assert offers["bridged"][:1] == [str(bed.inv.control.address)], "the probe works on the compute link"
        assert offers["other"] == [], "no DHCP answer on any other interface"
    finally:
        for ns in probes.values():
            subprocess.run(["ip", "netns", "delete", ns], check=False)


def test_interrupted_testbed_up_leaves_nothing(bed, golden_build):
    name = f"i{os.getpid() % 100000}"
    proc = subprocess.Popen([sys.executable, "cluster.py", "-i", str(golden_build["inventory"]), "testbed",
                             "--name", name, "up"], cwd=REPO, stderr=subprocess.PIPE, text=True,
                            # as from a terminal, whatever this runner's own SIGINT disposition is
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    ns = Path(f"/run/netns/odz-{name}")
    try:
        deadline = time.monotonic() + 30
        while not ns.exists() and time.monotonic() < deadline:
            time.sleep(0.005)
        proc.send_signal(signal.SIGINT)  # Ctrl-C while it sets up (it needs a second or two more)
        err = proc.communicate(timeout=60)[1]
        assert proc.returncode != 0, f"the interrupt came too late to test anything: {err}"
        assert not ns.exists()
        assert _leftover_processes(f"run-{name}") == []
        assert all(bed.status()["services"].values()), "the other testbed's processes are untouched"
    finally:  # whatever happened above, leave nothing behind
        Testbed(inventory.load(golden_build["inventory"]), name).down()
        shutil.rmtree(STATE_ROOT / f"run-{name}", ignore_errors=True)


def _leftover_processes(marker: str) -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if marker in line and "ps -eo" not in line]


def _processes_in_netns(inode: int) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and os.stat(proc / "ns/net").st_ino == inode:
                pids.append(int(proc.name))
        except OSError:
            pass
    return pids


def test_down_leaves_nothing(bed):
    netns = os.stat(f"/run/netns/{bed.ns}").st_ino
    assert _processes_in_netns(netns), "the testbed's services live in its namespace"
    bed.down()
    assert _processes_in_netns(netns) == [], "no process of the testbed's network survives (rpcbind included)"
    assert not Path(f"/run/netns/{bed.ns}").exists()
    assert _leftover_processes(str(bed.state)) == []
    assert not any(bed.is_on(n.name) for n in bed.inv.nodes)
    assert not any(bed.status()["services"].values())
    links = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout
    assert bed.bridge not in links and "tap0" not in links
    assert not [ns for ns in os.listdir("/run/netns") if ns.startswith(bed.ns)], "node namespaces are gone"
    assert cgroups.leftovers(bed.ns) == [], "container nodes' cgroups are gone"
    assert str(bed.state) not in Path("/proc/self/mountinfo").read_text(), "no image is left mounted"
