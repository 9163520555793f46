"""Renders the control node's service configs and the boot menus from the inventory and the image store.

Whole-file Jinja templates under netboot/templates mirror their target paths:
  etc/..., usr/...  service drop-ins, deployed under a root directory (/ on the control node)
  boot/...          iPXE scripts, written into the image store (served by nginx)
  tftp/...          pxelinux files, written into the store's TFTP root
  chat/             the chat page (inference/chat), into the store, when the inventory has an inference section
Service drop-ins end with a checksum line: a deploy that finds a file whose content no longer matches it
(an operator's edit) keeps a backup under /var/backups/onedotzero and says so before replacing it.
`deploy` is the one render-and-write sequence; `cluster.py netboot render`, the virtual cluster and the
control playbook (through the onedotzero_files lookup, which returns the same files) all use it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import difflib
import hashlib
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

import jinja2

import telemetry
from image import seed as seed_mod
from image.store import Store, Version
from onedotzero import paths, roles
from onedotzero.errors import UserError
from onedotzero.inventory import Inventory, Node
from onedotzero.log import log

SERVICE_FILES = {
    "dnsmasq": "etc/dnsmasq.d/onedotzero.conf",
    "nginx": "etc/nginx/sites-available/onedotzero",
    "nfs": "etc/exports.d/onedotzero.exports",
    "ganesha": "etc/ganesha/onedotzero.conf",
    "tftp-hook": "usr/local/libexec/onedotzero-tftp-done",  # dnsmasq's dhcp-script: ends `boot --once`
    "firewall": "etc/onedotzero/firewall.nft",  # nothing from other networks opens connections to nodes
    "prometheus": "etc/prometheus/prometheus.yml",  # the nodes' exporters and the engine (telemetry/)
    "prometheus-unit": "etc/systemd/system/prometheus.service.d/onedotzero.conf",  # its address and store
}
EXECUTABLE = {SERVICE_FILES["tftp-hook"]}
# Boot loaders copied into the TFTP root, from Debian/Ubuntu packages (pxelinux, syslinux-common, ipxe).
LOADERS = {
    "lpxelinux.0": "/usr/lib/PXELINUX/lpxelinux.0",
    "ldlinux.c32": "/usr/lib/syslinux/modules/bios/ldlinux.c32",
    "menu.c32": "/usr/lib/syslinux/modules/bios/menu.c32",
    "libutil.c32": "/usr/lib/syslinux/modules/bios/libutil.c32",
    "undionly.kpxe": "/usr/lib/ipxe/undionly.kpxe",
    "snponly.efi": "/usr/lib/ipxe/snponly.efi",
    "ipxe.efi": "/usr/lib/ipxe/ipxe.efi",
}
CHECKSUM_MARK = "# onedotzero-sha256: "  # the last line of every service drop-in
CHAT_PAGE = paths.REPO / "inference" / "chat" / "index.html"  # served by nginx from the store at /chat/
BACKUP_DIR = "var/backups/onedotzero"  # under the deploy root

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(paths.TEMPLATES_DIR),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    trim_blocks=True,
    lstrip_blocks=True,
    autoescape=False,
)


@dataclass(frozen=True)
class Entry:
    """One bootable choice: an image version served a given way, or the local disk."""

    label: str
    title: str
    kernel: str = ""
    initrd: str = ""
    args: str = ""
    local: bool = False


LOCAL = Entry("local", "Boot from the local disk", local=True)
FETCH_TRIES = 3  # a node fetches its kernel and initrd this many times before it falls back to the menu


@dataclass(frozen=True)
class RenderOptions:
    proxy_dhcp: bool = False  # another DHCP server owns the segment: answer PXE only
    nginx_log_dir: str = "/var/log/nginx"
    deploy_root: str = "/"  # where the service files go (files that name each other need it)


def render(template: str, **context) -> str:
    return _env.get_template(template).render(**context)


def image_entry(inv: Inventory, version: Version, root: str | None = None, node: Node | None = None,
                install: bool = False) -> Entry:
    """The boot entry for an image version; root is "nfs" or "http" for golden images; install (live only)
    is the node's autoinstall entry; node adds its hardware's kernel arguments (and its own live seed)."""
    m = version.manifest
    ctl = inv.control.address
    base = f"http://{ctl}/{version.kind}/{version.name}"
    args = list(m.boot.args)
    if version.kind == "golden":
        root = root or inv.image.root
        if root == "nfs":
            # Mount the export itself and point live-boot into it: no sub-directory mounts needed.
            rel = version.path.relative_to(inv.image.store)
            args = ["boot=live", "netboot=nfs", f"nfsroot={ctl}:{inv.image.store}",
                    f"live-media-path=/{rel}/live", *args]
        else:
            args = ["boot=live", f"fetch={base}/{m.boot.squashfs}", *args]
        spec = m.spec
        title = f"golden {version.name} ({spec.label if spec else m.distro}, root over {root})"
        label = f"golden-{root}"
    else:
        seed = f"http://{ctl}/seed/{node.name if node else seed_mod.DEFAULT}/{'install/' if install else ''}"
        # The profile's command line (casper or live-boot): the ISO into RAM, the node's NoCloud seed.
        args = [a.format(iso_url=f"{base}/{m.boot.iso}", seed_url=seed) for a in args]
        args += ["autoinstall"] if install else []
        disk = f" onto {node.install_disk}" if install and node and node.install_disk else ""
        title = (f"Install {m.distro}{disk} (autoinstall, erases that disk)" if install
                 else f"live {version.name} ({m.distro}, into RAM)")
        label = "install" if install else version.kind
    if node is not None:
        args += node.profile.kernel_args
    return Entry(label, title, f"{base}/{m.boot.kernel}", f"{base}/{m.boot.initrd}", " ".join(args))


def menu_entries(inv: Inventory, store: Store) -> tuple[list[Entry], str]:
    """Menu for machines without a choice: the newest live image (the default), the newest golden image
    of each kind the inventory's nodes boot, the local disk. No install entry: an unknown machine has no
    pinned install disk (`boot --image install NODE` gives a known node its own)."""
    entries = []
    live = store.versions("live")
    if live:
        entries.append(image_entry(inv, live[-1]))
    for spec in roles.images(inv):
        version = store.newest_for(spec)
        if version is not None:
            entries.append(dataclasses.replace(image_entry(inv, version), label=f"golden-{spec.key[:6]}"))
    entries.append(LOCAL)
    return entries, entries[0].label


def seal(text: str) -> str:
    """A service drop-in with its checksum line, so a later deploy can tell an operator's edit."""
    return f"{text}{CHECKSUM_MARK}{hashlib.sha256(text.encode()).hexdigest()}\n"


def edited(text: str) -> bool:
    """True if a deployed drop-in is not what the toolkit wrote (its checksum line is missing or wrong)."""
    body, _, last = text.rstrip("\n").rpartition("\n")
    if not last.startswith(CHECKSUM_MARK):
        return True
    return hashlib.sha256(f"{body}\n".encode()).hexdigest() != last.removeprefix(CHECKSUM_MARK).strip()


def prometheus_argv(inv: Inventory, config: str = "/etc/prometheus/prometheus.yml",
                    storage: str = "/var/lib/prometheus/metrics2/") -> list[str]:
    """Prometheus's command line: Debian's paths on a control node (the testbed passes its own), listening on
    the control node's compute address, the store bounded in time and size."""
    return ["/usr/bin/prometheus", f"--config.file={config}", f"--storage.tsdb.path={storage}",
            "--storage.tsdb.retention.time=30d", "--storage.tsdb.retention.size=10GB",
            f"--web.listen-address={inv.control.address}:{telemetry.PROMETHEUS_PORT}"]


def service_files(inv: Inventory, opts: RenderOptions = RenderOptions()) -> dict[str, str]:
    """The control node's service drop-ins (sealed), keyed by path relative to the deploy root."""
    ctx = {
        "inventory_path": inv.path,
        "cluster": inv.cluster,
        "control": inv.control,
        "nodes": inv.nodes,
        "store": inv.image.store,
        "dns_servers": [str(a) for a in inv.control.dns_servers],
        "proxy_dhcp": opts.proxy_dhcp,
        "nginx_log_dir": opts.nginx_log_dir,
        "tftp_hook": os.path.join(opts.deploy_root, SERVICE_FILES["tftp-hook"]),
        "inference": inv.inference,
        "head_ip": inv.node(inv.inference.head).ip if inv.inference else None,
        "scrape_seconds": telemetry.SCRAPE_SECONDS,
        "node_exporter_port": telemetry.NODE_EXPORTER_PORT,
        "prometheus_command": " ".join(prometheus_argv(inv)),
    }
    return {rel: seal(render(f"{rel}.j2", **ctx)) for rel in SERVICE_FILES.values()}


def boot_files(inv: Inventory, store: Store) -> dict[str, str]:
    """Menus shared by all machines and the live images' cloud-init seeds, keyed by path relative to the store."""
    entries, default = menu_entries(inv, store)
    ctx = {"cluster": inv.cluster, "control": inv.control, "entries": entries, "default": default}
    chat = {"chat/index.html": CHAT_PAGE.read_text()} if inv.inference else {}
    return {
        **seed_mod.seed_files(inv),
        **chat,
        "boot/default.ipxe": render("boot/default.ipxe.j2", **ctx),
        "boot/menu.ipxe": render("boot/menu.ipxe.j2", **ctx),
        "tftp/pxelinux.cfg/default": render("tftp/pxelinux.cfg/default.j2", **ctx),
    }


def node_files(inv: Inventory, node: Node, entry: Entry) -> dict[str, str]:
    """One node's choice, in the names iPXE (${mac:hexhyp}) and pxelinux (01-<mac>) look for."""
    ctx = {"control": inv.control, "node": node, "e": entry, "fetch_tries": FETCH_TRIES}
    return {
        f"boot/{node.mac_hyphen}.ipxe": render("boot/node.ipxe.j2", **ctx),
        f"tftp/pxelinux.cfg/01-{node.mac_hyphen}": render("tftp/pxelinux.cfg/node.j2", **ctx),
    }


def write_atomic(path: Path, text: str, mode: int = 0o644) -> bool:
    """Replace path with text by write + rename (readers see old or new, never half). True if changed."""
    try:
        if path.read_text() == text:
            if stat.S_IMODE(path.stat().st_mode) == mode:
                return False
            os.chmod(path, mode)
            return True
    except (FileNotFoundError, UnicodeDecodeError):
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, mode)
        os.rename(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True


def diff(path: Path, text: str) -> str:
    try:
        old = path.read_text().splitlines(keepends=True)
    except FileNotFoundError:
        old = []
    return "".join(difflib.unified_diff(old, text.splitlines(keepends=True), str(path), f"{path} (rendered)"))


def file_mode(path: str | Path) -> int:
    """The mode a rendered file is deployed with (relative or deployed path)."""
    return 0o755 if any(str(path).endswith(rel) for rel in EXECUTABLE) else 0o644


def planned_files(inv: Inventory, root: Path, opts: RenderOptions = RenderOptions()) -> dict[Path, str]:
    """Every file a deploy writes: the drop-ins under root, the menus and seeds in the store."""
    opts = dataclasses.replace(opts, deploy_root=str(root))
    files = {root / rel: text for rel, text in service_files(inv, opts).items()}
    files.update({inv.image.store / rel: text for rel, text in boot_files(inv, Store(inv.image.store)).items()})
    return files


@dataclass(frozen=True)
class Deployed:
    changed: list[str]  # every path written (or whose mode changed)
    backups: list[tuple[str, str]]  # (drop-in, backup): operator edits kept before they were replaced


def backup_path(root: Path, rel: str, now: dt.datetime | None = None) -> Path:
    stamp = f"{(now or dt.datetime.now(dt.timezone.utc)):%Y%m%dT%H%M%SZ}"
    return root / BACKUP_DIR / f"{rel}.{stamp}"


def deploy(inv: Inventory, root: Path, opts: RenderOptions = RenderOptions()) -> Deployed:
    """Render and write everything the control node serves: drop-ins under root (an edited one is backed up
    first), menus and seeds into the store, boot loaders into its TFTP root."""
    changed, backups = [], []
    opts = dataclasses.replace(opts, deploy_root=str(root))
    for rel, text in service_files(inv, opts).items():
        path = root / rel
        try:
            current = path.read_text()
        except (FileNotFoundError, UnicodeDecodeError):
            current = None
        if current is not None and current != text and edited(current):
            saved = backup_path(root, rel)
            saved.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, saved)
            backups.append((str(path), str(saved)))
            log.warning("%s was edited since onedotzero wrote it: your version is kept as %s", path, saved)
        if write_atomic(path, text, file_mode(rel)):
            changed.append(str(path))
    for rel, text in boot_files(inv, Store(inv.image.store)).items():
        if write_atomic(inv.image.store / rel, text):
            changed.append(str(inv.image.store / rel))
    changed += install_loaders(inv.image.store / "tftp")
    return Deployed(changed, backups)


def ansible_files(inv: Inventory, term: str, opts: RenderOptions = RenderOptions()) -> list[dict]:
    """What the control playbook writes (the onedotzero_files lookup): the same files `deploy` writes."""
    if term == "services":
        service_of = {v: k for k, v in SERVICE_FILES.items()}
        return [{"path": f"/{rel}", "content": text, "service": service_of[rel], "mode": f"{file_mode(rel):04o}",
                 "backup": f"/{BACKUP_DIR}/{rel}"} for rel, text in service_files(inv, opts).items()]
    if term == "menus":
        return [{"path": str(inv.image.store / rel), "content": text, "service": "menus"}
                for rel, text in boot_files(inv, Store(inv.image.store)).items()]
    if term == "loaders":
        return [{"name": name, "src": src} for name, src in LOADERS.items()]
    raise UserError(f"onedotzero_files: unknown term {term!r}", "services, menus or loaders")


def install_loaders(tftp_root: Path) -> list[str]:
    """Copy the boot loaders into the TFTP root; returns those that changed."""
    missing = [src for src in LOADERS.values() if not Path(src).is_file()]
    if missing:
        raise UserError(f"boot loaders missing: {', '.join(missing)}",
                        "apt-get install pxelinux syslinux-common ipxe (or run `make setup`)")
    changed = []
    tftp_root.mkdir(parents=True, exist_ok=True)
    for name, src in LOADERS.items():
        dest = tftp_root / name
        if not dest.exists() or dest.read_bytes() != Path(src).read_bytes():
            shutil.copyfile(src, dest)
            changed.append(str(dest))
    return changed
