"""The golden-image pipeline for real: debootstrap from Debian's mirror, Ansible in the chroot,
testinfra, squashfs, atomic publish; caching, explanations, SIGKILL in every stage, the lock."""

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
from image.store import Store
from onedotzero import inventory
from onedotzero.errors import CommandError

pytestmark = [pytest.mark.integration, needs_root("debootstrap", "mksquashfs", "unsquashfs")]


def test_build_publishes_a_verified_image(golden_build):
    inv = inventory.load(golden_build["inventory"])
    version = Store(inv.image.store).get("golden", golden_build["version"])
    m = version.manifest()
    assert m["distro"] == "debian-12" and m["version"] == golden_build["version"]
    assert re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{8}", m["version"])
    assert m["input_hash"].startswith(m["version"][-8:])
    # Real package versions, read from the tree's dpkg database.
    assert re.match(r"1:9\.2p1-", m["packages"]["openssh-server"])
    assert m["packages"]["live-boot"] and m["packages"]["linux-image-amd64"]
    assert len((version.path / "packages.txt").read_text().splitlines()) == len(m["packages"])
    assert "verify: testinfra checks: done" in golden_build["log"]
    for stage in ("clean", "verify", "squashfs"):
        assert m["durations"][stage] >= 0
    listing = subprocess.run(["unsquashfs", "-l", version.path / "live/filesystem.squashfs"],
                             capture_output=True, text=True, check=True).stdout
    assert "squashfs-root/etc/onedotzero-release" in listing
    assert "squashfs-root/boot/" not in listing, "/boot stays out of the squashfs"
    assert m["sizes"]["filesystem.squashfs"] == (version.path / "live/filesystem.squashfs").stat().st_size


def test_unchanged_rebuild_is_a_noop(golden_build):
    store = Store(inventory.load(golden_build["inventory"]).image.store)
    before = [v.name for v in store.versions("golden")]
    start = time.monotonic()
    proc = run_cli("-i", str(golden_build["inventory"]), "image", "build", "golden")
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == golden_build["ref"]
    assert f"golden image up to date: {golden_build['ref']} (nothing changed)" in proc.stderr
    assert [v.name for v in store.versions("golden")] == before
    print(f"no-op rebuild: {elapsed:.2f}s")


def test_variable_change_rebuilds_from_configure(golden_build, workdir):
    inv_path = make_testbed_inventory(workdir, "relabel.yml", models_label="models2")
    proc = run_cli("-i", str(inv_path), "image", "build", "golden", timeout=1200)
    assert proc.returncode == 0, proc.stderr
    assert "base: cached, restoring" in proc.stderr
    assert "configure: rebuilt because vars.netroot_models_label changed" in proc.stderr
    ref = proc.stdout.strip()
    assert ref != golden_build["ref"]
    store = Store(inventory.load(inv_path).image.store)
    m = store.get("golden", ref.split("@")[1]).manifest()
    assert m["stages_ran"] == ["configure", "export"]
    diff = run_cli("-i", str(inv_path), "image", "diff", golden_build["ref"], ref)
    assert diff.returncode == 0 and diff.stdout.strip() == "no package changes"
    listed = run_cli("-i", str(inv_path), "image", "list")
    assert golden_build["version"] in listed.stdout and ref in listed.stdout


def test_failing_check_stops_the_build(golden_build, tmp_path):
    """A tree that breaks a promise (a private key left in it) fails verify_tree, which precedes publish."""
    cfg = golden.GoldenConfig.from_inventory(inventory.load(golden_build["inventory"]))
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


# stage -> (log line that says it started, seconds to let it run before SIGKILL)
KILL_POINTS = {
    "base": ("base: rebuilt because", 8),
    "configure": ("configure: rebuilt because", 10),
    "export": ("verify: testinfra checks", 0),
}


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
    assert run_cli("-i", str(inv_path), "boot", "--image", "golden").returncode == 0
    before = _visible_store(kill_store)
    assert any(k.startswith("boot/") for k in before)

    trigger, delay = KILL_POINTS[stage]
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
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    time.sleep(1)  # let children that got SIGKILL via PDEATHSIG go

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
    src = store.get("golden", golden_build["version"]).path
    newer = "29990101T000000Z-ffffffff"
    shutil.copytree(src, kill_store / "golden" / newer)
    assert run_cli("-i", str(inv_path), "boot", "--image", f"golden@{golden_build['version']}").returncode == 0
    proc = run_cli("-i", str(inv_path), "image", "gc", "--keep", "1")
    assert proc.returncode == 0 and proc.stdout.strip() == "nothing to remove"
    assert run_cli("-i", str(inv_path), "boot", "--image", f"golden@{newer}").returncode == 0
    proc = run_cli("-i", str(inv_path), "image", "gc", "--keep", "1")
    assert proc.stdout.strip() == f"removed golden@{golden_build['version']}"
    assert [v.name for v in store.versions("golden")] == [newer]
    assert json.loads((kill_store / "boot/nodes/node0.json").read_text())["ref"] == f"golden@{newer}"
