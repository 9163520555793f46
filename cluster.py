#!/usr/bin/env python3
"""onedotzero's command line: a thin layer over the library (onedotzero/, image/, netboot/, testbed/).

Every command reads the one inventory (--inventory, $ONEDOTZERO_INVENTORY, or ./cluster.yml).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from onedotzero.venv import use_project_venv  # noqa: E402

use_project_venv()

import click  # noqa: E402

from onedotzero import inventory as inv_mod  # noqa: E402
from onedotzero.errors import UserError  # noqa: E402
from onedotzero.log import setup_logging  # noqa: E402


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


pass_state = click.make_pass_decorator(State)


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
@click.option("--distro", help="Live only: the distro profile whose ISO to fetch (default: the inventory's).")
@click.option("--release-url", help="Live only: fetch from this mirror directory instead of the profile's.")
@pass_state
def image_build(state: State, kind: str, distro: str | None, release_url: str | None) -> None:
    """Build the inventory's image (a no-op naming the existing version if nothing changed).

    \b
    golden: debootstrap, Ansible in the chroot, testinfra, squashfs (needs root)
    live:   fetch the distro's server ISO, verify its signed checksums, extract kernel and initrd

    \b
    Example:
      sudo ./cluster.py image build golden
      ./cluster.py image build live
    """
    if kind == "live":
        import dataclasses

        from image import live

        cfg = live.LiveConfig.from_inventory(state.inv, distro)
        if release_url:
            cfg = dataclasses.replace(cfg, release_url=release_url.rstrip("/"))
        click.echo(live.build_live(cfg).ref)
        return
    if distro or release_url:
        raise click.UsageError("--distro and --release-url apply to live images")
    from image import golden

    version, _ = golden.build_golden(golden.GoldenConfig.from_inventory(state.inv))
    click.echo(version.ref)


def _store(state: State):
    from image.store import Store

    return Store(state.inv.image.store)


def _parse_ref(ref: str) -> tuple[str, str | None]:
    kind, _, name = ref.partition("@")
    return kind, (name or None)


@image.command("list")
@pass_state
def image_list(state: State) -> None:
    """List image versions: size, age, and which nodes boot each.

    \b
    Example:
      ./cluster.py image list
    """
    from netboot import selection

    users = selection.users_by_ref(state.inv)
    now = time.time()
    rows = [("IMAGE", "SIZE", "AGE", "NODES")]
    for v in _store(state).all_versions():
        age_h = (now - v.path.stat().st_mtime) / 3600
        rows.append((v.ref, f"{v.size() / 2**20:.0f} MiB", f"{age_h:.1f} h", ",".join(users.get(v.ref, [])) or "-"))
    _table(rows)


@image.command("show")
@click.argument("ref")
@pass_state
def image_show(state: State, ref: str) -> None:
    """Print a version's manifest without its package list (KIND@VERSION, or KIND for the newest).

    \b
    Example:
      ./cluster.py image show golden
    """
    m = _store(state).get(*_parse_ref(ref)).manifest()
    m["packages"] = f"{len(m.get('packages', {}))} packages (see packages.txt)"
    click.echo(json.dumps(m, indent=2))


@image.command("diff")
@click.argument("a")
@click.argument("b")
@pass_state
def image_diff(state: State, a: str, b: str) -> None:
    """Package changes between two versions (+ added, - removed, ~ changed).

    \b
    Example:
      ./cluster.py image diff golden@20261127T100000Z-1a2b3c4d golden
    """
    from image.store import diff_packages

    store = _store(state)
    lines = diff_packages(store.get(*_parse_ref(a)).manifest(), store.get(*_parse_ref(b)).manifest())
    click.echo("\n".join(lines) if lines else "no package changes")


@image.command("gc")
@click.option("--keep", type=click.IntRange(min=1), default=3, show_default=True,
              help="Versions of each kind to keep (besides any a node points at).")
@pass_state
def image_gc(state: State, keep: int) -> None:
    """Delete old versions; never one a node points at, never the newest.

    \b
    Example:
      ./cluster.py image gc --keep 2
    """
    from netboot import selection

    removed = _store(state).gc(keep, pinned=set(selection.users_by_ref(state.inv)))
    click.echo("\n".join(f"removed {v.ref}" for v in removed) or "nothing to remove")


# --- boot / netboot ---------------------------------------------------------------------------------

@cli.command("boot")
@click.option("--image", "spec", metavar="live|golden[@VERSION]|local",
              help="What the nodes boot next (newest version unless @VERSION is given).")
@click.option("--root", type=click.Choice(["nfs", "http"]),
              help="Golden only: root over NFS or fetched into RAM over HTTP (default: inventory image.root).")
@click.option("--once", is_flag=True,
              help="For the next boot only; then the node boots its previous choice again.")
@click.option("--show", is_flag=True, help="List what each node will boot, and change nothing.")
@click.argument("nodes", nargs=-1)
@pass_state
def boot(state: State, spec: str | None, root: str | None, once: bool, show: bool, nodes: tuple[str, ...]) -> None:
    """Choose what NODES (default: all) boot next. Rewrites only their small boot files, atomically.

    \b
    Example:
      ./cluster.py boot --image golden                 # every node: newest golden image
      ./cluster.py boot --image golden@V --root http node1
      ./cluster.py boot --once --image live node0     # one boot into live, then back
      ./cluster.py boot --show
    """
    from netboot import selection

    if show == bool(spec):
        raise click.UsageError("give either --image or --show")
    if show:
        if once:
            raise click.UsageError("--once goes with --image, not --show")
        rows = [("NODE", "BOOTS", "ROOT")]
        rows += [(c.node, c.describe(), c.root or "-") for c in selection.choices(state.inv)
                 if not nodes or c.node in nodes]
        _table(rows)
        return
    for node, ref in selection.point(state.inv, spec, nodes, root, once):
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
@click.option("--root", "root_dir", type=click.Path(file_okay=False), default="/", show_default=True,
              help="Where the etc/ drop-ins go (the image store's files go into the store).")
@click.option("--proxy-dhcp", is_flag=True, help="Another DHCP server owns the segment: answer PXE requests only.")
@pass_state
def netboot_render(state: State, dry_run: bool, root_dir: str, proxy_dhcp: bool) -> None:
    """Write the service drop-ins, boot loaders and menus; print each file that changed.

    \b
    Example:
      sudo ./cluster.py netboot render
    """
    from netboot import render

    files = render.planned_files(state.inv, Path(root_dir), render.RenderOptions(proxy_dhcp=proxy_dhcp))
    if dry_run:
        diffs = "".join(render.diff(p, t) for p, t in files.items())
        click.echo(diffs or "no changes\n", nl=False)
        return
    changed = [str(p) for p, t in files.items() if render.write_atomic(p, t, render.file_mode(p))]
    changed += render.install_loaders(state.inv.image.store / "tftp")
    click.echo("\n".join(f"changed {c}" for c in changed) or "unchanged")


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
    from onedotzero import power

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
    from onedotzero import power

    statuses, interrupted = power.wake(state.inv, state.inv.select(nodes), timeout)
    _status_table(statuses)
    if interrupted:
        click.echo("interrupted: stopped waiting", err=True)
        sys.exit(130)
    bad = [s.name for s in statuses if not s.ok]
    if bad:
        raise UserError(f"not up after {timeout:.0f}s: {', '.join(bad)}", "check power, BIOS wake settings, cabling")


def _power(state: State, nodes: tuple[str, ...], action: str) -> None:
    from onedotzero import power

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
    """Run the compute-node playbook (base, Wake-on-LAN, hardware roles) once every node is OK.

    \b
    Example:
      ./cluster.py compute configure
    """
    from onedotzero import ansible, power

    selected = state.inv.select(nodes)
    bad = [s for s in power.status(state.inv, selected) if not s.ok]
    if bad:
        raise UserError("not configuring: not OK: " + ", ".join(f"{s.name} ({s.error})" for s in bad),
                        "bring them up (`compute up`) or name only the nodes to configure")
    for r in ansible.playbook(state.inv, "compute.yml", [n.name for n in selected]):
        click.echo(f"{r.host}: ok={r.ok} changed={r.changed}")


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
    from onedotzero import discover

    found = discover.unknown_machines(state.inv, Path(leases))
    if not found:
        click.echo("# no unknown machines on " + state.inv.control.compute_interface)
    for i, m in enumerate(found):
        click.echo(discover.inventory_entry(state.inv, m, i))


# --- testbed ---------------------------------------------------------------------------------------

@cli.group()
@click.option("--name", default="default", show_default=True, help="Testbed name (several can run side by side).")
@click.pass_context
def testbed(ctx: click.Context, name: str) -> None:
    """The virtual cluster: control-node network in a namespace, QEMU nodes (needs root).

    \b
    Example:
      sudo ./cluster.py -i testbed/cluster.yml testbed up
      sudo ip netns exec odz-default ./cluster.py -i testbed/cluster.yml compute up
      sudo ./cluster.py -i testbed/cluster.yml testbed down
    """
    ctx.meta["testbed_name"] = name


def _bed(state: State, full: bool | None = None):
    from testbed.bed import open_testbed

    return open_testbed(state.inv, click.get_current_context().meta["testbed_name"], full)


@testbed.command("up")
@click.option("--full", is_flag=True,
              help="Full mode: a control-node VM configured by playbooks/control.yml serves the nodes "
                   "(inventory: testbed/full.yml).")
@pass_state
def testbed_up(state: State, full: bool) -> None:
    """Start the namespace, the control node's servers and the WoL listener; nodes stay off.

    \b
    Fast mode: dnsmasq, nginx and NFS run in the namespace, which plays the control node.
    Full mode: a VM boots the golden image and is configured by the control playbook; the
    namespace is a workstation on the segment (the subnet's last address).
    """
    bed = _bed(state, full)
    bed.up()
    role = "a workstation on the segment" if full else "the control node"
    click.echo(f"testbed up: run commands as {role} with `ip netns exec {bed.ns} ...`")


@testbed.command("down")
@pass_state
def testbed_down(state: State) -> None:
    """Stop every process the testbed started and delete its namespace."""
    _bed(state).down()


@testbed.command("power-on")
@click.argument("nodes", nargs=-1)
@pass_state
def testbed_power_on(state: State, nodes: tuple[str, ...]) -> None:
    """Press the power button of node VMs (default: all). Full mode has no toolkit on the control VM to
    send magic packets; in fast mode `compute up` does this with Wake-on-LAN."""
    bed = _bed(state)
    if not bed.exists():
        raise UserError(f"testbed {bed.name!r} is not up", f"start it: ./cluster.py -i {state.inv.path} testbed up")
    for node in state.inv.select(nodes):
        click.echo(f"{node.name}: {'powered on' if bed.power_on(node.name) else 'already on'}")


@testbed.command("status")
@pass_state
def testbed_status(state: State) -> None:
    """Show the namespace, services and which node VMs are powered on."""
    click.echo(json.dumps(_bed(state).status(), indent=2))


@netboot.command("preflight")
@click.option("--no-dhcp-probe", is_flag=True, help="Skip the DHCPDISCOVER probe for other DHCP servers.")
@pass_state
def netboot_preflight(state: State, no_dhcp_probe: bool) -> None:
    """Check the compute interface, its ports and the segment before serving; change nothing (root).

    \b
    Example:
      sudo ./cluster.py netboot preflight
    """
    from netboot.preflight import preflight

    problems = preflight(state.inv, probe_dhcp=not no_dhcp_probe)
    if problems:
        raise UserError("preflight failed: " + "; ".join(problems))
    click.echo(f"preflight OK: {state.inv.control.compute_interface} carries {state.inv.control.address}, "
               "ports free" + ("" if no_dhcp_probe else ", no other DHCP server"))


def _table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def main() -> None:
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
