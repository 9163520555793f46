"""Container nodes and the fabric in the virtual cluster: the toolkit's own golden image run natively by
systemd-nspawn (squashfs lower layer, tmpfs upper layer, /models kept across restarts, a memory limit), powered
like the real nodes (magic packet on, `shutdown -h` off, `reboot` into what `boot` chose), joined by fabric
cables shaped to their kind; a 2-node testbed with the image's fabric and a 4-node ring configured at runtime.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from conftest import boot_session_images, make_testbed_inventory, needs_root, run_cli, running

from image.store import ImageRef, Store
from onedotzero import inventory, ssh
from onedotzero.errors import UserError
from testbed import cgroups
from testbed.bed import Testbed

pytestmark = [pytest.mark.integration, needs_root("systemd-nspawn", "iperf3", "dnsmasq", "nginx")]
CONTAINERS = ("node2", "node3")


def in_ns(bed: Testbed, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return run_cli("-i", str(bed.inv.path), *args, netns=bed.ns, timeout=timeout)


def on(bed: Testbed, node: str, command: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(bed.ns_argv(ssh.argv(bed.inv, bed.inv.node(node), command)), capture_output=True,
                          text=True, timeout=timeout)


def wait_ssh(bed: Testbed, node: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if on(bed, node, "true").returncode == 0:
            return
        time.sleep(0.5)
    pytest.fail(f"{node} did not answer SSH within {timeout}s:\n{bed.diagnostics()}")


def wait_off(bed: Testbed, node: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while bed.is_on(node) and time.monotonic() < deadline:
        time.sleep(0.3)
    assert not bed.is_on(node), f"{node} is still on"


@pytest.fixture(scope="module")
def bed(golden_build):
    inv = inventory.load(golden_build["inventory"])
    tb = Testbed(inv, f"c{os.getpid() % 100000}")
    boot_session_images(inv.path, golden_build, CONTAINERS)
    with running(tb):
        proc = in_ns(tb, "compute", "up", "--timeout", "120", *CONTAINERS)
        assert proc.returncode == 0, proc.stdout + proc.stderr + tb.diagnostics()
        yield tb


def test_a_container_node_runs_its_golden_image_natively(bed, golden_build):
    version = golden_build["refs"]["node2"].split("@")[1]
    r = on(bed, "node2", "cat /etc/onedotzero-release; hostname; findmnt -no FSTYPE /; findmnt -no TARGET /models; "
                         "ps -o comm= -p 1; systemd-detect-virt -c; sudo -n systemctl is-system-running --wait")
    assert r.returncode == 0, r.stderr
    out = r.stdout.split("\n")
    assert f"ONEDOTZERO_VERSION={version}" in out and "node2" in out
    assert "overlay" in out and "/models" in out, "squashfs under a RAM overlay; the node's disk at /models"
    assert "systemd" in out and "systemd-nspawn" in out, "systemd is PID 1, natively (no emulation)"
    assert "running" in out, "every unit started"
    lower = Path(bed.path("lower", version))
    assert f" {lower} " in Path("/proc/self/mountinfo").read_text(), "the published squashfs, mounted once"


def test_memory_is_limited_per_node(bed):
    limit = bed.inv.node("node2").profile.memory_mb << 20
    group = next(p for p in cgroups.groups(bed.containers["node2"].cgroup) if "memory" in str(p))
    assert int((group / "memory.limit_in_bytes").read_text()) == limit
    # More than the limit: the allocation is OOM-killed inside the node (the node's own memory cgroup counts
    # it), the node keeps running.
    kills = int(re.search(r"oom_kill (\d+)", (group / "memory.oom_control").read_text())[1])
    r = on(bed, "node2", f"python3 -c 'b = bytearray({limit + (256 << 20)}); print(len(b))'", timeout=120)
    assert r.returncode != 0 and "6" not in r.stdout, (r.returncode, r.stdout, r.stderr)
    assert int(re.search(r"oom_kill (\d+)", (group / "memory.oom_control").read_text())[1]) == kills + 1
    assert on(bed, "node2", "true").returncode == 0, "the node survived its process's OOM kill"


def test_the_ram_layer_goes_and_models_stay_across_a_restart(bed):
    assert on(bed, "node3", "echo scratch | sudo tee /etc/scratch && echo weights | sudo tee /models/w").returncode == 0
    proc = in_ns(bed, "compute", "restart", "node3")
    assert proc.returncode == 0 and "node3: restarting" in proc.stdout
    time.sleep(3)
    wait_ssh(bed, "node3")
    r = on(bed, "node3", "cat /etc/scratch 2>/dev/null || echo gone; cat /models/w")
    assert r.stdout.split() == ["gone", "weights"], "the writable layer is RAM, /models is the node's disk"


def test_reboot_boots_what_the_node_now_points_at(bed, golden_build):
    store = Store(bed.inv.image.store)
    current = store.get(ImageRef.parse(golden_build["refs"]["node3"]))
    newer = f"29990101T000000Z-{current.name[-8:]}"  # the same image under another version, as a rebuild gives
    with store.staging("golden") as staging:
        shutil.copytree(current.path, staging / newer, copy_function=os.link)
        store.publish("golden", newer, staging / newer)
    try:
        assert in_ns(bed, "boot", "--image", f"golden@{newer}", "node3").returncode == 0
        assert in_ns(bed, "compute", "restart", "node3").returncode == 0
        time.sleep(3)
        wait_ssh(bed, "node3")
        console = Path(bed.spec("node3").log).read_text()
        assert console.rindex(f"booting golden@{newer}") > console.rindex(f"booting {current.ref}")
        assert f" {bed.path('lower', newer)} " in Path("/proc/self/mountinfo").read_text()
        # --once: the next boot only, then the previous choice again (the supervisor runs dnsmasq's hook)
        assert in_ns(bed, "boot", "--once", "--image", str(current.ref), "node3").returncode == 0
        assert in_ns(bed, "compute", "restart", "node3").returncode == 0
        time.sleep(3)
        wait_ssh(bed, "node3")
        shown = in_ns(bed, "boot", "--show", "node3").stdout.split()
        assert shown[-2:] == [f"golden@{newer}", "-"], "back on its choice after the one-time boot"
        boots = [ln for ln in Path(bed.spec("node3").log).read_text().splitlines() if "supervisor: booting" in ln]
        assert boots[-1].endswith(f"booting {current.ref} (once)"), boots
    finally:  # back on the session's image, then the copy goes (other tests expect no newer version)
        in_ns(bed, "boot", "--image", str(current.ref), "node3")
        in_ns(bed, "compute", "restart", "node3")
        time.sleep(3)
        wait_ssh(bed, "node3")
        trash = store.root / ".staging" / f"test-{newer}"
        os.rename(store.root / "golden" / newer, trash)
        shutil.rmtree(trash)


def test_shutdown_powers_off_and_a_magic_packet_powers_on(bed):
    proc = in_ns(bed, "compute", "down", "node3")
    assert proc.returncode == 0 and "node3: shutting down" in proc.stdout
    wait_off(bed, "node3")
    assert "powered off (nspawn exit status 0)" in Path(bed.spec("node3").log).read_text()
    status = in_ns(bed, "compute", "status", *CONTAINERS)
    assert status.returncode == 1 and status.stderr.strip() == "error: not OK: node3"
    start = time.monotonic()
    proc = in_ns(bed, "compute", "up", "--timeout", "60", "node3")
    assert proc.returncode == 0, proc.stderr
    print(f"container node: magic packet to SSH in {time.monotonic() - start:.1f}s")
    assert "node3 powered on" in bed.path("log", "wol.out").read_text()


def test_configure_twice_changes_nothing_the_second_time(bed):
    first = in_ns(bed, "compute", "configure", *CONTAINERS, timeout=900)
    assert first.returncode == 0, first.stdout + first.stderr
    second = in_ns(bed, "compute", "configure", *CONTAINERS, timeout=900)
    assert second.returncode == 0, second.stdout + second.stderr
    assert all(line.endswith(" changed=0") for line in second.stdout.splitlines() if "changed=" in line), \
        second.stdout


def test_compute_check_finds_the_cpu_stand_in_devices(bed):
    """The profile's acceptance checks with real devices: pocl's CPU device and lavapipe, nothing faked."""
    proc = in_ns(bed, "compute", "check", *CONTAINERS)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for node in CONTAINERS:
        row = rf"^{node}\s+\S+\s+pthread-\S.*\s+llvmpipe \(LLVM .*\)\s+-\s+ok$"
        assert re.search(row, proc.stdout, re.M), proc.stdout


def test_compute_run_prefixes_each_line_and_sums_up(bed):
    proc = in_ns(bed, "compute", "run", 'echo one; echo two >&2; test "$(hostname)" = node2', *CONTAINERS)
    assert proc.returncode == 1 and proc.stderr.strip() == "error: failed on 1 of 2 nodes: node3"
    lines = proc.stdout.splitlines()
    for node in CONTAINERS:
        assert f"{node}: one" in lines and f"{node}: two" in lines, "stdout and stderr, each line prefixed"
    assert [ln.split(maxsplit=1) for ln in lines[-2:]] == [["node2", "ok"], ["node3", "exit code 1"]]


def test_a_missing_device_fails_the_check_with_a_clear_line(bed):
    assert in_ns(bed, "compute", "run", "sudo rm /etc/OpenCL/vendors/pocl.icd", "node3").returncode == 0
    try:
        proc = in_ns(bed, "compute", "check", *CONTAINERS)
        assert proc.returncode == 1
        assert re.search(r"^node3\s+\S+\s+MISSING \(no device\)\s+llvmpipe.*FAILED$", proc.stdout, re.M), proc.stdout
        assert "node3: opencl: expected a device matching '^pthread-', found no device" in proc.stderr
        assert "node2" not in proc.stderr and proc.stderr.count("\n") == 1
    finally:  # the RAM layer goes with a restart: the ICD is back
        assert in_ns(bed, "compute", "restart", "node3").returncode == 0
        time.sleep(3)
        wait_ssh(bed, "node3")


def test_fabric_status_and_test_on_the_usb4_cable(bed):
    status = in_ns(bed, "fabric", "status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert re.search(r"node2-node3\s+node2\s+fab-node3\s+up\s+65520\s+10\.10\.0\.0/31\s+reachable", status.stdout)
    assert re.search(r"node3\s+node2-fabric\s+direct\s+reachable", status.stdout)
    test = in_ns(bed, "fabric", "test", "--seconds", "2")
    assert test.returncode == 0, test.stdout + test.stderr
    for gbit in measured(test.stdout)["node2-node3"]:
        assert bed.inv.fabric.min_gbits <= gbit <= 20 * 1.05, "within the usb4 kind's shaping (20 Gbit/s)"
    assert "latency not emulated" in bed.path("shaping.json").read_text()


def measured(table: str) -> dict[str, tuple[float, float]]:
    """`fabric test` rows: link -> (Gbit/s one way, Gbit/s the other way)."""
    return {m[1]: (float(m[2]), float(m[3])) for m in re.finditer(r"^(\S+) .* way\s+([\d.]+)\s+([\d.]+)", table, re.M)}


def test_the_lan_port_is_shaped_like_gigabit_ethernet(bed):
    server = subprocess.Popen(bed.ns_argv(["iperf3", "-s", "-1", "-B", str(bed.inv.control.address)]),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        r = on(bed, "node2", f"iperf3 -c {bed.inv.control.address} -t 2 -J", timeout=60)
        gbit = json.loads(r.stdout)["end"]["sum_received"]["bits_per_second"] / 1e9
        assert 0.5 < gbit <= 1.05, f"{gbit:.2f} Gbit/s from a node to the control node"
    finally:
        server.kill()
        server.wait()


def test_a_failed_boot_choice_leaves_the_node_off_with_the_reason(bed):
    assert in_ns(bed, "compute", "down", "node3").returncode == 0
    wait_off(bed, "node3")
    assert in_ns(bed, "boot", "--image", "local", "node3").returncode == 0
    try:
        with pytest.raises(UserError, match="cannot boot: node3 is set to boot local: a container node boots "
                                            "golden images only"):
            bed.power_on("node3")
        assert not bed.is_on("node3")
    finally:
        assert in_ns(bed, "boot", "--image", "golden", "node3").returncode == 0
        bed.power_on("node3")
        wait_ssh(bed, "node3")


def _processes_in(netns_inode: int) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and os.stat(proc / "ns/net").st_ino == netns_inode:
                pids.append(int(proc.name))
        except OSError:
            pass
    return pids


def assert_nothing_left(bed: Testbed, node_inodes: dict[str, int]) -> None:
    for ns, inode in node_inodes.items():
        assert _processes_in(inode) == [], f"a process of {ns} survived"
    assert not [ns for ns in os.listdir("/run/netns") if ns.startswith(bed.ns)], "namespaces"
    assert cgroups.leftovers(bed.ns) == [], "cgroups"
    assert str(bed.state) not in Path("/proc/self/mountinfo").read_text(), "mounts"
    links = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout
    assert "odzv" not in links and "fab-" not in links, "interfaces"
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(bed.state) not in out, "supervisors"


def test_down_leaves_no_process_mount_cgroup_namespace_or_interface(bed):
    inodes = {d.ns: os.stat(f"/run/netns/{d.ns}").st_ino for d in bed.containers.values()}
    assert all(_processes_in(i) for i in inodes.values()), "the container nodes live in their namespaces"
    bed.down()
    assert_nothing_left(bed, inodes)


@pytest.fixture(scope="module")
def ring(golden_build, workdir):
    """Four container nodes in a ring (testbed/ring.yml), booting the session's container image."""
    inv_path = make_testbed_inventory(workdir, "ring.yml", source="testbed/ring.yml")
    inv = inventory.load(inv_path)
    # the session's container image: the ring's nodes are the same kind (their links are configured at runtime)
    assert run_cli("-i", str(inv_path), "boot", "--image", golden_build["refs"]["node2"]).returncode == 0
    tb = Testbed(inv, f"r{os.getpid() % 100000}")
    with running(tb):
        proc = in_ns(tb, "compute", "up", "--timeout", "120")
        assert proc.returncode == 0, proc.stdout + proc.stderr + tb.diagnostics()
        yield tb


def test_a_four_node_ring_is_configured_at_runtime_and_routed(ring):
    before = in_ns(ring, "fabric", "status")
    assert before.returncode == 1, "the image was built for other nodes' links: none of these is configured yet"
    first = in_ns(ring, "compute", "configure", timeout=900)
    assert first.returncode == 0, first.stdout + first.stderr
    second = in_ns(ring, "compute", "configure", timeout=900)
    assert all(line.endswith(" changed=0") for line in second.stdout.splitlines() if "changed=" in line), \
        second.stdout
    status = in_ns(ring, "fabric", "status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert re.search(r"^ring0\s+ring2-fabric\s+via ring[13]\s+reachable$", status.stdout, re.M), status.stdout
    assert len(re.findall(r"\breachable$", status.stdout, re.M)) == 8 + 12, "8 link ends, 12 ordered node pairs"


def test_the_ring_links_run_at_their_kinds_rates(ring):
    test = in_ns(ring, "fabric", "test", "--seconds", "2")
    assert test.returncode == 0, test.stdout + test.stderr
    rates = measured(test.stdout)
    assert all(0.5 < g <= 1.05 for g in rates["ring2-ring3"]), f"the gbe cable is shaped to 1 Gbit/s: {rates}"
    assert all(g > 1.5 for g in rates["ring0-ring1"]), f"a usb4 cable is faster than gigabit: {rates}"


def test_the_ring_comes_down_clean(ring):
    inodes = {d.ns: os.stat(f"/run/netns/{d.ns}").st_ino for d in ring.containers.values()}
    ring.down()
    assert_nothing_left(ring, inodes)
