"""Per-node boot selection: what each node boots next.

State: <store>/boot/nodes/<node>.json ({"ref": "golden@V", "root": "nfs"}), plus the two small files
the node's loader fetches (boot/<mac>.ipxe, tftp/pxelinux.cfg/01-<mac>). Pointing a node elsewhere
rewrites only its own files, each atomically, with no service restart.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from image.store import Store, Version
from netboot import render
from onedotzero.errors import UserError
from onedotzero.inventory import Inventory, Node

STATE_DIR = "boot/nodes"


@dataclass(frozen=True)
class Choice:
    node: str
    ref: str  # "golden@V", "live@V" or "local"
    root: str | None


def parse_image(spec: str) -> tuple[str, str | None]:
    kind, _, version = spec.partition("@")
    if kind not in ("live", "golden", "local"):
        raise UserError(f"--image {spec!r}: unknown image", "use live, golden, golden@VERSION or local")
    if kind == "local" and version:
        raise UserError(f"--image {spec!r}: local has no versions", "use --image local")
    return kind, (version or None)


def entry_for(inv: Inventory, store: Store, node: Node, ref: str, root: str | None) -> render.Entry:
    if ref == "local":
        return render.LOCAL
    kind, _, name = ref.partition("@")
    return render.image_entry(inv, store.get(kind, name), root, node)


def point(inv: Inventory, spec: str, node_names: list[str] | tuple[str, ...],
          root: str | None = None) -> list[tuple[Node, str]]:
    """Point the named nodes (all when none) at an image. Everything is resolved before anything is written."""
    store = Store(inv.image.store)
    nodes = inv.select(node_names)
    kind, name = parse_image(spec)
    if root is not None and kind != "golden":
        raise UserError(f"--root applies to golden images, not {kind}", "drop --root")
    version: Version | None = None if kind == "local" else store.get(kind, name)
    ref = version.ref if version else "local"
    planned = []
    entries: dict[str, render.Entry] = {}  # one per hardware profile: nodes alike boot alike
    for node in nodes:
        if node.hardware not in entries:
            entries[node.hardware] = entry_for(inv, store, node, ref, root)
        entry = entries[node.hardware]
        files = {inv.image.store / rel: text for rel, text in render.node_files(inv, node, entry).items()}
        state = json.dumps({"ref": ref, "root": root}) + "\n"
        planned.append((node, files, state))
    for node, files, state in planned:
        for path, text in files.items():
            render.write_atomic(path, text)
        render.write_atomic(inv.image.store / STATE_DIR / f"{node.name}.json", state)
    return [(node, ref) for node, _, _ in planned]


def choices(inv: Inventory) -> list[Choice]:
    """What each inventory node is set to boot (a node never pointed anywhere gets the menu)."""
    out = []
    for node in inv.nodes:
        path = inv.image.store / STATE_DIR / f"{node.name}.json"
        try:
            data = json.loads(path.read_text())
            out.append(Choice(node.name, data["ref"], data.get("root")))
        except FileNotFoundError:
            out.append(Choice(node.name, "menu", None))
        except (ValueError, KeyError) as e:
            hint = f"re-point the node: cluster.py boot --image ... {node.name}"
            raise UserError(f"{path}: corrupt boot state ({e})", hint) from e
    return out


def users_by_ref(inv: Inventory) -> dict[str, list[str]]:
    """Image refs that nodes point at, with the nodes: these are never garbage-collected."""
    users: dict[str, list[str]] = {}
    for c in choices(inv):
        users.setdefault(c.ref, []).append(c.node)
    return users
