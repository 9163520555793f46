"""`cluster.py boot --once`: the node's next boot only, then its previous choice again.

The switch back is done by dnsmasq's dhcp-script (rendered from netboot/templates) when the node has
received its one-time boot file over TFTP. These tests run that rendered script with the arguments
dnsmasq passes (`tftp <size> <address> <path>`) and compare the store with what a plain `boot` writes.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from conftest import run_cli
from test_render import VERSION, make_store_inventory, ref

from netboot import render, selection

MAC = "04-7c-16-a1-00-10"  # node0 of the fixture inventory


@pytest.fixture
def inv(tmp_path):
    inv = make_store_inventory(tmp_path)
    hook = tmp_path / render.SERVICE_FILES["tftp-hook"]
    opts = render.RenderOptions(deploy_root=str(tmp_path))
    render.write_atomic(hook, render.service_files(inv, opts)[render.SERVICE_FILES["tftp-hook"]], 0o755)
    return inv


def tftp_done(inv, rel: str) -> subprocess.CompletedProcess:
    """What dnsmasq does after sending tftp/<rel> to node0."""
    hook = inv.image.store.parent / render.SERVICE_FILES["tftp-hook"]
    return subprocess.run([hook, "tftp", "1234", "192.168.1.10", str(inv.image.store / "tftp" / rel)],
                          capture_output=True, text=True, check=True)


def snapshot(inv) -> dict[str, bytes]:
    """The store's files but the images, with the store's location taken out."""
    store = inv.image.store
    return {str(p.relative_to(store)): p.read_bytes().replace(str(store).encode(), b"@STORE@")
            for p in store.rglob("*") if p.is_file() and "golden" not in p.parts}


def plain(tmp_path, spec: str, root: str | None) -> dict[str, bytes]:
    """The store a plain `boot` writes for node0 (the expected state after the one-time boot)."""
    other = make_store_inventory(tmp_path / "expected")
    selection.point(other, ref(spec), ["node0"], root)
    return snapshot(other)


def test_once_serves_the_choice_then_the_hook_restores_the_previous_one(inv, tmp_path):
    selection.point(inv, ref("golden"), ["node0"], "nfs")
    selection.point(inv, ref("golden"), ["node0"], "http", once=True)
    store = inv.image.store
    node_script = (store / "tftp/once" / f"{MAC}.ipxe").read_text()
    assert "fetch=" in node_script, "the one-time choice, served over TFTP"
    assert "chain tftp://192.168.1.1/once/${mac:hexhyp}.ipxe" in (store / f"boot/{MAC}.ipxe").read_text()
    assert "fetch=" in (store / f"tftp/pxelinux.cfg/01-{MAC}").read_text()
    (c0,) = [c for c in selection.choices(inv) if c.node == "node0"]
    assert c0.describe() == f"golden@{VERSION} once, then golden@{VERSION}" and c0.root == "http"
    assert c0.then.root == "nfs"

    tftp_done(inv, f"once/{MAC}.ipxe")
    assert snapshot(inv) == plain(tmp_path, "golden", "nfs"), "exactly what `boot --root nfs` writes"
    assert not (store / "boot/once").exists() or not any((store / "boot/once").iterdir())


def test_pxelinux_config_transfer_ends_it_too(inv, tmp_path):
    selection.point(inv, ref("local"), ["node0"])
    selection.point(inv, ref("golden"), ["node0"], once=True)
    tftp_done(inv, f"pxelinux.cfg/01-{MAC}")
    assert snapshot(inv) == plain(tmp_path, "local", None)


def test_once_from_the_menu_returns_to_the_menu(inv, tmp_path):
    selection.point(inv, ref("golden"), ["node0"], once=True)
    tftp_done(inv, f"once/{MAC}.ipxe")
    (c0,) = [c for c in selection.choices(inv) if c.node == "node0"]
    assert str(c0.ref) == "menu"
    assert [p for p in snapshot(inv) if MAC in p or "node0" in p] == []


def test_a_second_once_keeps_the_original_fallback(inv):
    selection.point(inv, ref("local"), ["node0"])
    selection.point(inv, ref("golden"), ["node0"], "http", once=True)
    selection.point(inv, ref("golden"), ["node0"], "nfs", once=True)
    (c0,) = [c for c in selection.choices(inv) if c.node == "node0"]
    assert (c0.root, str(c0.then.ref)) == ("nfs", "local")
    assert selection.users_by_ref(inv)[ref("local")] == ["node0"] and "node0" in selection.users_by_ref(inv)[c0.ref]


def test_a_plain_boot_cancels_a_pending_once(inv, tmp_path):
    selection.point(inv, ref("local"), ["node0"])
    selection.point(inv, ref("golden"), ["node0"], once=True)
    selection.point(inv, ref("golden"), ["node0"], "http")
    tftp_done(inv, f"pxelinux.cfg/01-{MAC}")  # a late transfer must not bring "local" back
    assert snapshot(inv) == plain(tmp_path, "golden", "http")


@pytest.mark.parametrize("args", [
    ["old", "04:7c:16:a1:00:10", "192.168.1.10", "node0"],  # lease events: not ours
    ["tftp", "1", "192.168.1.10", "/elsewhere/undionly.kpxe"],
    ["tftp", "1", "192.168.1.10", "/x/pxelinux.cfg/01-../../boot"],  # not a MAC
])
def test_the_hook_ignores_everything_else(inv, args):
    selection.point(inv, ref("local"), ["node0"])
    selection.point(inv, ref("golden"), ["node0"], once=True)
    before = snapshot(inv)
    hook = inv.image.store.parent / render.SERVICE_FILES["tftp-hook"]
    assert subprocess.run([hook, *args]).returncode == 0
    assert snapshot(inv) == before


def test_state_file_and_cli(inv, tmp_path):
    import yaml

    src = yaml.safe_load(open(inv.path))
    src["image"]["store"] = str(inv.image.store)
    src["admin"]["ssh_public_key"] = str(inv.admin.ssh_public_key_path)
    path = tmp_path / "cluster.yml"
    path.write_text(yaml.safe_dump(src))
    assert run_cli("-i", str(path), "boot", "--image", "local", "node0").returncode == 0
    proc = run_cli("-i", str(path), "boot", "--once", "--image", "golden", "node0")
    assert proc.returncode == 0 and proc.stdout == f"node0: golden@{VERSION} (next boot only)\n"
    state = json.loads((inv.image.store / "boot/nodes/node0.json").read_text())
    assert state["then"] == {"ref": "local", "root": None}
    shown = run_cli("-i", str(path), "boot", "--show").stdout.splitlines()
    assert shown[1].split()[:5] == ["node0", f"golden@{VERSION}", "once,", "then", "local"]
    bad = run_cli("-i", str(path), "boot", "--show", "--once")
    assert bad.returncode == 2 and "--once goes with --image" in bad.stderr
    shutil.rmtree(inv.image.store / "boot/once")  # a half-gone once dir: the hook does nothing, says nothing
    tftp_done(inv, f"once/{MAC}.ipxe")
