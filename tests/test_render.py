"""Golden-file tests: every rendered file, from the fixture inventory, compared byte for byte.

Regenerate after an intended change with UPDATE_GOLDEN=1, then review the diff of tests/golden/.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
from conftest import REPO

from image.store import Store
from netboot import render, selection
from onedotzero import inventory

GOLDEN = REPO / "tests" / "golden"
VERSION = "20261127T000000Z-0123abcd"


def make_store_inventory(tmp_path: Path) -> inventory.Inventory:
    """The fixture inventory with its store moved to a temp dir holding one golden image version."""
    inv = inventory.load(REPO / "tests/data/inventory.yml")
    store = tmp_path / "store"
    version = store / "golden" / VERSION
    (version / "live").mkdir(parents=True)
    manifest = {"kind": "golden", "version": VERSION, "distro": "debian-12", "boot": {
        "kernel": "vmlinuz", "initrd": "initrd.img", "squashfs": "live/filesystem.squashfs", "args": ["quiet"]}}
    (version / "manifest.json").write_text(json.dumps(manifest))
    return dataclasses.replace(inv, image=dataclasses.replace(inv.image, store=store))


def check_golden(name: str, text: str, store: Path | None = None) -> None:
    if store is not None:
        text = text.replace(str(store), "@STORE@")
    text = text.replace(str(REPO), "@REPO@")  # the clone's location is not part of the output
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.is_file(), f"{path} missing: run with UPDATE_GOLDEN=1 and review it"
    assert text == path.read_text(), f"{name} differs from its golden file (UPDATE_GOLDEN=1 to accept)"


@pytest.mark.parametrize("rel", sorted(render.SERVICE_FILES.values()))
def test_service_files(rel):
    inv = inventory.load(REPO / "tests/data/inventory.yml")
    check_golden(rel, render.service_files(inv)[rel])


def test_proxy_dhcp_variant():
    inv = inventory.load(REPO / "tests/data/inventory.yml")
    text = render.service_files(inv, render.RenderOptions(proxy_dhcp=True))[render.SERVICE_FILES["dnsmasq"]]
    check_golden("etc/dnsmasq.d/onedotzero.conf.proxy", text)
    assert "dhcp-authoritative" not in text and ",proxy," in text


def test_boot_menus(tmp_path):
    inv = make_store_inventory(tmp_path)
    for rel, text in render.boot_files(inv, Store(inv.image.store)).items():
        check_golden(rel, text, inv.image.store)


def test_node_files_nfs_and_http(tmp_path):
    inv = make_store_inventory(tmp_path)
    selection.point(inv, "golden", [], None)
    selection.point(inv, "golden", ["node1"], "http")
    for node in inv.nodes:
        for rel in (f"boot/{node.mac_hyphen}.ipxe", f"tftp/pxelinux.cfg/01-{node.mac_hyphen}"):
            check_golden(rel, (inv.image.store / rel).read_text(), inv.image.store)


def test_dnsmasq_binds_only_the_compute_interface():
    inv = inventory.load(REPO / "tests/data/inventory.yml")
    text = render.service_files(inv)[render.SERVICE_FILES["dnsmasq"]]
    lines = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    assert [ln for ln in lines if ln.startswith("interface=")] == ["interface=enx8cae4cf44e21"]
    assert "bind-interfaces" in lines and "port=0" in lines
    boots = [ln for ln in lines if ln.startswith("dhcp-boot=")]
    assert len(boots) == 3 and all(("tag:ipxe" in b) != ("tag:!ipxe" in b) for b in boots)


def test_exports_are_read_only_and_subnet_only():
    inv = inventory.load(REPO / "tests/data/inventory.yml")
    line = render.service_files(inv)[render.SERVICE_FILES["nfs"]].strip().splitlines()[-1]
    assert line == "/srv/onedotzero-fixture 192.168.1.0/24(ro,no_subtree_check,all_squash,sync)"


def test_write_atomic_reports_change(tmp_path):
    p = tmp_path / "a" / "f"
    assert render.write_atomic(p, "x\n") is True
    assert render.write_atomic(p, "x\n") is False
    assert render.write_atomic(p, "y\n") is True and p.read_text() == "y\n"
    assert [q.name for q in p.parent.iterdir()] == ["f"], "no temp files left behind"


def test_dry_run_shows_diff_and_writes_nothing(tmp_path):
    from conftest import run_cli

    root = tmp_path / "root"
    proc = run_cli("-i", str(REPO / "tests/data/inventory.yml"), "netboot", "render", "--dry-run", "--root", str(root))
    assert proc.returncode == 0, proc.stderr
    assert f"+++ {root}/etc/dnsmasq.d/onedotzero.conf (rendered)" in proc.stdout
    assert "+interface=enx8cae4cf44e21" in proc.stdout
    assert not root.exists()


def test_missing_loaders_are_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(render.LOADERS, "lpxelinux.0", str(tmp_path / "absent/lpxelinux.0"))
    from onedotzero.errors import UserError

    with pytest.raises(UserError, match="boot loaders missing: .*absent/lpxelinux.0 .*apt-get install pxelinux"):
        render.install_loaders(tmp_path / "tftp")
    assert not (tmp_path / "tftp").exists(), "nothing half-copied"
