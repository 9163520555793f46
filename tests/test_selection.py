"""Per-node boot selection: resolves everything first, then rewrites only the named nodes' files."""

from __future__ import annotations

import pytest
from conftest import run_cli
from test_render import VERSION, make_store_inventory

from netboot import selection
from onedotzero.errors import UserError


def test_point_some_nodes_only(tmp_path):
    inv = make_store_inventory(tmp_path)
    selection.point(inv, "golden", ["node1"])
    choices = {c.node: c for c in selection.choices(inv)}
    assert choices["node0"].ref == "menu" and choices["node1"].ref == f"golden@{VERSION}"
    assert not (inv.image.store / "boot/04-7c-16-a1-00-10.ipxe").exists()
    assert selection.users_by_ref(inv) == {"menu": ["node0"], f"golden@{VERSION}": ["node1"]}


@pytest.mark.parametrize("spec,nodes,match", [
    ("golden", ["node0", "ghost"], "unknown node 'ghost'"),
    ("golden@20990101T000000Z-ffffffff", [], "no such image"),
    ("live", [], "no live image"),
    ("local@1", [], "local has no versions"),
])
def test_bad_requests_change_nothing(tmp_path, spec, nodes, match):
    inv = make_store_inventory(tmp_path)
    selection.point(inv, "local", [])
    before = {p: p.read_bytes() for p in (inv.image.store).rglob("*") if p.is_file()}
    with pytest.raises(UserError, match=match):
        selection.point(inv, spec, nodes)
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
