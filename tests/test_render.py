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

from image.store import Boot, ImageRef, Manifest, Store
from netboot import render, selection
from onedotzero import inventory, roles
from onedotzero.errors import UserError

GOLDEN = REPO / "tests" / "golden"
VERSION = "20261127T000000Z-0123abcd"  # the image of node0 and node1 (intel-arc, with the fabric)
VERSION_B = "20261127T000000Z-4567cdef"  # node2's (virtual-bios)
ref = ImageRef.parse


def publish_fake(store: Path, name: str, spec: roles.ImageSpec, kind: str = "golden") -> None:
    """A version directory whose manifest says it is spec's image (no real files: renders only read it)."""
    version = store / kind / name
    (version / "live").mkdir(parents=True)
    Manifest(kind=kind, version=name, distro=spec.distro, input_hash=name[-8:] * 8, roles=spec.roles,
             boot=Boot("vmlinuz", "initrd.img", ("quiet",), squashfs="live/filesystem.squashfs")).write(version)


def make_store_inventory(tmp_path: Path) -> inventory.Inventory:
    """The fixture inventory with its store moved to a temp dir holding each of its golden images."""
    inv = inventory.load(REPO / "tests/data/inventory.yml")
    inv = dataclasses.replace(inv, image=dataclasses.replace(inv.image, store=tmp_path / "store"))
    for name, node in ((VERSION, "node0"), (VERSION_B, "node2")):
        publish_fake(inv.image.store, name, roles.image_spec(inv, inv.node(node)))
    return inv


def check_golden(name: str, text: str, store: Path | None = None) -> None:
    if render.CHECKSUM_MARK in text:  # the checksum covers the clone's path too: check it, then hide it
        assert not render.edited(text)
        body, _, _ = text.rpartition(render.CHECKSUM_MARK)
        text = f"{body}{render.CHECKSUM_MARK}@SHA256@\n"
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
    selection.point(inv, ref("golden"), [], None)
    selection.point(inv, ref("golden"), ["node1"], "http")
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
    line = render.service_files(inv)[render.SERVICE_FILES["nfs"]].strip().splitlines()[-2]
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


def test_each_node_boots_its_own_image_and_its_own_live_seed(tmp_path):
    """Two nodes of one profile share an image but never a live seed (node1 once booted with node0's)."""
    inv = make_store_inventory(tmp_path)
    selection.point(inv, ref("golden"), [])
    files = {n.name: (inv.image.store / f"boot/{n.mac_hyphen}.ipxe").read_text() for n in inv.nodes}
    assert f"golden/{VERSION}/" in files["node0"] and f"golden/{VERSION}/" in files["node1"]
    assert f"golden/{VERSION_B}/" in files["node2"]
    publish_fake(inv.image.store, "20261127T000000Z-89abcdef", roles.ImageSpec("ubuntu-22.04", ()), kind="live")
    live_manifest = inv.image.store / "live/20261127T000000Z-89abcdef/manifest.json"
    data = json.loads(live_manifest.read_text())
    data["boot"].update(iso="x.iso", args=["url={iso_url}", "ds=nocloud-net;s={seed_url}"])
    live_manifest.write_text(json.dumps(data))
    selection.point(inv, ref("live"), [])
    for node in inv.nodes:
        script = (inv.image.store / f"boot/{node.mac_hyphen}.ipxe").read_text()
        assert f"s=http://192.168.1.1/seed/{node.name}/" in script
        assert [n.name for n in inv.nodes if f"/seed/{n.name}/" in script] == [node.name]


def test_a_golden_image_of_another_kind_is_refused(tmp_path):
    inv = make_store_inventory(tmp_path)
    with pytest.raises(UserError, match=f"golden@{VERSION_B} is the ubuntu-22.04 image; node0 .* boots "
                                        r"ubuntu-22.04\+intel_arc\+fabric"):
        selection.point(inv, ref(f"golden@{VERSION_B}"), ["node0"])


def test_menu_offers_every_image_of_the_inventory(tmp_path):
    inv = make_store_inventory(tmp_path)
    menu = render.boot_files(inv, Store(inv.image.store))["boot/menu.ipxe"]
    assert f"golden {VERSION} (ubuntu-22.04+intel_arc+fabric" in menu and f"golden {VERSION_B} (ubuntu-22.04," in menu
    assert "Install" not in menu, "no install entry for machines without a pinned disk"


def test_an_operators_edit_is_backed_up_and_named(tmp_path):
    inv = inventory.load(REPO / "tests/data/inventory.yml")
    inv = dataclasses.replace(inv, image=dataclasses.replace(inv.image, store=tmp_path / "store"))
    root = tmp_path / "root"
    first = render.deploy(inv, root)
    assert first.backups == [] and str(root / render.SERVICE_FILES["dnsmasq"]) in first.changed
    assert render.deploy(inv, root).changed == [], "a second deploy writes nothing"
    conf = root / render.SERVICE_FILES["dnsmasq"]
    edited = conf.read_text().replace("dhcp-authoritative\n", "dhcp-authoritative\nlog-queries\n")
    conf.write_text(edited)
    again = render.deploy(inv, root)
    (path, backup), = again.backups
    assert path == str(conf) and Path(backup).read_text() == edited
    assert Path(backup).is_relative_to(root / "var/backups/onedotzero/etc/dnsmasq.d")
    assert "log-queries" not in conf.read_text() and not render.edited(conf.read_text())
    assert render.deploy(inv, root).backups == [], "the toolkit's own file is not an edit"


def test_edit_detection_needs_the_checksum_line():
    text = render.seal("a\nb\n")
    assert not render.edited(text)
    assert render.edited(text.replace("a", "A"))
    assert render.edited("a\nb\n"), "a file without the line (another tool's, or an older toolkit's) counts as edited"


def test_the_lookup_gives_the_playbook_the_deployed_files(tmp_path):
    inv = make_store_inventory(tmp_path)
    services = render.ansible_files(inv, "services")
    assert {f["path"].lstrip("/"): f["content"] for f in services} == render.service_files(inv)
    assert [f["name"] for f in render.ansible_files(inv, "loaders")] == list(render.LOADERS)
    assert {f["path"] for f in render.ansible_files(inv, "menus")} == \
        {str(inv.image.store / rel) for rel in render.boot_files(inv, Store(inv.image.store))}
