"""Per-node boot selection: resolves everything first, then rewrites only the named nodes' files."""

from __future__ import annotations

import pytest
from conftest import run_cli
from test_render import VERSION, make_store_inventory, ref

from netboot import selection
from onedotzero.errors import UserError


def test_point_some_nodes_only(tmp_path):
    inv = make_store_inventory(tmp_path)
    selection.point(inv, ref("golden"), ["node1"])
    choices = {c.node: c for c in selection.choices(inv)}
    assert str(choices["node0"].ref) == "menu" and str(choices["node1"].ref) == f"golden@{VERSION}"
    assert not (inv.image.store / "boot/04-7c-16-a1-00-10.ipxe").exists()
    assert selection.users_by_ref(inv) == {ref("menu"): ["node0", "node2"], ref(f"golden@{VERSION}"): ["node1"]}


@pytest.mark.parametrize("spec,nodes,match", [
    ("golden", ["node0", "ghost"], "unknown node 'ghost'"),
    ("golden@20990101T000000Z-ffffffff", [], "no such image"),
    ("live", [], "no live image"),
    ("local@1", [], "local has no versions"),
    ("install", ["node1"], "node1 has no install_disk"),
    ("golden@20261127T000000Z-0123abcd", ["node1", "node2"], "node2 .* boots ubuntu-22.04"),
])
def test_bad_requests_change_nothing(tmp_path, spec, nodes, match):
    inv = make_store_inventory(tmp_path)
    selection.point(inv, ref("local"), [])
    before = {p: p.read_bytes() for p in (inv.image.store).rglob("*") if p.is_file()}
    with pytest.raises(UserError, match=match):
        selection.point(inv, ref(spec), nodes)
    after = {p: p.read_bytes() for p in (inv.image.store).rglob("*") if p.is_file()}
    assert before == after


def test_boot_show_and_point_via_cli(tmp_path):
    inv = make_store_inventory(tmp_path)
    import yaml

    src = yaml.safe_load(open(inv.path))
    src["image"]["store"] = str(inv.image.store)
    src["admin"]["ssh_public_key"] = str(inv.admin.ssh_public_key_path)
    path = tmp_path / "cluster.yml"
    path.write_text(yaml.safe_dump(src))
    proc = run_cli("-i", str(path), "boot", "--image", "golden", "--root", "http", "node0")
    assert proc.returncode == 0 and proc.stdout == f"node0: golden@{VERSION}\n"
    shown = run_cli("-i", str(path), "boot", "--show").stdout.splitlines()
    assert shown[1].split() == ["node0", f"golden@{VERSION}", "http"]
    assert shown[2].split() == ["node1", "menu", "-"]


def test_install_points_a_node_at_its_own_pinned_disk(tmp_path):
    from test_render import publish_fake

    from onedotzero import roles

    inv = make_store_inventory(tmp_path)
    publish_fake(inv.image.store, "20261127T000000Z-89abcdef", roles.ImageSpec("ubuntu-22.04", ()), kind="live")
    [(node, pointed)] = selection.point(inv, ref("install"), ["node0"])
    assert str(pointed) == "install@20261127T000000Z-89abcdef"
    script = (inv.image.store / f"boot/{node.mac_hyphen}.ipxe").read_text()
    assert "autoinstall" in script and "onto /dev/disk/by-id/nvme-Samsung_SSD_980_500GB_S64DNX0R000001" in script
    assert ref("live@20261127T000000Z-89abcdef") in selection.users_by_ref(inv), "gc keeps what an install boots"
