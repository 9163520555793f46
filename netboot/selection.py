"""Per-node boot selection: what each node boots next.

State: <store>/boot/nodes/<node>.json ({"ref": "golden@V", "root": "nfs"}, and "then" while a
one-time choice is pending), plus the two small files the node's loader fetches (boot/<mac>.ipxe,
tftp/pxelinux.cfg/01-<mac>). Pointing a node elsewhere rewrites only its own files, each atomically,
with no service restart. Every node's entry is computed for that node: its own golden image (images
are per distribution and roles), its own live seed, its hardware's kernel arguments.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from image.store import ImageRef, Store, Version
from netboot import render
from onedotzero import roles
from onedotzero.errors import UserError
from onedotzero.inventory import Inventory, Node

STATE_DIR = "boot/nodes"
ONCE_DIR = "boot/once"  # per MAC: what dnsmasq's TFTP hook restores after a one-time boot
MENU = ImageRef("menu")
LOCAL = ImageRef("local")


@dataclass(frozen=True)
class Choice:
    node: str
    ref: ImageRef  # golden@V, live@V, install@V, local, or menu (never pointed anywhere)
    root: str | None
    then: Choice | None = None  # set while a one-time choice (`--once`) is pending: what comes after it

    def describe(self) -> str:
        return f"{self.ref} once, then {self.then.ref}" if self.then else str(self.ref)


def resolve(inv: Inventory, store: Store, node: Node, target: ImageRef) -> Version | None:
    """The version node would boot for target (None for the local disk); refuses what node cannot boot."""
    if target.kind == "local":
        return None
    if target.kind == "menu":
        raise UserError("the menu is not a boot choice", "use --image live, golden, install or local")
    if target.kind == "install" and node.install_disk is None:
        raise UserError(f"{node.name} has no install_disk in {inv.path}",
                        "pin the disk the install may erase (install_disk: /dev/disk/by-id/...) first")
    if target.kind != "golden":
        return store.get(target)
    spec = roles.image_spec(inv, node)
    if target.version is None:
        version = store.newest_for(spec)
        if version is None:
            raise UserError(f"no golden image for {node.name} ({spec.label}, hardware {node.hardware}) in "
                            f"{inv.image.store}", f"build it: ./cluster.py -i {inv.path} image build golden")
        return version
    version = store.get(target)
    built = version.manifest.spec
    if built != spec:
        raise UserError(f"{version.ref} is the {built.label if built else 'unlabelled'} image; {node.name} "
                        f"(hardware {node.hardware}) boots {spec.label}",
                        "point it at its own image (`--image golden`) or build one: ./cluster.py image build golden")
    return version


def entry_for(inv: Inventory, node: Node, ref: ImageRef, version: Version | None, root: str | None) -> render.Entry:
    if version is None:
        return render.LOCAL
    return render.image_entry(inv, version, root, node, install=ref.kind == "install")


def _pointed(target: ImageRef, version: Version | None) -> ImageRef:
    """What the state file records: the versioned ref (install stays install)."""
    return LOCAL if version is None else ImageRef(target.kind, version.name)


@dataclass(frozen=True)
class _Plan:
    """Everything one node's change writes, resolved before anything is written."""

    node: Node
    ref: ImageRef
    files: dict[str, str]  # store-relative path -> text
    restore: dict[str, str]  # --once: what the TFTP hook puts back after the one boot
    remove: list[str]  # --once: what the hook deletes then (files the previous choice did not have)


def point(inv: Inventory, target: ImageRef, node_names: list[str] | tuple[str, ...],
          root: str | None = None, once: bool = False) -> list[tuple[Node, ImageRef]]:
    """Point the named nodes (all when none) at an image, for good or for the next boot only (once).

    Everything is resolved before anything is written. A one-time choice is handed to the node by a
    file it fetches over TFTP; dnsmasq's dhcp-script (netboot/templates/usr/local/libexec) then renames
    the previous choice's files, prepared here, back into place."""
    store = Store(inv.image.store)
    nodes = inv.select(node_names)
    if root is not None and target.kind != "golden":
        raise UserError(f"--root applies to golden images, not {target.kind}", "drop --root")
    current = {c.node: c for c in choices(inv)}
    plans = []
    for node in nodes:
        version = resolve(inv, store, node, target)
        ref = _pointed(target, version)
        entry = entry_for(inv, node, ref, version, root)
        files = render.node_files(inv, node, entry)
        state_rel, once_script = f"{STATE_DIR}/{node.name}.json", f"tftp/once/{node.mac_hyphen}.ipxe"
        restore: dict[str, str] = {}
        remove = [once_script]
        then = None
        if once:
            then = current[node.name].then or current[node.name]  # a pending --once is replaced, not stacked
            if then.ref == MENU:
                remove += [*files, state_rel]
            else:
                before = None if then.ref == LOCAL else store.get(then.ref)  # it was resolved when chosen
                restore = render.node_files(inv, node, entry_for(inv, node, then.ref, before, then.root))
                restore[state_rel] = _state_text(then.ref, then.root)
            ipxe = f"boot/{node.mac_hyphen}.ipxe"
            files[once_script] = files[ipxe]
            files[ipxe] = render.render("boot/once.ipxe.j2", control=inv.control, node=node, e=entry)
        files[state_rel] = _state_text(ref, root, then)
        plans.append(_Plan(node, ref, files, restore, remove))
    for plan in plans:
        _write(inv, plan, once)
    return [(plan.node, plan.ref) for plan in plans]


def _state_text(ref: ImageRef, root: str | None, then: Choice | None = None) -> str:
    """A node's boot/nodes/<node>.json: its choice, and the one after it while a --once is pending."""
    state: dict = {"ref": str(ref), "root": root}
    if then is not None:
        state["then"] = {"ref": str(then.ref), "root": then.root}
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
            out.append(Choice(node.name, ImageRef.parse(data["ref"]), data.get("root"),
                              Choice(node.name, ImageRef.parse(then["ref"]), then.get("root")) if then else None))
        except FileNotFoundError:
            out.append(Choice(node.name, MENU, None))
        except (ValueError, KeyError, TypeError, UserError) as e:
            hint = f"re-point the node: cluster.py boot --image ... {node.name}"
            raise UserError(f"{path}: corrupt boot state ({e})", hint) from e
    return out


def users_by_ref(inv: Inventory) -> dict[ImageRef, list[str]]:
    """Image refs that nodes point at, now or after a one-time boot, with the nodes: never garbage-collected.
    An install choice pins its live version."""
    users: dict[ImageRef, list[str]] = {}
    for c in choices(inv):
        for ref in dict.fromkeys([c.ref, *([c.then.ref] if c.then else [])]):
            users.setdefault(ref, []).append(c.node)
            if ref.kind == "install":
                users.setdefault(ImageRef("live", ref.version), []).append(c.node)
    return users
