#!/usr/bin/env python3
"""onedotzero's command line: a thin layer over the library (onedotzero/, image/, netboot/, fabric/, testbed/).

Every command reads the one inventory (--inventory, $ONEDOTZERO_INVENTORY, or ./cluster.yml) and is one
call into the library; what is here is argument handling and printing.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from onedotzero.venv import use_project_venv  # noqa: E402

use_project_venv()

import click  # noqa: E402

from bench import report as bench_report  # noqa: E402
from bench import results as bench_results  # noqa: E402
from bench import run as bench_run  # noqa: E402
from fabric import check as fabric_check  # noqa: E402
from image import golden, live  # noqa: E402
from image.store import ImageRef, Store, diff_packages  # noqa: E402
from inference import service  # noqa: E402
from models import hub, importer  # noqa: E402
from models import push as push_mod  # noqa: E402
from models.store import ModelRef, human_size, in_use, model_store  # noqa: E402
from netboot import preflight as netboot_preflight  # noqa: E402
from netboot import render, selection  # noqa: E402
from onedotzero import acceptance, discover, power  # noqa: E402
from onedotzero import compute as compute_mod  # noqa: E402
from onedotzero import inventory as inv_mod  # noqa: E402
from onedotzero.errors import UserError  # noqa: E402
from onedotzero.log import setup_logging  # noqa: E402
from onedotzero.proc import remember_interrupts  # noqa: E402
from testbed import open_testbed  # noqa: E402


class State:
    """Shared by all commands through ctx.obj; the inventory is loaded once, on first use."""

    def __init__(self, inventory_path: str | None):
        self.inventory_path = inventory_path
        self._inv: inv_mod.Inventory | None = None

    @property
    def inv(self) -> inv_mod.Inventory:
        if self._inv is None:
            self._inv = inv_mod.load(self.inventory_path)
        return self._inv

    @property
    def store(self) -> Store:
        return Store(self.inv.image.store)


pass_state = click.make_pass_decorator(State)


def image_ref(allowed: tuple[str, ...]):
    """A click callback parsing KIND[@VERSION] into an ImageRef (one clear line when it is not one)."""
    def convert(ctx, param, value):
        if value is None:
            return None
        try:
            return ImageRef.parse(value, allowed)
        except UserError as e:
            raise click.BadParameter(e.line()) from None
    return convert


@click.group(context_settings={"help_option_names": ["-h", "--help"], "auto_envvar_prefix": "ONEDOTZERO"})
@click.option("--inventory", "-i", type=click.Path(dir_okay=False), envvar="ONEDOTZERO_INVENTORY",
              help="Inventory file (default: ./cluster.yml; env ONEDOTZERO_INVENTORY).")
@click.option("-v", "--verbose", is_flag=True, help="Debug logs: every command run and its output.")
@click.pass_context
def cli(ctx: click.Context, inventory: str | None, verbose: bool) -> None:
    """Build, serve and boot the cluster's OS images, and drive its nodes.

    \b
    Example:
      ./cluster.py config show
      ./cluster.py image build golden
      ./cluster.py boot --image golden node0
      ./cluster.py compute up
    """
    setup_logging(verbose)
    ctx.obj = State(inventory)


def _table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


# --- config -----------------------------------------------------------------------------------------

@cli.group()
def config() -> None:
    """Inspect the inventory.

    \b
    Example:
      ./cluster.py -i cluster.example.yml config show
    """


@config.command("show")
@pass_state
def config_show(state: State) -> None:
    """Print the resolved, validated inventory as YAML.

    \b
    Example:
      ./cluster.py config show
    """
    click.echo(inv_mod.dump(state.inv), nl=False)


# --- image ------------------------------------------------------------------------------------------

@cli.group()
def image() -> None:
    """Build and manage versioned images in the store.

    \b
    Example:
      ./cluster.py image build golden
      ./cluster.py image list
      ./cluster.py image diff golden@A golden@B
    """


@image.command("build")
@click.argument("kind", type=click.Choice(["golden", "live"]), default="golden")
@click.option("--distro", help="Live only: the distro profile whose ISO to use (default: the inventory's).")
@click.option("--release-url", help="Live only: fetch from this mirror directory instead of the profile's.")
@click.option("--iso", type=click.Path(dir_okay=False, path_type=Path),
              help="Live only: an ISO you already have (verified against the signed sums before use).")
@click.option("--sums", type=click.Path(dir_okay=False, path_type=Path),
              help="Live only: SHA256SUMS as a file (with --sums-signature), instead of fetching it.")
@click.option("--sums-signature", type=click.Path(dir_okay=False, path_type=Path),
              help="Live only: SHA256SUMS.gpg as a file.")
@pass_state
def image_build(state: State, kind: str, distro: str | None, release_url: str | None, iso: Path | None,
                sums: Path | None, sums_signature: Path | None) -> None:
    """Build the inventory's images (a no-op naming the existing versions if nothing changed).

    \b
    golden: one image per distribution + role set the nodes need: debootstrap, Ansible in the
            chroot, testinfra, squashfs (needs root)
    live:   the distro's server ISO (fetched, or --iso), its signed checksums verified, kernel and
            initrd extracted

    \b
    Example:
      sudo ./cluster.py image build golden
      ./cluster.py image build live --iso ~/Downloads/ubuntu-22.04.5-live-server-amd64.iso
    """
    if kind == "live":
        cfg = live.LiveConfig.from_inventory(state.inv, distro, release_url, iso, sums, sums_signature)
        click.echo(live.build_live(cfg).ref)
        return
    if distro or release_url or iso or sums or sums_signature:
        raise click.UsageError("--distro, --release-url, --iso and --sums apply to live images")
    for built in golden.build_images(state.inv):
        click.echo(built.version.ref)


@image.command("list")
@pass_state
def image_list(state: State) -> None:
    """List image versions: what each is, for which hardware, size, age, and which nodes boot it.

    \b
    Example:
      ./cluster.py image list
    """
    users = selection.users_by_ref(state.inv)
    now = time.time()
    rows = [("IMAGE", "KIND", "PROFILES", "SIZE", "AGE", "NODES")]
    for v in state.store.all_versions():
        m = v.manifest
        what = m.spec.label if m.spec else m.distro
        age_h = (now - v.path.stat().st_mtime) / 3600
        rows.append((str(v.ref), what, ",".join(m.profiles) or "-", f"{v.size() / 2**20:.0f} MiB", f"{age_h:.1f} h",
                     ",".join(users.get(v.ref, [])) or "-"))
    _table(rows)


@image.command("show")
@click.argument("ref", callback=image_ref(("golden", "live")))
@pass_state
def image_show(state: State, ref: ImageRef) -> None:
    """Print a version's manifest without its package list (KIND@VERSION, or KIND for the newest).

    \b
    Example:
      ./cluster.py image show golden
    """
    m = state.store.get(ref).manifest.to_dict()
    m["packages"] = f"{len(m['packages'])} packages (see packages.txt)"
    click.echo(json.dumps(m, indent=2))


@image.command("diff")
@click.argument("a", callback=image_ref(("golden", "live")))
@click.argument("b", callback=image_ref(("golden", "live")))
@pass_state
def image_diff(state: State, a: ImageRef, b: ImageRef) -> None:
    """Package changes between two versions (+ added, - removed, ~ changed).

    \b
    Example:
      ./cluster.py image diff golden@20261127T100000Z-1a2b3c4d golden
    """
    lines = diff_packages(state.store.get(a).manifest, state.store.get(b).manifest)
    click.echo("\n".join(lines) if lines else "no package changes")


@image.command("gc")
@click.option("--keep", type=click.IntRange(min=1), default=3, show_default=True,
              help="Versions of each image to keep (besides any a node points at).")
@pass_state
def image_gc(state: State, keep: int) -> None:
    """Delete old versions; never one a node points at, never the newest of an image.

    \b
    Example:
      ./cluster.py image gc --keep 2
    """
    removed = state.store.gc(keep, pinned=set(selection.users_by_ref(state.inv)))
    click.echo("\n".join(f"removed {v.ref}" for v in removed) or "nothing to remove")


# --- boot / netboot ---------------------------------------------------------------------------------

@cli.command("boot")
@click.option("--image", "target", metavar="live|golden|install[@VERSION]|local",
              callback=image_ref(("live", "golden", "install", "local")),
              help="What the nodes boot next: each node's own golden image, the live image, a node's install "
                   "to its pinned disk, or the local disk (newest version unless @VERSION is given).")
@click.option("--root", type=click.Choice(["nfs", "http"]),
              help="Golden only: root over NFS or fetched into RAM over HTTP (default: inventory image.root).")
@click.option("--once", is_flag=True,
              help="For the next boot only; then the node boots its previous choice again.")
@click.option("--show", is_flag=True, help="List what each node will boot, and change nothing.")
@click.argument("nodes", nargs=-1)
@pass_state
def boot(state: State, target: ImageRef | None, root: str | None, once: bool, show: bool,
         nodes: tuple[str, ...]) -> None:
    """Choose what NODES (default: all) boot next. Rewrites only their small boot files, atomically.

    \b
    Example:
      ./cluster.py boot --image golden                 # every node: the newest of its own golden image
      ./cluster.py boot --image golden@V --root http node1
      ./cluster.py boot --once --image live node0     # one boot into live, then back
      ./cluster.py boot --image install node0         # autoinstall onto node0's pinned install_disk
      ./cluster.py boot --show
    """
    if show == bool(target):
        raise click.UsageError("give either --image or --show")
    if show:
        if once:
            raise click.UsageError("--once goes with --image, not --show")
        rows = [("NODE", "BOOTS", "ROOT")]
        rows += [(c.node, c.describe(), c.root or "-") for c in selection.choices(state.inv)
                 if not nodes or c.node in nodes]
        _table(rows)
        return
    for node, ref in selection.point(state.inv, target, nodes, root, once):
        click.echo(f"{node.name}: {ref}{' (next boot only)' if once else ''}")


@cli.group()
def netboot() -> None:
    """Render the control node's DHCP/TFTP/HTTP/NFS configs and boot menus.

    \b
    Example:
      ./cluster.py netboot render --dry-run
    """


@netboot.command("render")
@click.option("--dry-run", is_flag=True, help="Show the unified diff against what is deployed; write nothing.")
@click.option("--root", "root_dir", type=click.Path(file_okay=False, path_type=Path), default="/", show_default=True,
              help="Where the etc/ drop-ins go (the image store's files go into the store).")
@click.option("--proxy-dhcp", is_flag=True, help="Another DHCP server owns the segment: answer PXE requests only.")
@pass_state
def netboot_render(state: State, dry_run: bool, root_dir: Path, proxy_dhcp: bool) -> None:
    """Write the service drop-ins, boot loaders and menus; print each file that changed. A drop-in edited
    since onedotzero wrote it is backed up first (under var/backups/onedotzero) and named.

    \b
    Example:
      sudo ./cluster.py netboot render
    """
    opts = render.RenderOptions(proxy_dhcp=proxy_dhcp)
    if dry_run:
        diffs = "".join(render.diff(p, t) for p, t in render.planned_files(state.inv, root_dir, opts).items())
        click.echo(diffs or "no changes\n", nl=False)
        return
    done = render.deploy(state.inv, root_dir, opts)
    for path, backup in done.backups:
        click.echo(f"kept your edits of {path} as {backup}")
    click.echo("\n".join(f"changed {c}" for c in done.changed) or "unchanged")


@netboot.command("preflight")
@click.option("--no-dhcp-probe", is_flag=True, help="Skip the DHCPDISCOVER probe for other DHCP servers.")
@pass_state
def netboot_preflight_cmd(state: State, no_dhcp_probe: bool) -> None:
    """Check the compute interface, its ports and the segment before serving; change nothing (root).

    \b
    Example:
      sudo ./cluster.py netboot preflight
    """
    problems = netboot_preflight.preflight(state.inv, probe_dhcp=not no_dhcp_probe)
    if problems:
        raise UserError("preflight failed: " + "; ".join(problems))
    click.echo(f"preflight OK: {state.inv.control.compute_interface} carries {state.inv.control.address}, "
               "ports free" + ("" if no_dhcp_probe else ", no other DHCP server"))


# --- compute ---------------------------------------------------------------------------------------

@cli.group()
def compute() -> None:
    """Power and status of the compute nodes (all of them, or the ones named).

    \b
    Example:
      ./cluster.py compute up
      ./cluster.py compute status node0
    """


def _status_table(statuses) -> None:
    rows = [("NODE", "STATE", "IMAGE", "VERSION", "UPTIME", "DETAIL")]
    rows += [(s.name, "up" if s.ok else "DOWN", s.image, s.version, s.uptime, s.error) for s in statuses]
    _table(rows)


@compute.command("status")
@click.argument("nodes", nargs=-1)
@pass_state
def compute_status(state: State, nodes: tuple[str, ...]) -> None:
    """SSH into every node in parallel; exit 0 only if every node is up on an onedotzero image.

    \b
    Example:
      ./cluster.py compute status
    """
    statuses = power.status(state.inv, state.inv.select(nodes))
    _status_table(statuses)
    bad = [s.name for s in statuses if not s.ok]
    if bad:
        raise UserError(f"not OK: {', '.join(bad)}")


@compute.command("up")
@click.option("--timeout", type=click.FloatRange(min=1), help="Give up after this many seconds (default: wait).")
@click.argument("nodes", nargs=-1)
@pass_state
def compute_up(state: State, timeout: float | None, nodes: tuple[str, ...]) -> None:
    """Wake nodes with magic packets and wait until each answers over SSH (Ctrl-C stops waiting).

    \b
    Example:
      sudo ./cluster.py compute up --timeout 600
    """
    statuses, interrupted = power.wake(state.inv, state.inv.select(nodes), timeout)
    _status_table(statuses)
    if interrupted:
        click.echo("interrupted: stopped waiting", err=True)
        sys.exit(130)
    bad = [s.name for s in statuses if not s.ok]
    if bad:
        raise UserError(f"not up after {timeout:.0f}s: {', '.join(bad)}", "check power, BIOS wake settings, cabling")


def _power(state: State, nodes: tuple[str, ...], action: str) -> None:
    results = power.power_action(state.inv, state.inv.select(nodes), action)
    for r in results:
        click.echo(f"{r.name}: {r.message}")
    bad = [r.name for r in results if not r.ok]
    if bad:
        raise UserError(f"{action} failed on: {', '.join(bad)}")


@compute.command("down")
@click.argument("nodes", nargs=-1)
@pass_state
def compute_down(state: State, nodes: tuple[str, ...]) -> None:
    """Shut nodes down over SSH (`shutdown -h now`); a node already down is reported.

    \b
    Example:
      ./cluster.py compute down node1
    """
    _power(state, nodes, "down")


@compute.command("restart")
@click.argument("nodes", nargs=-1)
@pass_state
def compute_restart(state: State, nodes: tuple[str, ...]) -> None:
    """Reboot nodes over SSH (`shutdown -r now`); they boot what `boot` chose.

    \b
    Example:
      ./cluster.py compute restart
    """
    _power(state, nodes, "restart")


@compute.command("configure")
@click.argument("nodes", nargs=-1)
@pass_state
def compute_configure(state: State, nodes: tuple[str, ...]) -> None:
    """Run the compute-node playbook (each node's image roles) once every node is OK, then the nodes'
    hardware acceptance checks (`compute check`).

    \b
    Example:
      ./cluster.py compute configure
    """
    selected = state.inv.select(nodes)
    for r in compute_mod.configure(state.inv, selected):
        click.echo(f"{r.host}: ok={r.ok} changed={r.changed}")
    _acceptance(state, selected)


def _acceptance(state: State, nodes) -> None:
    checks = compute_mod.check(state.inv, nodes)
    _table(acceptance.rows(checks))
    problems = [p for c in checks for p in c.problems()]
    if problems:
        raise UserError("acceptance failed: " + "; ".join(problems))


@compute.command("check")
@click.argument("nodes", nargs=-1)
@pass_state
def compute_check(state: State, nodes: tuple[str, ...]) -> None:
    """Each node's hardware acceptance checks, in parallel: the GPU its profile expects in `clinfo -l` and
    `vulkaninfo --summary`, the admin user opening the render node, the kernel at least the profile's
    minimum. Exit 1 naming each node and what is missing, with the command's output.

    \b
    Example:
      ./cluster.py compute check
    """
    _acceptance(state, state.inv.select(nodes))


@compute.command("run")
@click.argument("command")
@click.argument("nodes", nargs=-1)
@click.option("--timeout", type=click.FloatRange(min=1), help="Give up on a node after this many seconds.")
@pass_state
def compute_run(state: State, command: str, nodes: tuple[str, ...], timeout: float | None) -> None:
    """Run COMMAND on NODES (default: all) in parallel as the admin user; every output line is prefixed with
    its node; then a summary. Exit 1 if any node failed or was unreachable.

    \b
    Example:
      ./cluster.py compute run 'uptime'
      ./cluster.py compute run 'sudo journalctl -u ssh -n 5' node0 node1
    """
    results = compute_mod.run(state.inv, state.inv.select(nodes), command, click.echo, timeout)
    click.echo()
    _table([("NODE", "RESULT"), *((r.node, r.describe()) for r in results)])
    bad = [r.node for r in results if r.code != 0]
    if bad:
        raise UserError(f"failed on {len(bad)} of {len(results)} nodes: {', '.join(bad)}")


@compute.command("ssh", context_settings={"ignore_unknown_options": True})
@click.argument("node")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@pass_state
def compute_ssh(state: State, node: str, command: tuple[str, ...]) -> None:
    """An interactive shell on NODE as the inventory's admin user, with its key (or run COMMAND there).

    \b
    Example:
      ./cluster.py compute ssh node0
      ./cluster.py compute ssh node1 -- sudo dmesg
    """
    compute_mod.shell(state.inv, state.inv.node(node), command)


@compute.command("discover")
@click.option("--leases", type=click.Path(dir_okay=False), default="/var/lib/misc/dnsmasq.leases", show_default=True,
              help="dnsmasq's lease file.")
@pass_state
def compute_discover(state: State, leases: str) -> None:
    """List machines seen on the compute interface (DHCP leases, ARP) that the inventory lacks.

    Prints inventory entries ready to paste under `nodes:`.

    \b
    Example:
      ./cluster.py compute discover >> new-nodes.yml
    """
    found = discover.unknown_machines(state.inv, Path(leases))
    if not found:
        click.echo("# no unknown machines on " + state.inv.control.compute_interface)
    for i, m in enumerate(found):
        click.echo(discover.inventory_entry(state.inv, m, i))


# --- fabric ----------------------------------------------------------------------------------------

@cli.group()
def fabric() -> None:
    """The clustering links between nodes (USB4 host-to-host on the real cluster).

    \b
    Example:
      ./cluster.py fabric status
      ./cluster.py fabric test
    """


@fabric.command("status")
@pass_state
def fabric_status(state: State) -> None:
    """Each link: its interface on both ends, up, MTU, addresses, peer reachable; and every node's fabric
    address reachable from every other node (routed where not adjacent). Exit 0 only if all are.

    \b
    Example:
      ./cluster.py fabric status
    """
    report = fabric_check.status(state.inv)
    _table(report.link_rows())
    click.echo()
    _table(report.route_rows())
    if report.problems:
        raise UserError("fabric not OK: " + "; ".join(report.problems))


@fabric.command("test")
@click.option("--seconds", type=click.FloatRange(min=1, max=60), default=3, show_default=True,
              help="iperf3 run per link and direction.")
@pass_state
def fabric_test(state: State, seconds: float) -> None:
    """Throughput (iperf3, both directions) and round-trip latency (ping) of every link; exit 1 naming each
    link that is down or slower than the inventory's fabric.min_gbits.

    \b
    Example:
      ./cluster.py fabric test
    """
    report = fabric_check.test(state.inv, seconds)
    _table(report.rows())
    if report.problems:
        raise UserError("fabric test failed: " + "; ".join(report.problems))


# --- models ----------------------------------------------------------------------------------------

@cli.group()
def models() -> None:
    """Model weights: fetched once into the control node's store, verified, placed on the nodes' /models.

    \b
    Example:
      ./cluster.py models pull bartowski/Mistral-Small-Instruct-2409-GGUF --file '*Q4_K_M.gguf'
      ./cluster.py models push mistral-small-instruct-2409
      ./cluster.py models status
    """


def model_arg(ctx, param, value):
    if value is None:
        return None
    try:
        return ModelRef.parse(value)
    except UserError as e:
        raise click.BadParameter(e.line()) from None


@models.command("pull")
@click.argument("repo")
@click.option("--file", "patterns", multiple=True, metavar="PATTERN", help="Only files matching (fnmatch; repeat).")
@click.option("--revision", help="Branch, tag or commit (the commit it resolves to is recorded).")
@click.option("--name", help="The model's name in the store (default: from the repository).")
@pass_state
def models_pull(state: State, repo: str, patterns: tuple[str, ...], revision: str | None, name: str | None) -> None:
    """Fetch a Hugging Face repository's files (resumable; every LFS file's SHA-256 checked against the hub's).

    The token for gated or private repositories comes from HF_TOKEN. HF_ENDPOINT points at another hub.

    \b
    Example:
      ./cluster.py models pull bartowski/Mistral-Small-Instruct-2409-GGUF --file '*Q4_K_M.gguf' \\
          --name mistral-small-instruct-2409
    """
    m = hub.pull(model_store(state.inv), repo, list(patterns) or None, revision, name, os.environ.get("HF_TOKEN"),
                 os.environ.get("HF_ENDPOINT"))
    click.echo(m.ref)


@models.command("import")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--name", help="The model's name in the store (default: the file's or directory's name).")
@pass_state
def models_import(state: State, path: Path, name: str | None) -> None:
    """A local file or directory into the store, with its checksums (offline sites, tests).

    \b
    Example:
      ./cluster.py models import ~/Downloads/Mistral-Small-Instruct-2409-Q4_K_M.gguf --name mistral-small-instruct-2409
    """
    click.echo(importer.import_path(model_store(state.inv), path, name).ref)


@models.command("list")
@pass_state
def models_list(state: State) -> None:
    """Every stored model version: format, size, files, where it came from."""
    rows = [("MODEL", "FORMAT", "SIZE", "FILES", "SOURCE")]
    for m in model_store(state.inv).all():
        man = m.manifest
        rows.append((str(m.ref), man.format, human_size(man.total_size), str(len(man.files)),
                     man.source + (f" @{man.revision[:12]}" if man.revision else "")))
    _table(rows)


@models.command("show")
@click.argument("ref", callback=model_arg)
@pass_state
def models_show(state: State, ref: ModelRef) -> None:
    """A version's manifest: every file with its size and SHA-256, the commit a pull resolved."""
    click.echo(model_store(state.inv).get(ref).manifest.to_json(), nl=False)


@models.command("gc")
@click.option("--keep", type=click.IntRange(min=1), default=2, show_default=True,
              help="Versions of each model to keep (besides the one inference uses).")
@pass_state
def models_gc(state: State, keep: int) -> None:
    """Delete old versions; never the newest, never the one the inference section names or runs."""
    removed = model_store(state.inv).gc(keep, pinned=in_use(state.inv))
    click.echo("\n".join(f"removed {m.ref}" for m in removed) or "nothing to remove")


@models.command("push")
@click.argument("ref", callback=model_arg)
@click.argument("nodes", nargs=-1)
@click.option("--plan", "want", type=click.Choice(push_mod.PLANS), default="auto", show_default=True,
              help="auto: the faster plan by the links' rates; or force one (to compare them).")
@pass_state
def models_push(state: State, ref: ModelRef, nodes: tuple[str, ...], want: str) -> None:
    """Place a model on NODES' /models (default: all): resumable, verified on each node by checksum, atomic,
    a second push moves nothing; with a fabric, nodes may be fed by a peer (the faster plan is said).

    \b
    Example:
      ./cluster.py models push tiny-chat
      ./cluster.py models push mistral-small-instruct-2409@20261127T100000Z-1a2b3c4d node0
    """
    model = model_store(state.inv).get(ref)
    results = push_mod.push(state.inv, model, state.inv.select(nodes), click.echo, want)
    rows = [("NODE", "FROM", "MOVED", "SECONDS", "RESULT")]
    for r in results:
        rate = f" ({r.bytes * 8 / r.seconds / 1e9:.2f} Gbit/s)" if r.seconds and r.bytes else ""
        result = r.error or ("verified" + (f", re-copied {', '.join(r.recopied)}" if r.recopied else ""))
        rows.append((r.node, r.source, human_size(r.bytes) + rate, f"{r.seconds:.1f}", result))
    _table(rows)
    bad = [r.node for r in results if not r.verified]
    if bad:
        raise UserError(f"push of {model.ref} failed on: {', '.join(bad)}")


@models.command("status")
@click.option("--verify", is_flag=True, help="Check every file's SHA-256 on the nodes (reads them all).")
@click.argument("nodes", nargs=-1)
@pass_state
def models_status(state: State, verify: bool, nodes: tuple[str, ...]) -> None:
    """Which models each node holds on /models, and their checksum state."""
    held = push_mod.status(state.inv, state.inv.select(nodes), verify)
    _table([("NODE", "MODEL", "STATE"), *((h.node, h.model, h.state) for h in held)])
    bad = [f"{h.node} ({h.model}: {h.state})" for h in held if "MISMATCH" in h.state or "unreachable" in h.state]
    if bad:
        raise UserError(f"not OK: {', '.join(bad)}")


# --- inference --------------------------------------------------------------------------------------

@cli.group()
def inference() -> None:
    """The engine across the nodes (the inventory's inference section), behind the control node's endpoint.

    \b
    Example:
      ./cluster.py inference up
      ./cluster.py inference status
      ./cluster.py chat "What is a USB4 link?"
    """


@inference.command("up")
@click.option("--timeout", type=click.FloatRange(min=1), default=600, show_default=True,
              help="Seconds to wait for the head to answer /health.")
@pass_state
def inference_up(state: State, timeout: float) -> None:
    """Start the workers, then the head, with the inventory's model; wait until it answers."""
    p = service.up(state.inv, timeout)
    click.echo(f"{p.engine} serving {p.model['name']}@{p.model['version']} from {p.head.node}; "
               f"endpoint http://{state.inv.control.address}:{state.inv.inference.port}/v1/")


@inference.command("down")
@pass_state
def inference_down(state: State) -> None:
    """Stop the engine on every serving node."""
    service.down(state.inv)
    click.echo("inference down")


@inference.command("status")
@pass_state
def inference_status(state: State) -> None:
    """Each node's part and unit, the layers it holds, the model's checksum on the head, the head's health, the last
    request's tokens/s. Exit 1 naming each dead part and why."""
    st = service.status(state.inv)
    tps = f", last request {st.tokens_per_second:.1f} tokens/s" if st.tokens_per_second else ""
    click.echo(f"{st.engine}: {st.model.get('name')}@{st.model.get('version')} "
               f"(sha256 {st.model.get('sha256', '')[:12]}, {st.model.get('layers')} layers), health {st.health}{tps}")
    _table(service.status_rows(st))
    if st.problems:
        raise UserError("inference not OK: " + "; ".join(st.problems))


@inference.command("logs")
@click.option("--lines", "-n", type=click.IntRange(min=1), default=50, show_default=True)
@pass_state
def inference_logs(state: State, lines: int) -> None:
    """The engine units' journal on each serving node, every line prefixed with its node."""
    service.logs(state.inv, click.echo, lines)


@cli.command("chat")
@click.argument("question")
@click.option("--max-tokens", type=click.IntRange(min=1), default=256, show_default=True)
@pass_state
def chat(state: State, question: str, max_tokens: int) -> None:
    """Ask the cluster through the control node's endpoint; the answer streams as it is generated.
    The API key, if the cluster has one, comes from ONEDOTZERO_API_KEY.

    \b
    Example:
      ./cluster.py chat "Why does a layer split need so little bandwidth?"
    """
    timing = service.chat(state.inv, question, lambda text: click.echo(text, nl=False), max_tokens,
                          os.environ.get("ONEDOTZERO_API_KEY"))
    click.echo()
    first = f", first token after {timing['first']:.2f}s" if timing["first"] is not None else ""
    click.echo(f"({timing['pieces']} pieces in {timing['seconds']:.1f}s{first})", err=True)


# --- bench -----------------------------------------------------------------------------------------

def _ints(ctx, param, value: str) -> tuple[int, ...]:
    try:
        out = tuple(int(x) for x in value.split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r}: give comma-separated numbers, e.g. 1,2,4") from None
    if not out or any(x < 1 for x in out):
        raise click.BadParameter(f"{value!r}: every concurrency is at least 1")
    return tuple(sorted(set(out)))


def _shapes(ctx, param, value: tuple[str, ...]) -> tuple[tuple[int, int], ...]:
    out = []
    for v in value or ("128:64",):
        a, _, b = v.partition(":")
        if not (a.isdigit() and b.isdigit() and int(a) > 0 and int(b) > 0):
            raise click.BadParameter(f"{v!r}: give PROMPT:OUTPUT tokens, e.g. 128:64")
        out.append((int(a), int(b)))
    return tuple(out)


def _slo(ctx, param, value: tuple[str, ...]) -> tuple[tuple[str, float], ...]:
    out = {}
    for v in value:
        k, _, x = v.partition("=")
        try:
            limit = float(x)
        except ValueError:
            limit = -1.0
        if k not in bench_run.loadgen.SLOS or limit <= 0:
            raise click.BadParameter(f"{v!r}: give NAME=MILLISECONDS, NAME one of "
                                     f"{', '.join(bench_run.loadgen.SLOS)}, e.g. ttft_ms=500")
        out[k] = limit
    return tuple(sorted(out.items()))


@cli.group()
@click.option("--results", type=click.Path(file_okay=False, path_type=Path), default="/var/lib/onedotzero/bench",
              show_default=True, envvar="ONEDOTZERO_BENCH_RESULTS", help="The folder of recorded runs.")
@click.pass_context
def bench(ctx: click.Context, results: Path) -> None:
    """Measure the cluster's inference and name its bottleneck: recorded runs, compared, reported.

    \b
    Example:
      ./cluster.py bench run --concurrency 1,2,4 --shape 128:64 --slo ttft_ms=1000 --label usb4
      ./cluster.py bench list
      ./cluster.py bench compare usb4 gbe
      ./cluster.py bench report usb4 gbe -o report.html
    """
    ctx.meta["bench_results"] = results


def _results() -> Path:
    return click.get_current_context().meta["bench_results"]


@bench.command("setup")
@pass_state
def bench_setup(state: State) -> None:
    """Install the load generator (AIPerf, pinned) into the cache, once; needs PyPI (`bench run` does it too)."""
    click.echo(bench_run.loadgen.install(state.inv.image.cache))


@bench.command("run")
@click.option("--concurrency", default="1,2,4", show_default=True, callback=_ints, help="Concurrent streams per point.")
@click.option("--shape", "shapes", multiple=True, callback=_shapes, metavar="PROMPT:OUTPUT",
              help="Prompt and output tokens per request (repeat; default 128:64).")
@click.option("--requests", type=click.IntRange(min=1), default=8, show_default=True,
              help="Requests per load point (at least its concurrency).")
@click.option("--slo", multiple=True, callback=_slo, metavar="NAME=MS",
              help="Goodput counts requests within every SLO: ttft_ms, itl_ms, e2e_ms (repeat).")
@click.option("--label", help="A name for the run (its id is <UTC time>-<label>).")
@click.option("--no-probes", is_flag=True, help="The load alone: no bandwidth, fabric or llama-bench probes.")
@pass_state
def bench_run_cmd(state: State, concurrency: tuple[int, ...], shapes: tuple[tuple[int, int], ...], requests: int,
                  slo: tuple[tuple[str, float], ...], label: str | None, no_probes: bool) -> None:
    """Sweep the endpoint with AIPerf, probe the nodes and links, record everything as one run."""
    sweep = bench_run.Sweep(concurrency, shapes, requests, slo, not no_probes, label=label)
    path = bench_run.run(state.inv, sweep, _results(), lambda line: click.echo(line, err=True))
    click.echo(path.name)


@bench.command("list")
def bench_list() -> None:
    """The recorded runs, oldest first."""
    _table(bench_results.list_rows(_results()))


@bench.command("compare")
@click.argument("a")
@click.argument("b")
def bench_compare(a: str, b: str) -> None:
    """Two runs side by side: every load point both measured, and B's delta from A; then what differs in context."""
    ra, rb = (bench_results.load(bench_results.resolve(_results(), x)) for x in (a, b))
    _table(bench_results.compare_rows(ra, rb))
    diff = bench_results.context_rows(ra, rb)
    if len(diff) > 1:
        click.echo()
        _table(diff)


@bench.command("report")
@click.argument("runs", nargs=-1, required=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default="bench-report.html",
              show_default=True)
def bench_report_cmd(runs: tuple[str, ...], output: Path) -> None:
    """One HTML report of the runs (plots, analysis, the binding constraint), from their stored data alone."""
    data = [bench_results.load(bench_results.resolve(_results(), r)) for r in runs]
    text = bench_report.render(data)
    tmp = output.with_name(f".{output.name}.tmp")
    try:
        tmp.write_text(text)
        tmp.replace(output)
    except OSError as e:
        raise UserError(f"cannot write the report to {output}: {e.strerror}", "give -o a path in a folder you can "
                        "write") from None
    click.echo(bench_report.conclusion(data, [bench_report.analysis.analyse(d) for d in data]))
    click.echo(f"report: {output}", err=True)


# --- testbed ---------------------------------------------------------------------------------------

@cli.group()
@click.option("--name", default="default", show_default=True, help="Testbed name (several can run side by side).")
@click.pass_context
def testbed(ctx: click.Context, name: str) -> None:
    """The virtual cluster: control-node network in a namespace, QEMU and container nodes (needs root).

    \b
    Example:
      sudo ./cluster.py -i testbed/cluster.yml testbed up
      sudo ip netns exec odz-default ./cluster.py -i testbed/cluster.yml compute up
      sudo ./cluster.py -i testbed/cluster.yml testbed down
    """
    ctx.meta["testbed_name"] = name


def _bed(state: State, full: bool | None = None, lan: str | None = "gbe"):
    return open_testbed(state.inv, click.get_current_context().meta["testbed_name"], full, lan)


@testbed.command("up")
@click.option("--full", is_flag=True,
              help="Full mode: a control-node VM configured by playbooks/control.yml serves the nodes "
                   "(inventory: testbed/full.yml).")
@click.option("--lan", type=click.Choice(["gbe", "usb4", "none"]), default="gbe", show_default=True,
              help="Container nodes: the link kind their LAN ports are shaped to (none: unshaped).")
@pass_state
def testbed_up(state: State, full: bool, lan: str) -> None:
    """Start the namespaces, cables, the control node's servers and the WoL listener; nodes stay off.

    \b
    Fast mode: dnsmasq, nginx and NFS run in the namespace, which plays the control node.
    Full mode: a VM boots the golden image and is configured by the control playbook; the
    namespace is a workstation on the segment (the subnet's last address).
    """
    bed = _bed(state, full, None if lan == "none" else lan)
    bed.up()
    role = "a workstation on the segment" if full else "the control node"
    click.echo(f"testbed up: run commands as {role} with `ip netns exec {bed.ns} ...`")


@testbed.command("down")
@pass_state
def testbed_down(state: State) -> None:
    """Stop every process the testbed started and delete its namespaces."""
    _bed(state).down()


@testbed.command("power-on")
@click.argument("nodes", nargs=-1)
@pass_state
def testbed_power_on(state: State, nodes: tuple[str, ...]) -> None:
    """Press the power button of nodes (default: all). Full mode has no toolkit on the control VM to
    send magic packets; in fast mode `compute up` does this with Wake-on-LAN."""
    bed = _bed(state)
    if not bed.exists():
        raise UserError(f"testbed {bed.name!r} is not up", f"start it: ./cluster.py -i {state.inv.path} testbed up")
    for node in state.inv.select(nodes):
        click.echo(f"{node.name}: {'powered on' if bed.power_on(node.name) else 'already on'}")


@testbed.command("status")
@pass_state
def testbed_status(state: State) -> None:
    """Show the namespace, services and which nodes are powered on."""
    click.echo(json.dumps(_bed(state).status(), indent=2))


def main() -> None:
    remember_interrupts()
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except UserError as e:
        click.echo(f"error: {e.line()}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
