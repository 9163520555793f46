"""Shared fixtures. Tiers: unit tests (default) and `integration` (root, QEMU, namespaces).

With ONEDOTZERO_REQUIRE_ALL_TIERS=1 (set by .ci/run) a skipped test is a failure: CI must not pass
by quietly skipping the tier that needs root.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("ONEDOTZERO_REQUIRE_ALL_TIERS") == "1" and report.skipped:
        report.outcome = "failed"
        report.longrepr = f"skipped, but ONEDOTZERO_REQUIRE_ALL_TIERS=1 forbids skips: {report.longrepr}"


def needs_root(*tools: str):
    """Skip an integration test where it cannot run (not root, a tool missing)."""
    missing = [t for t in tools if shutil.which(t) is None]
    reasons = (["needs root"] if os.geteuid() != 0 else []) + [f"needs {t}" for t in missing]
    return pytest.mark.skipif(bool(reasons), reason=", ".join(reasons))


@contextlib.contextmanager
def netns(name: str, *ip_commands: list[str]):
    """A network namespace the test owns: `ip -n name ...` set-up commands, always deleted afterwards."""
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        for argv in (["link", "set", "lo", "up"], *ip_commands):
            subprocess.run(["ip", "-n", name, *argv], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], capture_output=True)


@pytest.fixture
def keypair(tmp_path) -> Path:
    """A fresh ed25519 key pair; returns the private key path (public key beside it, .pub)."""
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "test", "-f", str(key)], check=True)
    return key


def write_inventory(tmp_path: Path, key: Path, **overrides) -> Path:
    """A valid inventory in tmp_path (store and cache inside it), with top-level sections overridden."""
    import yaml

    data = {
        "cluster": "test",
        "control": {"name": "ctl", "compute_interface": "eth9", "address": "192.168.1.1",
                    "subnet": "192.168.1.0/24", "dhcp_range": ["192.168.1.100", "192.168.1.199"]},
        "image": {"distro": "debian-12", "store": str(tmp_path / "store"), "cache": str(tmp_path / "cache")},
        "admin": {"user": "admin", "ssh_public_key": str(key) + ".pub",
                  "password_hash": "$6$salt$abcdefghijklmnopqrstuv"},
        "nodes": [
            {"name": "node0", "mac": "52:54:00:aa:00:10", "ip": "192.168.1.10", "hardware": "virtual-bios"},
            {"name": "node1", "mac": "52:54:00:aa:00:11", "ip": "192.168.1.11", "hardware": "virtual-uefi"},
        ],
    }
    data.update(overrides)
    path = tmp_path / "cluster.yml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def inventory_file(tmp_path, keypair) -> Path:
    return write_inventory(tmp_path, keypair)


def run_cli(*args: str, env: dict | None = None, cwd: Path | None = None, netns: str | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess:
    """cluster.py as a user runs it: a separate process, so tracebacks and exit codes are real.

    netns runs it inside a network namespace (the virtual cluster's control node)."""
    prefix = ["ip", "netns", "exec", netns] if netns else []
    return subprocess.run([*prefix, sys.executable, str(REPO / "cluster.py"), *args], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, cwd=cwd or REPO, timeout=timeout)


# --- integration fixtures: one golden build and one virtual cluster shared by the whole session ---------

@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    outcome = yield
    bed = item.funcargs.get("bed") if hasattr(item, "funcargs") else None
    if outcome.excinfo is not None and bed is not None:
        item.add_report_section("call", "virtual cluster logs", bed.diagnostics())


@pytest.fixture(scope="session")
def workdir():
    """A root-owned work area outside the clone (the build cache stays at the default, shared path)."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    d = Path(f"/var/lib/onedotzero/pytest-{os.getpid()}")
    d.mkdir(parents=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "pytest", "-f", str(d / "id_ed25519")],
                   check=True)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@contextlib.contextmanager
def running(bed):
    """A testbed up for the block, then down and its state removed. If `up` fails, its logs go into the
    report (stderr) before they are removed: `up` already ended what it had started."""
    try:
        bed.up()
    except BaseException:
        if bed.state.is_dir():
            print(bed.diagnostics(), file=sys.stderr)
        shutil.rmtree(bed.state, ignore_errors=True)
        raise
    try:
        yield bed
    finally:
        bed.down()
        shutil.rmtree(bed.state, ignore_errors=True)  # its logs: printed already if a test failed


def make_testbed_inventory(workdir: Path, name: str = "cluster.yml", source: str = "testbed/cluster.yml",
                           qemu_only: bool = False, **image) -> Path:
    """A testbed inventory (source) with the store, key and any image settings moved for this session;
    qemu_only keeps the QEMU nodes alone (one image to build)."""
    import yaml

    data = yaml.safe_load((REPO / source).read_text())
    if qemu_only:
        data["nodes"] = [n for n in data["nodes"] if n["hardware"] in ("virtual-bios", "virtual-uefi")]
        data.pop("fabric", None)
        data.pop("inference", None)
    data["image"]["store"] = str(workdir / "store")
    data["image"].update(image)
    data["admin"]["ssh_public_key"] = str(workdir / "id_ed25519.pub")
    path = workdir / name
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="session")
def golden_build(workdir):
    """Builds the virtual cluster's golden images once (the QEMU nodes' and the container nodes'; cached trees
    make later sessions fast). refs: each node's own image; ref and version: node0's (the QEMU image)."""
    from image.store import Store
    from onedotzero import inventory, roles

    inv_path = make_testbed_inventory(workdir)
    start = time.monotonic()
    proc = run_cli("-i", str(inv_path), "image", "build", "golden", timeout=3600)
    assert proc.returncode == 0, proc.stderr
    inv = inventory.load(inv_path)
    store = Store(inv.image.store)
    refs = {n.name: str(store.newest_for(roles.image_spec(inv, n)).ref) for n in inv.nodes}
    assert sorted(set(refs.values())) == sorted(proc.stdout.split()), "one image per kind of node, all printed"
    return {"inventory": inv_path, "refs": refs, "ref": refs["node0"], "version": refs["node0"].split("@")[1],
            "log": proc.stderr, "seconds": time.monotonic() - start}


def boot_session_images(inv_path: Path, golden_build: dict, nodes: list[str] | tuple[str, ...]) -> None:
    """Point nodes at the images this session built (other tests publish newer versions of the same kinds)."""
    for ref in sorted({golden_build["refs"][n] for n in nodes}):
        targets = [n for n in nodes if golden_build["refs"][n] == ref]
        proc = run_cli("-i", str(inv_path), "boot", "--image", ref, *targets)
        assert proc.returncode == 0, proc.stderr
