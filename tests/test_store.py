"""The image store: atomic publish, lock, gc that never deletes what nodes boot, manifest diffs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO

from image.store import Boot, ImageRef, Manifest, Store, diff_packages
from onedotzero.errors import UserError


def _manifest(name: str, packages: dict | None = None, roles: tuple[str, ...] = ("base",)) -> Manifest:
    return Manifest(kind="golden", version=name, distro="debian-12", input_hash=name, boot=Boot("k", "i"),
                    roles=roles, packages=packages or {})


def _staged(store: Store, name: str, packages: dict | None = None, roles: tuple[str, ...] = ("base",)):
    d = store.root / ".staging" / name
    d.mkdir(parents=True)
    _manifest(name, packages, roles).write(d)
    return d


def test_publish_is_one_rename(tmp_path):
    store = Store(tmp_path)
    v = store.publish("golden", "20260101T000000Z-aaaa", _staged(store, "x"))
    assert v.path.is_dir() and store.versions("golden") == [v]
    assert not (tmp_path / ".staging" / "x").exists()
    with pytest.raises(UserError, match="already exists"):
        store.publish("golden", "20260101T000000Z-aaaa", _staged(store, "y"))


def test_incomplete_directory_is_not_a_version(tmp_path):
    store = Store(tmp_path)
    (tmp_path / "golden" / "20260101T000000Z-bbbb").mkdir(parents=True)
    assert store.versions("golden") == []
    with pytest.raises(UserError, match="is incomplete"):
        store.get(ImageRef("golden", "20260101T000000Z-bbbb"))
    with pytest.raises(UserError, match="refusing to publish"):
        store.publish("golden", "v", tmp_path / "golden" / "20260101T000000Z-bbbb")


def test_second_build_is_refused_while_locked(tmp_path):
    store = Store(tmp_path)
    code = ("import sys; sys.path.insert(0, sys.argv[2]); from image.store import Store; from pathlib import Path\n"
            "try:\n  Store(Path(sys.argv[1])).lock().__enter__()\nexcept Exception as e:\n  print(e); sys.exit(3)")
    with store.lock():
        proc = subprocess.run([sys.executable, "-c", code, str(tmp_path), str(REPO)], capture_output=True, text=True)
    assert proc.returncode == 3 and "another build is running" in proc.stdout
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path), str(REPO)], capture_output=True, text=True)
    assert proc.returncode == 0, "the lock is released with its holder"


def test_gc_keeps_pinned_and_newest(tmp_path):
    store = Store(tmp_path)
    names = [f"2026010{i}T000000Z-cccc" for i in range(1, 6)]
    for n in names:
        store.publish("golden", n, _staged(store, n))
    other = "20260102T120000Z-dddd"  # the only version of another image: the newest of its own
    store.publish("golden", other, _staged(store, other, roles=("base", "fabric")))
    removed = store.gc(keep=1, pinned={ImageRef("golden", names[0])})
    assert [v.name for v in removed] == names[1:4]
    assert [v.name for v in store.versions("golden")] == [names[0], other, names[4]]
    with pytest.raises(UserError, match="keep at least 1"):
        store.gc(keep=0, pinned=set())


def test_diff_packages():
    a = _manifest("a", {"bash": "5.2-1", "vim": "9.0", "curl": "7.88"})
    b = _manifest("b", {"bash": "5.2-2", "curl": "7.88", "less": "590"})
    assert diff_packages(a, b) == ["~ bash 5.2-1 -> 5.2-2", "+ less 590", "- vim 9.0"]


def test_manifest_round_trip_and_refs(tmp_path):
    m = _manifest("20260101T000000Z-eeee", {"bash": "5.2"}, ("base", "netroot", "wol", "fabric"))
    m.write(tmp_path)
    assert Manifest.from_dict(json.loads((tmp_path / "manifest.json").read_text())) == m
    assert m.spec.label == "debian-12+fabric"
    assert str(ImageRef.parse("golden@20260101T000000Z-eeee")) == "golden@20260101T000000Z-eeee"
    assert ImageRef.parse("install@V").store_kind == "live" and ImageRef.parse("local").store_kind is None
    for bad, message in (("gold", "unknown image"), ("golden@", "no version"), ("local@x", "no versions")):
        with pytest.raises(UserError, match=message):
            ImageRef.parse(bad)
