"""Per-node boot selection: what each node boots next.

State: <store>/boot/nodes/<node>.json ({"ref": "golden@V", "root": "nfs"}, and "then" while a
one-time choice is pending), plus the two small files the node's loader fetches (boot/<mac>.ipxe,
tftp/pxelinux.cfg/01-<mac>). Pointing a node elsewhere rewrites only its own files, each atomically,
with no service restart.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from image.store import Store, Version
from netboot import render
from onedotzero.errors import UserError
from onedotzero.inventory import Inventory, Node

STATE_DIR = "boot/nodes"
ONCE_DIR = "boot/once"  # per MAC: what dnsmasq's TFTP hook restores after a one-time boot


@dataclass(frozen=True)
class Choice:
    node: str
    ref: str  # "golden@V", "live@V", "local", or "menu" (never pointed anywhere)
    root: str | None
    then: Choice | None = None  # set while a one-time choice (`--once`) is pending: what comes after it

    def describe(self) -> str:
        return f"{self.ref} once, then {self.then.ref}" if self.then else self.ref


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


@dataclass(frozen=True)
class _Plan:
    """Everything one node's change writes, resolved before anything is written."""

    node: Node
    files: dict[str, str]  # store-relative path -> text
    restore: dict[str, str]  # --once: what the TFTP hook puts back after the one boot
    remove: list[str]  # --once: what the hook deletes then (files the previous choice did not have)


def point(inv: Inventory, spec: str, node_names: list[str] | tuple[str, ...],
          root: str | None = None, once: bool = False) -> list[tuple[Node, str]]:
    """Point the named nodes (all when none) at an image, for good or for the next boot only (once).

    Everything is resolved before anything is written. A one-time choice is handed to the node by a
    file it fetches over TFTP; dnsmasq's dhcp-script (netboot/templates/usr/local/libexec) then renames
    the previous choice's files, prepared here, back into place."""
    store = Store(inv.image.store)
    nodes = inv.select(node_names)
    kind, name = parse_image(spec)
    if root is not None and kind != "golden":
        raise UserError(f"--root applies to golden images, not {kind}", "drop --root")
    version: Version | None = None if kind == "local" else store.get(kind, name)
    ref = version.ref if version else "local"
    current = {c.node: c for c in choices(inv)}
    plans = []
    entries: dict[str, render.Entry] = {}  # one per hardware profile: nodes alike boot alike
    for node in nodes:
        if node.hardware not in entries:
            entries[node.hardware] = entry_for(inv, store, node, ref, root)
        files = render.node_files(inv, node, entries[node.hardware])
        state_rel, once_script = f"{STATE_DIR}/{node.name}.json", f"tftp/once/{node.mac_hyphen}.ipxe"
        restore: dict[str, str] = {}
        remove = [once_script]
        then = None
        if once:
            then = current[node.name].then or current[node.name]  # a pending --once is replaced, not stacked
            if then.ref == "menu":
                remove += [*files, state_rel]
            else:
                restore = render.node_files(inv, node, entry_for(inv, store, node, then.ref, then.root))
                restore[state_rel] = _state_text(then.ref, then.root)
            ipxe = f"boot/{node.mac_hyphen}.ipxe"
            files[once_script] = files[ipxe]
            files[ipxe] = render.render("boot/once.ipxe.j2", control=inv.control, node=node,
                                        e=entries[node.hardware])
        files[state_rel] = _state_text(ref, root, then)
        plans.append(_Plan(node, files, restore, remove))
    for plan in plans:
        _write(inv, plan, once)
    return [(plan.node, ref) for plan in plans]


def _state_text(ref: str, root: str | None, then: Choice | None = None) -> str:
    """A node's boot/nodes/<node>.json: its choice, and the one after it while a --once is pending."""
    state: dict = {"ref": ref, "root": root}
    if then is not None:
        state["then"] = {"ref": then.ref, "root": then.root}
    return json.dumps(state) + "\n"


def _write(inv: Inventory, plan: _Plan, once: bool) -> None:
    base = inv.image.store
    once_dir = base / ONCE_DIR / plan.node.mac_hyphen
    # A pending one-time choice goes first, so the hook can never put it back over this change.
    shutil.rmtree(once_dir, ignore_errors=True)
    if once:
        # The hook's instructions appear complete or not at all (built aside, then one rename).
        once_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=once_dir.parent, prefix=f".{plan.node.mac_hyphen}."))
        for rel, text in plan.restore.items():
            render.write_atomic(tmp / "restore" / rel, text)
        (tmp / "restore").mkdir(exist_ok=True)
        (tmp / "remove").write_text("".join(f"{rel}\n" for rel in plan.remove))
        os.chmod(tmp, 0o755)
        os.rename(tmp, once_dir)
    else:
        for rel in plan.remove:
            (base / rel).unlink(missing_ok=True)
    # The node's own files, the file it fetches first last.
    for rel in sorted(plan.files, key=lambda r: r.startswith("boot/") and r.endswith(".ipxe")):
        render.write_atomic(base / rel, plan.files[rel])


def choices(inv: Inventory) -> list[Choice]:
    """What each inventory node is set to boot (a node never pointed anywhere gets the menu)."""
    out = []
    for node in inv.nodes:
        path = inv.image.store / STATE_DIR / f"{node.name}.json"
        try:
            data = json.loads(path.read_text())
            then = data.get("then")
            out.append(Choice(node.name, data["ref"], data.get("root"),
                              Choice(node.name, then["ref"], then.get("root")) if then else None))
        except FileNotFoundError:
            out.append(Choice(node.name, "menu", None))
        except (ValueError, KeyError, TypeError) as e:
            hint = f"re-point the node: cluster.py boot --image ... {node.name}"
            raise UserError(f"{path}: corrupt boot state ({e})", hint) from e
    return out


def users_by_ref(inv: Inventory) -> dict[str, list[str]]:
    """Image refs that nodes point at, now or after a one-time boot, with the nodes: never garbage-collected."""
    users: dict[str, list[str]] = {}
    for c in choices(inv):
        for ref in {c.ref, *([c.then.ref] if c.then else [])}:
            users.setdefault(ref, []).append(c.node)
    return users
