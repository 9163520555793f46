"""The golden-image pipeline for real: debootstrap from Debian's mirror, Ansible in the chroot,
testinfra, squashfs, atomic publish; one image per kind of node with shared cached stages;
caching, explanations, SIGKILL in every stage (nothing of the build survives it), the lock."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import make_testbed_inventory, needs_root, run_cli

from image import golden
from image.store import ImageRef, Store
from onedotzero import inventory, roles
from onedotzero.errors import CommandError

pytestmark = [pytest.mark.integration, needs_root("debootstrap", "mksquashfs", "unsquashfs")]


def test_build_publishes_a_verified_image(golden_build):
    inv = inventory.load(golden_build["inventory"])
    version = Store(inv.image.store).get(ImageRef.parse(golden_build["ref"]))
    m = version.manifest
    assert m.distro == "debian-12" and m.version == golden_build["version"]
    assert re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{8}", m.version)
    assert m.input_hash.startswith(m.version[-8:])
    # Real package versions, read from the tree's dpkg database.
    assert re.match(r"1:9\.2p1-", m.packages["openssh-server"])
    assert m.packages["live-boot"] and m.packages["linux-image-amd64"]
    assert len((version.path / "packages.txt").read_text().splitlines()) == len(m.packages)
    assert "verify: testinfra checks: done" in golden_build["log"]
    for stage in ("clean", "verify", "squashfs"):
        assert m.durations[stage] >= 0
    listing = subprocess.run(["unsquashfs", "-l", version.path / "live/filesystem.squashfs"],
                             capture_output=True, text=True, check=True).stdout
    assert "squashfs-root/etc/onedotzero-release" in listing
    assert "squashfs-root/boot/" not in listing, "/boot stays out of the squashfs"
    assert m.sizes["filesystem.squashfs"] == (version.path / "live/filesystem.squashfs").stat().st_size


def test_each_kind_of_node_gets_its_own_image_and_no_other_roles(golden_build):
    """QEMU nodes (no hardware roles, no links) and container nodes (a fabric link) boot different images;
    the second build restored the first one's configured base roles instead of running them again."""
    inv = inventory.load(golden_build["inventory"])
    store = Store(inv.image.store)
    qemu, container = (store.get(ImageRef.parse(golden_build["refs"][n])).manifest for n in ("node0", "node2"))
    assert golden_build["refs"]["node0"] == golden_build["refs"]["node1"] != golden_build["refs"]["node2"]
    assert qemu.roles == roles.BASE_ROLES and qemu.profiles == ("virtual-bios", "virtual-uefi")
    assert container.roles == (*roles.BASE_ROLES, "soft_gpu", "fabric", "llama_cpp", "vllm"), container.roles
    assert container.profiles == ("virtual-container",)
    assert "iperf3" in container.packages and "iperf3" not in qemu.packages, "a role only where it belongs"
    assert container.stage_keys["configure"] == qemu.stage_keys["configure"], "the base roles' tree is shared"
    listed = run_cli("-i", str(golden_build["inventory"]), "image", "list").stdout
    assert re.search(rf"{golden_build['refs']['node2']}\s+debian-12\+soft_gpu\+fabric\+llama_cpp\+vllm\s+"
                     r"virtual-container", listed), listed


def test_unchanged_rebuild_is_a_noop(golden_build):
    store = Store(inventory.load(golden_build["inventory"]).image.store)
    before = [v.name for v in store.versions("golden")]
    start = time.monotonic()
    proc = run_cli("-i", str(golden_build["inventory"]), "image", "build", "golden")
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == sorted(set(golden_build["refs"].values()))
    assert f"golden image up to date: {golden_build['ref']} (debian-12, nothing changed)" in proc.stderr
    assert [v.name for v in store.versions("golden")] == before
    print(f"no-op rebuild: {elapsed:.2f}s")


def test_variable_change_rebuilds_from_configure(golden_build, workdir):
    inv_path = make_testbed_inventory(workdir, "relabel.yml", qemu_only=True, models_label="models2")
    proc = run_cli("-i", str(inv_path), "image", "build", "golden", timeout=1200)
    assert proc.returncode == 0, proc.stderr
    assert "base: cached, restoring" in proc.stderr
    # The QEMU nodes alone: the cluster's MAC list (wol) shrinks with them, the label is the change we made.
    assert "configure: rebuilt because vars.netroot_models_label, vars.wol_macs changed" in proc.stderr
    ref = proc.stdout.strip()
    assert ref != golden_build["ref"]
    store = Store(inventory.load(inv_path).image.store)
    m = store.get(ImageRef.parse(ref)).manifest
    assert m.stages_ran == ("configure", "export")
    diff = run_cli("-i", str(inv_path), "image", "diff", golden_build["ref"], ref)
    assert diff.returncode == 0 and diff.stdout.strip() == "no package changes"
    listed = run_cli("-i", str(inv_path), "image", "list")
    assert golden_build["version"] in listed.stdout and ref in listed.stdout


def test_failing_check_stops_the_build(golden_build, tmp_path):
    """A tree that breaks a promise (a private key left in it) fails verify_tree, which precedes publish."""
    inv = inventory.load(golden_build["inventory"])
    cfg = golden.GoldenConfig.for_node(inv, inv.node("node0"))
    keys = golden.stage_keys(golden.stage_inputs(cfg))
    ctx = golden.Context(cfg, tmp_path, keys, golden_build["version"])
    assert golden.restore(ctx, "configure")
    golden.clean_tree(ctx)
    golden.verify_tree(ctx)  # the clean tree passes
    (ctx.rootfs / "root/id_rsa").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n")
    with pytest.raises(CommandError) as err:
        golden.verify_tree(ctx)
    assert "test_no_private_keys_or_build_secrets" in str(err.value)


def _visible_store(store: Path) -> dict[str, str]:
    """Everything a node or a user can see in the store (builds in progress and the lock excluded)."""
    out = {}
    for p in sorted(store.rglob("*")):
        rel = p.relative_to(store)
        if rel.parts[0] in (".staging", ".lock"):
            continue
        out[str(rel)] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


@pytest.fixture
def kill_store(golden_build, workdir, tmp_path):
    """A store holding one published image that the nodes point at, for builds that get killed."""
    store = workdir / f"killstore-{tmp_path.name}"
    dest = store / "golden" / golden_build["version"]
    shutil.copytree(Path(inventory.load(golden_build["inventory"]).image.store) / "golden" /
                    golden_build["version"], dest)
    # Another image as far as builds can tell, so a build of the session's inputs is not a no-op here.
    manifest = json.loads((dest / "manifest.json").read_text())
    manifest["input_hash"] = "0" * 64
    (dest / "manifest.json").write_text(json.dumps(manifest))
    yield store
    shutil.rmtree(store, ignore_errors=True)


# stage -> (log line that says it started, seconds to let it run before SIGKILL, a process that must be running)
KILL_POINTS = {
    "base": ("base: rebuilt because", 8, "debootstrap"),
    "configure": ("configure: rebuilt because", 15, "ansible-playbook"),
    "export": ("verify: testinfra checks", 0, None),
}


def _descendants(pid: int) -> dict[int, str]:
    """Every process below pid, with its command line."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            pass
    out, todo = {}, [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            try:
                out[child] = (Path("/proc") / str(child) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            todo.append(child)
    return out


@pytest.mark.parametrize("stage", list(KILL_POINTS))
def test_sigkill_in_each_stage_leaves_the_store_as_it_was(stage, golden_build, workdir, kill_store, tmp_path):
    default_cache = inventory.load(golden_build["inventory"]).image.cache
    cache = tmp_path / "cache"
    (cache / "golden").mkdir(parents=True)
    if stage == "configure":  # base cached, configure not: link the session's cached base tree
        for p in (default_cache / "golden").glob("base-*.tar.zst"):
            os.link(p, cache / "golden" / p.name)
    if stage == "export":
        cache = default_cache  # base and configure cached: the build goes straight to export
    inv_path = make_testbed_inventory(workdir, f"kill-{stage}.yml", store=str(kill_store), cache=str(cache))
    assert run_cli("-i", str(inv_path), "boot", "--image", "golden", "node0", "node1").returncode == 0
    before = _visible_store(kill_store)
    assert any(k.startswith("boot/") for k in before)

    trigger, delay, busy = KILL_POINTS[stage]
    cmd = [sys.executable, "cluster.py", "-i", str(inv_path), "image", "build", "golden"]
    proc = subprocess.Popen(cmd, cwd=Path(__file__).parent.parent, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if trigger in line:
            break
    else:
        pytest.fail(f"build ended before {stage} began:\n{''.join(seen)}")
    time.sleep(delay)
    assert proc.poll() is None, f"build finished before the kill:\n{''.join(seen)}"
    below = _descendants(proc.pid)
    if busy:
        assert any(busy in cmd for cmd in below.values()), f"{busy} was not running: {below}"
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    deadline = time.monotonic() + 10  # the kernel ends the build's PID namespace with its first process
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in below):
        time.sleep(0.2)
    survivors = {pid: cmd for pid, cmd in below.items() if Path(f"/proc/{pid}").exists()}
    assert survivors == {}, "nothing of a killed build keeps running (and writing into the next build's staging)"

    assert _visible_store(kill_store) == before
    with open("/proc/mounts") as f:
        assert str(kill_store) not in f.read(), "the chroot's mounts died with the build's mount namespace"
    with Store(kill_store).lock():  # released by the kernel when the holder died
        pass


def test_two_builds_at_once_are_refused(golden_build, workdir, kill_store):
    inv_path = make_testbed_inventory(workdir, "locked.yml", store=str(kill_store))
    before = _visible_store(kill_store)
    with Store(kill_store).lock():
        proc = run_cli("-i", str(inv_path), "image", "build", "golden")
    assert proc.returncode == 1
    assert "another build is running" in proc.stderr and "Traceback" not in proc.stderr
    assert _visible_store(kill_store) == before


def test_gc_never_deletes_what_a_node_boots(golden_build, workdir, kill_store):
    inv_path = make_testbed_inventory(workdir, "gc.yml", store=str(kill_store))
    store = Store(kill_store)
    src = store.get(ImageRef.parse(golden_build["ref"])).path
    newer = "29990101T000000Z-ffffffff"
    shutil.copytree(src, kill_store / "golden" / newer)
    qemu_nodes = ("node0", "node1")
    assert run_cli("-i", str(inv_path), "boot", "--image", golden_build["ref"], *qemu_nodes).returncode == 0
    proc = run_cli("-i", str(inv_path), "image", "gc", "--keep", "1")
    assert proc.returncode == 0 and proc.stdout.strip() == "nothing to remove"
    assert run_cli("-i", str(inv_path), "boot", "--image", f"golden@{newer}", *qemu_nodes).returncode == 0
    proc = run_cli("-i", str(inv_path), "image", "gc", "--keep", "1")
    assert proc.stdout.strip() == f"removed golden@{golden_build['version']}"
    assert [v.name for v in store.versions("golden")] == [newer]
    assert json.loads((kill_store / "boot/nodes/node0.json").read_text())["ref"] == f"golden@{newer}"
