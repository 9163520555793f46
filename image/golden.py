"""The golden image pipeline: debootstrap -> Ansible in the chroot -> clean -> testinfra -> squashfs -> publish.

Execution flow (build_golden shows it too):
  1. preflight        on host: root, tools, keyring, disk space
  2. input_keys       on host: a hash per stage of everything that stage's output depends on
  3. bootstrap_base   on host: debootstrap into ctx.rootfs                 (cached as base-<key>.tar.zst)
  4. configure_tree   in chroot: playbooks/image.yml via community.general.chroot (cached as configured-<key>)
  5. clean_tree       on host: caches, logs, build-host traces; stamps /etc/onedotzero-release
  6. verify_tree      on host: pytest-testinfra --connection=chroot (image/checks/); failure stops the build
  7. export_image     on host: filesystem.squashfs (without /boot), vmlinuz, initrd.img, packages, manifest
  8. publish          on host: one rename of the staging directory into golden/<version>
A build runs in a private mount namespace, so the chroot's mounts vanish with it even on SIGKILL.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as dt
import hashlib
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from debian import deb822

from image.store import MANIFEST, Store, Version
from onedotzero import inventory as inv_mod
from onedotzero import paths, profiles
from onedotzero.errors import UserError
from onedotzero.log import log, step
from onedotzero.proc import require_tools, run, run_progress

KIND = "golden"
STAGES = ("base", "configure", "export")
CACHE_KEEP = 2  # cached trees kept per stage
MIN_FREE_GB = 6
CHECKS_DIR = Path(__file__).resolve().parent / "checks"
RELEASE_FILE = "etc/onedotzero-release"
CLONE_NEWNS = 0x00020000


@dataclass(frozen=True)
class GoldenConfig:
    """Everything a golden build depends on, resolved once from the inventory and the profiles."""

    distro: profiles.DistroProfile
    store: Path
    cache: Path
    playbook_vars: dict
    jobs: int = os.cpu_count() or 1

    @classmethod
    def from_inventory(cls, inv: inv_mod.Inventory) -> GoldenConfig:
        roles = sorted({r for hw in inv.hardware_profiles() for r in hw.roles})
        return cls(
            distro=profiles.distro(inv.image.distro),
            store=inv.image.store,
            cache=inv.image.cache / "golden",
            playbook_vars={
                "base_admin_user": inv.admin.user,
                "base_admin_ssh_key": inv.admin.ssh_public_key,
                "base_admin_password_hash": inv.admin.password_hash,
                "netroot_models_label": inv.image.models_label,
                "wol_macs": [n.mac for n in inv.nodes],
                "odz_image_hardware_roles": roles,
                "odz_distro_family": profiles.distro(inv.image.distro).family,
            },
        )


@dataclass
class Context:
    """Build state: the workspace and what has happened so far."""

    cfg: GoldenConfig
    workspace: Path
    keys: dict[str, str]
    version: str
    ran: list[str] = field(default_factory=list)
    durations: dict[str, float] = field(default_factory=dict)

    @property
    def rootfs(self) -> Path:
        return self.workspace / "rootfs"

    @property
    def out(self) -> Path:
        return self.workspace / "out"


# --- helpers ------------------------------------------------------------------------------------

def _digest(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _tree_digest(*roots: Path) -> str:
    h = hashlib.sha256()
    for root in roots:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for p in files:
            if "__pycache__" in p.parts:
                continue
            h.update(str(p.relative_to(paths.REPO)).encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def _package_version(name: str) -> str:
    proc = run(["dpkg-query", "-W", "-f=${Version}", name], capture=True, check=False)
    return proc.stdout.strip() if proc.returncode == 0 else "absent"


def stage_inputs(cfg: GoldenConfig) -> dict[str, dict]:
    """What each stage's output depends on; a stage's inputs include the previous stage's key."""
    d = cfg.distro
    keyring = Path(d.keyring)
    base = {
        "suite": d.suite, "mirror": d.mirror, "components": list(d.components),
        "kernel": d.kernel_package, "packages": sorted(d.packages),
        "keyring": hashlib.sha256(keyring.read_bytes()).hexdigest() if keyring.is_file() else "missing",
        "debootstrap": _package_version("debootstrap"),
    }
    roles = ["base", "netroot", "wol", *cfg.playbook_vars["odz_image_hardware_roles"]]  # what image.yml applies
    configure = {
        "base": _digest(base),
        "playbooks": _tree_digest(paths.PLAYBOOKS_DIR / "image.yml",
                                  *(paths.PLAYBOOKS_DIR / "roles" / r for r in roles)),
        **{f"vars.{k}": v for k, v in sorted(cfg.playbook_vars.items())},
    }
    export = {
        "configure": _digest(configure),
        "checks": _tree_digest(CHECKS_DIR),
        "pipeline": _tree_digest(Path(__file__)),
        "compression": f"{d.squashfs_compression}:{d.squashfs_level}",
    }
    return {"base": base, "configure": configure, "export": export}


def stage_keys(inputs: dict[str, dict]) -> dict[str, str]:
    """One hash per stage of that stage's inputs: the cache keys, and the export key names the version."""
    return {s: _digest(inputs[s]) for s in STAGES}


def why_rebuilt(cfg: GoldenConfig, stage: str, inputs: dict) -> str:
    """Names the inputs that changed since the last build of this stage."""
    last_file = cfg.cache / f"inputs-{stage}.json"
    try:
        last = json.loads(last_file.read_text())
    except (OSError, ValueError):
        return "no earlier build of this stage"
    changed = sorted(k for k in set(inputs) | set(last) if inputs.get(k) != last.get(k))
    return f"{', '.join(changed)} changed" if changed else "its cached tree is gone"


def _cache_path(cfg: GoldenConfig, stage: str, key: str) -> Path:
    return cfg.cache / f"{stage}-{key[:16]}.tar.zst"


def restore(ctx: Context, stage: str) -> bool:
    """Runs on the host. Unpacks the cached tree of `stage` into ctx.rootfs; False if not cached."""
    archive = _cache_path(ctx.cfg, stage, ctx.keys[stage])
    if not archive.is_file():
        return False
    with step(f"{stage}: cached, restoring"):
        shutil.rmtree(ctx.rootfs, ignore_errors=True)
        ctx.rootfs.mkdir()
        run(["tar", "-I", "zstd -d -T0", "-xpf", archive, "-C", ctx.rootfs,
             "--numeric-owner", "--xattrs", "--xattrs-include=*"])
    return True


def save(ctx: Context, stage: str, inputs: dict) -> None:
    """Runs on the host. Caches ctx.rootfs for `stage` (atomically) and remembers its inputs."""
    cfg = ctx.cfg
    cfg.cache.mkdir(parents=True, exist_ok=True)
    archive = _cache_path(cfg, stage, ctx.keys[stage])
    tmp = archive.with_suffix(f".tmp{os.getpid()}")
    with step(f"{stage}: caching tree"):
        run(["tar", "-I", "zstd -1 -T0", "-cpf", tmp, "-C", ctx.rootfs,
             "--numeric-owner", "--xattrs", "--xattrs-include=*", "."])
        os.rename(tmp, archive)
    (cfg.cache / f"inputs-{stage}.json").write_text(json.dumps(inputs, indent=1, default=str))
    old = sorted(cfg.cache.glob(f"{stage}-*.tar.zst"), key=lambda p: p.stat().st_mtime)
    for p in old[:-CACHE_KEEP]:
        p.unlink(missing_ok=True)


@contextlib.contextmanager
def chroot_env(root: Path) -> Iterator[None]:
    """Mounts and guards for running package scripts in root; always undone, in reverse order."""
    undo: list = []
    try:
        for src, rel, args in (("proc", "proc", ["-t", "proc"]), ("sysfs", "sys", ["-t", "sysfs"]),
                               ("/dev", "dev", ["--bind"]), ("/dev/pts", "dev/pts", ["--bind"])):
            target = root / rel
            target.mkdir(parents=True, exist_ok=True)
            run(["mount", *args, src, target])
            undo.append(lambda t=target: run(["umount", "-l", t], check=False))
        # No daemon may start during the build: there is no PID 1, and it would run in the host's namespace.
        policy = root / "usr/sbin/policy-rc.d"
        policy.write_text("#!/bin/sh\n# onedotzero build: start no services in the chroot\nexit 101\n")
        policy.chmod(0o755)
        undo.append(lambda: policy.unlink(missing_ok=True))
        resolv = root / "etc/resolv.conf"
        saved = root / "etc/resolv.conf.onedotzero-build"
        had_resolv = resolv.exists() or resolv.is_symlink()
        if had_resolv:
            os.rename(resolv, saved)
        shutil.copyfile("/etc/resolv.conf", resolv)  # the build needs the host's DNS

        def restore_resolv() -> None:
            resolv.unlink(missing_ok=True)
            if had_resolv:
                os.rename(saved, resolv)
        undo.append(restore_resolv)
        yield
    finally:
        for fn in reversed(undo):
            fn()


def enter_private_mount_namespace() -> None:
    """Move this process into its own mount namespace: the build's mounts die with it, even on SIGKILL."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNS) != 0:
        raise UserError(f"cannot create a private mount namespace: {os.strerror(ctypes.get_errno())}",
                        "run as root on a kernel with mount namespaces")
    run(["mount", "--make-rprivate", "/"])


# --- the steps ----------------------------------------------------------------------------------

def preflight(cfg: GoldenConfig) -> None:
    """Runs on the host. Refuses early, before anything is written."""
    if os.geteuid() != 0:
        raise UserError("building an image needs root (debootstrap, chroot, mounts)", "run it with sudo")
    require_tools("debootstrap", "mksquashfs", "tar", "zstd", "unshare", "mount")
    if not Path(cfg.distro.keyring).is_file():
        hint = ("build Ubuntu images on an Ubuntu host (the control node), where ubuntu-keyring provides it"
                if cfg.distro.family == "ubuntu" else "apt-get install debian-archive-keyring")
        raise UserError(f"the {cfg.distro.name} archive keyring {cfg.distro.keyring} is missing", hint)
    cfg.store.mkdir(parents=True, exist_ok=True)
    free_gb = shutil.disk_usage(cfg.store).free / 2**30
    if free_gb < MIN_FREE_GB:
        raise UserError(f"only {free_gb:.1f} GiB free on {cfg.store}", f"free at least {MIN_FREE_GB} GiB")


DEBOOTSTRAP_PHASE = re.compile(r"^I: (Retrieving|Validating|Extracting|Unpacking|Configuring|Installing) ?(\S*)")


def bootstrap_base(ctx: Context) -> None:
    """Runs on the host. In: the distro profile. Out: a minbase tree with the profile's packages at ctx.rootfs."""
    d = ctx.cfg.distro
    shutil.rmtree(ctx.rootfs, ignore_errors=True)
    with step(f"base: debootstrap {d.suite} from {d.mirror}"):
        run_progress(
            ["debootstrap", "--variant=minbase", f"--components={','.join(d.components)}",
             f"--include={','.join([d.kernel_package, *d.packages])}", f"--keyring={d.keyring}",
             d.suite, ctx.rootfs, d.mirror],
            "debootstrap", phase=re.compile(r"^I: (\w+ \S*)"),
        )


def configure_tree(ctx: Context) -> None:
    """Runs in the chroot (Ansible). In: ctx.rootfs, playbooks/image.yml, cfg.playbook_vars. Out: configured tree."""
    vars_file = ctx.workspace / "vars.json"
    vars_file.write_text(json.dumps(ctx.cfg.playbook_vars))
    ansible = Path(sys.executable).with_name("ansible-playbook")
    with chroot_env(ctx.rootfs), step("configure: ansible-playbook image.yml in the chroot"):
        run_progress(
            [ansible if ansible.exists() else "ansible-playbook", "-i", f"{ctx.rootfs},",
             "-c", "community.general.chroot", "-e", f"@{vars_file}", paths.PLAYBOOKS_DIR / "image.yml"],
            "ansible", phase=re.compile(r"^TASK \[(.*)\]"),
            env={"ANSIBLE_CONFIG": str(paths.PLAYBOOKS_DIR / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
                 "ANSIBLE_LOCAL_TEMP": str(ctx.workspace / "ansible-tmp")},
            host=f"chroot {ctx.rootfs}",
        )


def clean_tree(ctx: Context) -> None:
    """Runs on the host. In: configured ctx.rootfs. Out: no caches, logs, keys or build-host traces; stamped."""
    r = ctx.rootfs
    # The lists go; see the end for their freshness.
    patterns = ["var/lib/apt/lists/*_*", "var/lib/apt/periodic/*", "var/cache/apt/*.bin",
                "var/cache/apt/archives/*.deb", "var/cache/debconf/*-old", "var/lib/dpkg/*-old",
                "var/lib/dhcp/*.leases", "tmp/*", "var/tmp/*",
                "root/.ansible", "root/.bash_history", "root/.cache", "etc/ssh/ssh_host_*",
                "etc/resolv.conf.onedotzero-build", "usr/sbin/policy-rc.d", "etc/*-"]
    for pattern in patterns:
        for p in r.glob(pattern):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink(missing_ok=True)
    for p in (r / "var/log").rglob("*"):
        if p.is_file():
            p.write_bytes(b"")
    # Emptied lists must not look fresh: Ansible's apt cache_valid_time goes by the update stamp, else by
    # the lists directory's mtime (which emptying it just set), and would skip the update on a booted node.
    os.utime(r / "var/lib/apt/lists", (0, 0))
    # debootstrap copies the build host's hostname; an empty one lets live-boot take the DHCP name.
    (r / "etc/hostname").write_text("")
    (r / "etc/resolv.conf").unlink(missing_ok=True)
    (r / RELEASE_FILE).write_text(
        f"ONEDOTZERO_IMAGE={KIND}\nONEDOTZERO_VERSION={ctx.version}\nONEDOTZERO_DISTRO={ctx.cfg.distro.name}\n")


def verify_tree(ctx: Context) -> None:
    """Runs on the host (testinfra chroot backend). In: cleaned ctx.rootfs. Out: nothing, or the build stops."""
    v = ctx.cfg.playbook_vars
    expect = {"admin_user": v["base_admin_user"], "admin_key": v["base_admin_ssh_key"],
              "models_label": v["netroot_models_label"], "wol_macs": v["wol_macs"], "version": ctx.version}
    expect_file = ctx.workspace / "expect.json"
    expect_file.write_text(json.dumps(expect))
    with step("verify: testinfra checks"):
        run_progress(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", CHECKS_DIR,
             "-c", CHECKS_DIR / "pytest.ini", "--connection=chroot", f"--hosts={ctx.rootfs}", CHECKS_DIR],
            "testinfra", phase=re.compile(r"(\S+::\S+)"), env={"ONEDOTZERO_EXPECT": str(expect_file)},
            host=f"chroot {ctx.rootfs}",
        )


def _installed_packages(rootfs: Path) -> dict[str, str]:
    """Installed packages and versions, from the tree's dpkg database (python-debian)."""
    pkgs = {}
    with open(rootfs / "var/lib/dpkg/status") as f:
        for para in deb822.Deb822.iter_paragraphs(f):
            if para.get("Status", "").endswith(" installed"):
                pkgs[para["Package"]] = para["Version"]
    return dict(sorted(pkgs.items()))


def _kernel_files(rootfs: Path) -> tuple[Path, Path]:
    kernels = sorted((rootfs / "boot").glob("vmlinuz-*"))
    if not kernels:
        raise UserError(f"no kernel in {rootfs}/boot", "the distro profile's kernel_package must install one")
    kernel = kernels[-1]
    initrd = rootfs / "boot" / kernel.name.replace("vmlinuz-", "initrd.img-")
    if not initrd.is_file():
        raise UserError(f"no initrd for {kernel.name}", "initramfs-tools must be in the profile's packages")
    return kernel, initrd


def export_image(ctx: Context, inputs: dict) -> None:
    """Runs on the host. In: verified ctx.rootfs. Out: ctx.out with squashfs, kernel, initrd, manifest, packages."""
    d = ctx.cfg.distro
    out = ctx.out
    (out / "live").mkdir(parents=True)
    kernel, initrd = _kernel_files(ctx.rootfs)
    shutil.copyfile(kernel, out / "vmlinuz")
    shutil.copyfile(initrd, out / "initrd.img")
    squashfs = out / "live" / "filesystem.squashfs"
    start = time.monotonic()
    with step(f"export: mksquashfs ({d.squashfs_compression} level {d.squashfs_level}, {ctx.cfg.jobs} cores)"):
        level = ["-Xcompression-level", str(d.squashfs_level)] if d.squashfs_compression in ("zstd", "gzip") else []
        run(["mksquashfs", ctx.rootfs, squashfs, "-noappend", "-comp", d.squashfs_compression, *level,
             "-processors", str(ctx.cfg.jobs), "-e", "boot",
             *([] if sys.stdout.isatty() else ["-no-progress"])], capture=not sys.stdout.isatty())
    ctx.durations["squashfs"] = round(time.monotonic() - start, 1)
    packages = _installed_packages(ctx.rootfs)
    (out / "packages.txt").write_text("".join(f"{n} {v}\n" for n, v in packages.items()))
    manifest = {
        "kind": KIND,
        "version": ctx.version,
        "distro": d.name,
        "suite": d.suite,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "input_hash": ctx.keys["export"],
        "stage_keys": ctx.keys,
        "inputs": inputs,
        "kernel_version": kernel.name.removeprefix("vmlinuz-"),
        "boot": {"kernel": "vmlinuz", "initrd": "initrd.img", "squashfs": "live/filesystem.squashfs",
                 "args": list(d.boot_args)},
        "sizes": {p.name: p.stat().st_size for p in (out / "vmlinuz", out / "initrd.img", squashfs)},
        "durations": ctx.durations,
        "stages_ran": ctx.ran,
        "packages": packages,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


# --- the orchestrator ---------------------------------------------------------------------------

def new_version(export_key: str) -> str:
    return f"{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}-{export_key[:8]}"


def build_golden(cfg: GoldenConfig) -> tuple[Version, list[str]]:
    """Builds (or finds) the golden image for cfg. Returns the version and the stages that ran."""
    store = Store(cfg.store)
    inputs = stage_inputs(cfg)
    keys = stage_keys(inputs)
    existing = store.find_by_input(KIND, keys["export"])
    if existing:
        log.info("golden image up to date: %s (nothing changed)", existing.ref)
        return existing, []
    preflight(cfg)
    enter_private_mount_namespace()
    with store.lock():
        store.clear_staging()
        with store.staging(KIND) as workspace:
            ctx = Context(cfg, workspace, keys, new_version(keys["export"]))

            def timed(name: str, fn, *args) -> None:
                start = time.monotonic()
                fn(*args)
                ctx.durations[name] = round(time.monotonic() - start, 1)

            if not restore(ctx, "configure"):
                if not restore(ctx, "base"):
                    log.info("base: rebuilt because %s", why_rebuilt(cfg, "base", inputs["base"]))
                    timed("base", bootstrap_base, ctx)
                    ctx.ran.append("base")
                    save(ctx, "base", inputs["base"])
                log.info("configure: rebuilt because %s", why_rebuilt(cfg, "configure", inputs["configure"]))
                timed("configure", configure_tree, ctx)
                ctx.ran.append("configure")
                save(ctx, "configure", inputs["configure"])
            log.info("export: rebuilt because %s", why_rebuilt(cfg, "export", inputs["export"]))
            timed("clean", clean_tree, ctx)
            timed("verify", verify_tree, ctx)
            ctx.ran.append("export")
            timed("export", export_image, ctx, inputs)
            (cfg.cache / "inputs-export.json").write_text(json.dumps(inputs["export"], indent=1, default=str))
            version = store.publish(KIND, ctx.version, ctx.out)
    log.info("published %s (stages run: %s)", version.ref, ", ".join(ctx.ran))
    return version, ctx.ran
