"""The CLI: every command's --help works, and bad flags get one line and a non-zero exit."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from conftest import run_cli

import cluster


def _commands(group, prefix=()):
    yield prefix
    for name, cmd in getattr(group, "commands", {}).items():
        yield from _commands(cmd, (*prefix, name))


ALL = list(_commands(cluster.cli))


@pytest.mark.parametrize("path", ALL, ids=[" ".join(p) or "cluster.py" for p in ALL])
def test_help_everywhere(path):
    result = CliRunner().invoke(cluster.cli, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


@pytest.mark.parametrize("args,fragment", [
    (["boot", "--image", "golden", "--show"], "give either --image or --show"),
    (["boot", "--show", "--once"], "--once goes with --image"),
    (["testbed", "--name", "x", "up", "--full"], "full mode: control.compute_interface is 'eth9'"),
    (["boot", "--image", "windows"], "unknown image"),
    (["boot", "--image", "golden", "nodeX"], "unknown node 'nodeX'"),
    (["boot", "--image", "golden@20990101T000000Z-deadbeef"], "no such image golden@20990101T000000Z-deadbeef"),
    (["boot", "--image", "golden"], "no golden image for node0 (debian-12, hardware virtual-bios)"),
    (["boot", "--image", "golden@"], "no version after '@'"),
    (["boot", "--image", "install", "node0"], "node0 has no install_disk"),
    (["boot", "--image", "live", "--root", "http"], "--root applies to golden images"),
    (["boot", "--image", "golden", "--root", "iscsi"], "Invalid value for '--root'"),
    (["image", "gc", "--keep", "0"], "Invalid value for '--keep'"),
    (["image", "show", "golden@nope"], "no such image golden@nope"),
    (["image", "build", "bronze"], "'bronze' is not"),
    (["image", "build", "live"], "distro profile 'debian-12' has no live ISO"),
    (["image", "build", "golden", "--release-url", "http://x"], "--release-url, --iso and --sums apply to live images"),
    (["image", "build", "live", "--distro", "ubuntu-22.04", "--iso", "/nonexistent.iso"],
     "/nonexistent.iso is not a file"),
    (["image", "build", "live", "--distro", "ubuntu-22.04", "--sums", "/etc/hostname"],
     "--sums and --sums-signature go together"),
    (["fabric", "status"], "has no fabric: section"),
    (["compute", "up", "--timeout", "-5"], "Invalid value for '--timeout'"),
    (["compute", "status", "node9"], "unknown node 'node9'"),
    (["compute", "up"], "compute_interface 'eth9' does not exist"),
    (["frobnicate"], "No such command 'frobnicate'"),
])
def test_bad_flags_one_clear_line(args, fragment, inventory_file):
    proc = run_cli("-i", str(inventory_file), *args)
    assert proc.returncode != 0
    assert fragment in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_missing_ssh_key_is_one_line(tmp_path, keypair):
    from conftest import write_inventory

    path = write_inventory(tmp_path, keypair)
    (tmp_path / "id_ed25519.pub").unlink()
    proc = run_cli("-i", str(path), "compute", "status")
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "ssh-keygen -t ed25519" in proc.stderr
