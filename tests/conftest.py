"""Shared fixtures. Tiers: unit tests (default) and `integration` (root, QEMU, namespaces).

With ONEDOTZERO_REQUIRE_ALL_TIERS=1 (set by .ci/run) a skipped test is a failure: CI must not pass
by quietly skipping the tier that needs root.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
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


def run_cli(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """cluster.py as a user runs it: a separate process, so tracebacks and exit codes are real."""
    return subprocess.run([sys.executable, str(REPO / "cluster.py"), *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=cwd or REPO, timeout=120)
