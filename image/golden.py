"""The golden image pipeline: debootstrap -> Ansible in the chroot -> clean -> testinfra -> squashfs -> publish.

One image per (distribution, roles) the inventory's nodes need (onedotzero.roles.images); stages whose
inputs are equal are shared through the cache (every image of one distribution restores one base tree).

Execution flow (build_image shows it too):
  1. preflight        on host: root, tools, keyring, disk space
  2. stage_inputs     on host: a hash per stage of everything that stage's output depends on
  3. bootstrap_base   on host: debootstrap into ctx.rootfs                 (cached as base-<key>.tar.zst)
  4. configure_tree   in chroot: playbooks/image.yml via community.general.chroot, in two layers:
                        configure  the base roles (base, netroot, wol, node_exporter)  (cached as configure-<key>,
                                   shared by every image of the distribution: their variables are the same)
                        roles      the image's own roles (hardware, fabric, engines)  (cached as roles-<key>);
                                   engines the roles install are built first as cached artefacts, in a chroot
                                   of the base tree (inference/artifacts.py, ensure_artifacts)
  5. clean_tree       on host: caches, logs, build-host traces; stamps /etc/onedotzero-release
  6. verify_tree      on host: pytest-testinfra --connection=chroot (image/checks/); failure stops the build
  7. export_image     on host: filesystem.squashfs (without /boot), vmlinuz, initrd.img, packages, manifest
  8. publish          on host: one rename of the staging directory into golden/<version>
build_images runs the builds in a worker that is PID 1 of its own PID namespace, in its own mount
namespace: when the toolkit dies, even by SIGKILL, the kernel ends every process of the build (Ansible,
dpkg, update-initramfs in the chroot) and drops the chroot's mounts.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from debian import deb822

from image.store import Boot, ImageRef, Manifest, Store, Version, utc_now, version_name
from inference import artifacts
from onedotzero import inventory as inv_mod
from onedotzero import paths, profiles, roles
from onedotzero.errors import UserError
from onedotzero.log import log, setup_logging, step
from onedotzero.proc import die_with_parent, require_tools, run, run_progress

KIND = "golden"
STAGES = ("base", "configure", "roles", "export")
CACHE_KEEP = 4  # cached trees kept per stage (several images share a cache)
MIN_FREE_GB = 6
CHECKS_DIR = Path(__file__).resolve().parent / "checks"
RELEASE_FILE = "etc/onedotzero-release"


@dataclass(frozen=True)
class GoldenConfig:
    """Everything one golden build depends on, resolved once from the inventory and the profiles."""

    spec: roles.ImageSpec
    distro: profiles.DistroProfile
    store: Path
    cache: Path
    playbook_vars: dict
    profiles: tuple[str, ...] = ()  # the hardware profiles of the nodes it is built for (for `image list`)
    jobs: int = os.cpu_count() or 1

    @classmethod
    def from_inventory(cls, inv: inv_mod.Inventory, spec: roles.ImageSpec) -> GoldenConfig:
        nodes = roles.images(inv).get(spec, ())
        return cls(spec=spec, distro=profiles.distro(spec.distro), store=inv.image.store,
                   cache=inv.image.cache / "golden", playbook_vars=roles.role_vars(inv, spec, nodes),
                   profiles=tuple(sorted({n.hardware for n in nodes})))

    @classmethod
    def for_node(cls, inv: inv_mod.Inventory, node: inv_mod.Node) -> GoldenConfig:
        return cls.from_inventory(inv, roles.image_spec(inv, node))


def configs(inv: inv_mod.Inventory) -> list[GoldenConfig]:
    """One build configuration per image the inventory's nodes need."""
    return [GoldenConfig.from_inventory(inv, spec) for spec in roles.images(inv)]


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


def check_files(spec: roles.ImageSpec) -> list[Path]:
    """The testinfra checks an image of spec must pass: the common ones and one file per role that has one."""
    return [CHECKS_DIR / "test_golden.py",
            *(p for r in spec.roles if (p := CHECKS_DIR / f"test_role_{r}.py").is_file())]


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
    common = roles.BASE_ROLES
    configure = {
        "base": _digest(base),
        "playbooks": _tree_digest(paths.PLAYBOOKS_DIR / "image.yml",
                                  *(paths.PLAYBOOKS_DIR / "roles" / r for r in (*roles.SHARED_ROLES, *common))),
        **{f"vars.{k}": v for r in common for k, v in sorted(roles.vars_of(r, cfg.playbook_vars).items())},
    }
    own = cfg.spec.own_roles
    layer = {
        "configure": _digest(configure),
        "roles": list(own),
        "playbooks": _tree_digest(*(paths.PLAYBOOKS_DIR / "roles" / r for r in own)) if own else "",
        **{f"vars.{k}": v for r in own for k, v in sorted(roles.vars_of(r, cfg.playbook_vars).items())},
    }
    export = {
        "roles": _digest(layer),
        "checks": _tree_digest(CHECKS_DIR / "conftest.py", *check_files(cfg.spec)),
        "pipeline": _tree_digest(Path(__file__)),
        "compression": f"{d.squashfs_compression}:{d.squashfs_level}",
    }
    return {"base": base, "configure": configure, "roles": layer, "export": export}


def stage_keys(inputs: dict[str, dict]) -> dict[str, str]:
    """One hash per stage of that stage's inputs: the cache keys, and the export key names the version."""
    return {s: _digest(inputs[s]) for s in STAGES}


def why_rebuilt(cfg: GoldenConfig, stage: str, inputs: dict) -> str:
    """Names the inputs that changed since the last build of this stage for this image."""
    try:
        last = json.loads(_inputs_file(cfg, stage).read_text())
    except (OSError, ValueError):
        return "no earlier build of this stage"
    changed = sorted(k for k in set(inputs) | set(last) if inputs.get(k) != last.get(k))
    return f"{', '.join(changed)} changed" if changed else "its cached tree is gone"


def _inputs_file(cfg: GoldenConfig, stage: str) -> Path:
    # base and configure trees are shared by distribution, the later stages are per image
    owner = cfg.spec.distro if stage in ("base", "configure") else cfg.spec.key
    return cfg.cache / f"inputs-{stage}-{owner}.json"


def _cache_path(cfg: GoldenConfig, stage: str, key: str) -> Path:
    return cfg.cache / f"{stage}-{key[:16]}.tar.zst"


def restore(ctx: Context, stage: str) -> bool:
    """Runs on the host. Unpacks the cached tree of `stage` into ctx.rootfs; False if not cached."""
    archive = _cache_path(ctx.cfg, stage, ctx.keys[stage])
    if not archive.is_file():
        return False
    with step(f"{stage}: cached, restoring"):
        shutil.rmtree(ctx.rootfs, ignore_errors=True)
        ctx.rootfs.mkdir(parents=True)
        run(["tar", "-I", "zstd -d -T0", "-xpf", archive, "-C", ctx.rootfs,
             "--numeric-owner", "--xattrs", "--xattrs-include=*"])
    os.utime(archive)  # recently used: kept by the pruning in save()
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
    _inputs_file(cfg, stage).write_text(json.dumps(inputs, indent=1, default=str))
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


def configure_tree(ctx: Context, layer: tuple[str, ...], stage: str) -> None:
    """Runs in the chroot (Ansible). In: ctx.rootfs, playbooks/image.yml, cfg.playbook_vars. Out: the tree with
    the roles of layer applied (every variable is passed; odz_roles names the layer's roles)."""
    vars_file = ctx.workspace / f"vars-{stage}.json"
    vars_file.write_text(json.dumps({**ctx.cfg.playbook_vars, "odz_roles": list(layer)}))
    ansible = Path(sys.executable).with_name("ansible-playbook")
    with chroot_env(ctx.rootfs), step(f"{stage}: ansible-playbook image.yml in the chroot ({', '.join(layer)})"):
        run_progress(
            [ansible if ansible.exists() else "ansible-playbook", "-i", f"{ctx.rootfs},",
             "-c", "community.general.chroot", "-e", f"@{vars_file}", paths.PLAYBOOKS_DIR / "image.yml"],
            "ansible", phase=re.compile(r"^TASK \[(.*)\]"),
            env={"ANSIBLE_CONFIG": str(paths.PLAYBOOKS_DIR / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
                 "ANSIBLE_LOCAL_TEMP": str(ctx.workspace / "ansible-tmp")},
            host=f"chroot {ctx.rootfs}",
        )


def ensure_artifacts(ctx: Context, inputs: dict) -> None:
    """Runs on the host and in a chroot of the base tree. In: the engines the image's roles install. Out: each one's
    artefact in the cache (built only when missing: its key is the engine's version, backend, flags or lock, and
    distribution)."""
    cfg = ctx.cfg
    for build, out in artifacts.needed(cfg.spec.roles, cfg.playbook_vars):
        if out.is_file():
            continue
        log.info("%s %s (%s): building the artefact %s", build.engine, build.version, build.backend, out.name)
        source = artifacts.fetch(build, cfg.distro, cfg.cache.parent / "downloads")
        side = Context(cfg, ctx.workspace / f"artifact-{build.engine}", ctx.keys, ctx.version)
        side.workspace.mkdir(parents=True, exist_ok=True)
        if not restore(side, "base"):
            bootstrap_base(side)
            save(side, "base", inputs["base"])
        with chroot_env(side.rootfs):
            artifacts.build(build, cfg.distro, side.rootfs, source, out, cfg.jobs)
        shutil.rmtree(side.workspace, ignore_errors=True)
        ctx.ran.append(f"artifact:{build.engine}")


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
        f"ONEDOTZERO_IMAGE={KIND}\nONEDOTZERO_VERSION={ctx.version}\nONEDOTZERO_DISTRO={ctx.cfg.distro.name}\n"
        f"ONEDOTZERO_ROLES={','.join(ctx.cfg.spec.roles)}\n")


def verify_tree(ctx: Context) -> None:
    """Runs on the host (testinfra chroot backend). In: cleaned ctx.rootfs. Out: nothing, or the build stops.

    The checks read what the roles were given (the role variables) and the version from ONEDOTZERO_EXPECT."""
    expect_file = ctx.workspace / "expect.json"
    expect_file.write_text(json.dumps({**ctx.cfg.playbook_vars, "version": ctx.version}))
    with step("verify: testinfra checks"):
        run_progress(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", CHECKS_DIR,
             "-c", CHECKS_DIR / "pytest.ini", "--connection=chroot", f"--hosts={ctx.rootfs}",
             *check_files(ctx.cfg.spec)],
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
    cfg, d, out = ctx.cfg, ctx.cfg.distro, ctx.out
    (out / "live").mkdir(parents=True)
    kernel, initrd = _kernel_files(ctx.rootfs)
    shutil.copyfile(kernel, out / "vmlinuz")
    shutil.copyfile(initrd, out / "initrd.img")
    squashfs = out / "live" / "filesystem.squashfs"
    start = time.monotonic()
    with step(f"export: mksquashfs ({d.squashfs_compression} level {d.squashfs_level}, {cfg.jobs} cores)"):
        level = ["-Xcompression-level", str(d.squashfs_level)] if d.squashfs_compression in ("zstd", "gzip") else []
        run(["mksquashfs", ctx.rootfs, squashfs, "-noappend", "-comp", d.squashfs_compression, *level,
             "-processors", str(cfg.jobs), "-e", "boot",
             *([] if sys.stdout.isatty() else ["-no-progress"])], capture=not sys.stdout.isatty())
    ctx.durations["squashfs"] = round(time.monotonic() - start, 1)
    packages = _installed_packages(ctx.rootfs)
    (out / "packages.txt").write_text("".join(f"{n} {v}\n" for n, v in packages.items()))
    Manifest(
        kind=KIND, version=ctx.version, distro=d.name, input_hash=ctx.keys["export"],
        boot=Boot("vmlinuz", "initrd.img", d.boot_args, squashfs="live/filesystem.squashfs"),
        created=utc_now(), sizes={p.name: p.stat().st_size for p in (out / "vmlinuz", out / "initrd.img", squashfs)},
        roles=cfg.spec.roles, profiles=cfg.profiles, suite=d.suite,
        kernel_version=kernel.name.removeprefix("vmlinuz-"), stage_keys=ctx.keys, inputs=inputs,
        durations=ctx.durations, stages_ran=tuple(ctx.ran), packages=packages,
    ).write(out)


# --- the orchestrators --------------------------------------------------------------------------

@dataclass(frozen=True)
class Built:
    spec: roles.ImageSpec
    version: Version
    stages_ran: tuple[str, ...]  # () when an up-to-date version already existed


def build_image(cfg: GoldenConfig, store: Store) -> Built:
    """Builds (or finds) the golden image for cfg. Call with the store locked, inside build_images' worker."""
    inputs = stage_inputs(cfg)
    keys = stage_keys(inputs)
    existing = store.find_by_input(KIND, keys["export"])
    if existing:
        if not all(p.is_file() for _, p in artifacts.needed(cfg.spec.roles, cfg.playbook_vars)):
            with store.staging(KIND) as workspace:  # an emptied cache: `compute configure` needs them too
                ensure_artifacts(Context(cfg, workspace, keys, existing.name), inputs)
        return Built(cfg.spec, existing, ())
    log.info("image %s (for %s):", cfg.spec.label, ", ".join(cfg.profiles) or "-")
    with store.staging(KIND) as workspace:
        ctx = Context(cfg, workspace, keys, version_name(keys["export"]))

        def timed(name: str, fn, *args) -> None:
            start = time.monotonic()
            fn(*args)
            ctx.durations[name] = round(time.monotonic() - start, 1)

        own = cfg.spec.own_roles
        timed("artifacts", ensure_artifacts, ctx, inputs)
        if not (own and restore(ctx, "roles")):
            if not restore(ctx, "configure"):
                if not restore(ctx, "base"):
                    log.info("base: rebuilt because %s", why_rebuilt(cfg, "base", inputs["base"]))
                    timed("base", bootstrap_base, ctx)
                    ctx.ran.append("base")
                    save(ctx, "base", inputs["base"])
                log.info("configure: rebuilt because %s", why_rebuilt(cfg, "configure", inputs["configure"]))
                timed("configure", configure_tree, ctx, roles.BASE_ROLES, "configure")
                ctx.ran.append("configure")
                save(ctx, "configure", inputs["configure"])
            if own:
                log.info("roles: rebuilt because %s", why_rebuilt(cfg, "roles", inputs["roles"]))
                timed("roles", configure_tree, ctx, own, "roles")
                ctx.ran.append("roles")
                save(ctx, "roles", inputs["roles"])
        log.info("export: rebuilt because %s", why_rebuilt(cfg, "export", inputs["export"]))
        timed("clean", clean_tree, ctx)
        timed("verify", verify_tree, ctx)
        ctx.ran.append("export")
        timed("export", export_image, ctx, inputs)
        _inputs_file(cfg, "export").write_text(json.dumps(inputs["export"], indent=1, default=str))
        version = store.publish(KIND, ctx.version, ctx.out)
    log.info("published %s (%s; stages run: %s)", version.ref, cfg.spec.label, ", ".join(ctx.ran))
    return Built(cfg.spec, version, tuple(ctx.ran))


def _up_to_date(cfgs: list[GoldenConfig], store: Store) -> list[Built] | None:
    found = []
    for cfg in cfgs:
        v = store.find_by_input(KIND, stage_keys(stage_inputs(cfg))["export"])
        if v is None or not all(p.is_file() for _, p in artifacts.needed(cfg.spec.roles, cfg.playbook_vars)):
            return None  # configure at runtime copies the artefacts too: a missing one is rebuilt
        found.append(Built(cfg.spec, v, ()))
    return found


def build_images(inv: inv_mod.Inventory) -> list[Built]:
    """Builds every golden image the inventory needs (one per distribution + role set), or finds them.

    The builds run in a worker process isolated by PID and mount namespaces (see the module docstring)."""
    cfgs = configs(inv)
    store = Store(inv.image.store)
    done = _up_to_date(cfgs, store)
    if done is not None:
        for b in done:
            log.info("golden image up to date: %s (%s, nothing changed)", b.version.ref, b.spec.label)
        return done
    for cfg in cfgs:
        preflight(cfg)
    with tempfile.TemporaryDirectory(prefix="odz-build-") as tmp:
        result = Path(tmp) / "result.json"
        argv = ["unshare", "--pid", "--fork", "--kill-child=SIGKILL", "--mount", "--propagation", "private", "--",
                sys.executable, "-m", "image.golden", str(inv.path), str(result)]
        code = run_worker(argv)
        try:
            data = json.loads(result.read_text())
        except (OSError, ValueError):
            raise UserError(f"the image build worker died (exit code {code}) before it reported",
                            "re-run with -v for every command's output") from None
    if "error" in data:
        raise UserError(data["error"], data.get("hint"))
    return [Built(roles.ImageSpec(b["distro"], tuple(b["roles"])), store.get(ImageRef.parse(b["ref"])),
                  tuple(b["ran"])) for b in data["built"]]


def run_worker(argv: list[str]) -> int:
    """Run the worker with this process's terminal; it dies with us (parent-death signal on `unshare`)."""
    verbose = "1" if log.isEnabledFor(logging.DEBUG) else "0"
    proc = subprocess.Popen(argv, cwd=paths.REPO, preexec_fn=die_with_parent,
                            env={**os.environ, "PYTHONPATH": str(paths.REPO), "ONEDOTZERO_VERBOSE": verbose})
    try:
        return proc.wait()
    except BaseException:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except BaseException:
            proc.kill()
        raise


def _worker(inventory_path: str, result_path: str) -> None:
    """PID 1 of the build's PID namespace: build every image that is not up to date, report as JSON."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # PID 1 ignores signals it has no handler for
    setup_logging(os.environ.get("ONEDOTZERO_VERBOSE") == "1")
    result = Path(result_path)
    try:
        run(["mount", "--make-rprivate", "/"])
        inv = inv_mod.load(inventory_path)
        store = Store(inv.image.store)
        with store.lock():
            store.clear_staging()
            built = [build_image(cfg, store) for cfg in configs(inv)]
        for b in built:
            if not b.stages_ran:
                log.info("golden image up to date: %s (%s, nothing changed)", b.version.ref, b.spec.label)
        result.write_text(json.dumps({"built": [
            {"distro": b.spec.distro, "roles": list(b.spec.roles), "ref": str(b.version.ref), "ran": list(b.stages_ran)}
            for b in built]}))
    except UserError as e:
        result.write_text(json.dumps({"error": e.message, "hint": e.hint}))
        sys.exit(1)
    except KeyboardInterrupt:
        result.write_text(json.dumps({"error": "the image build was interrupted", "hint": "nothing was published"}))
        sys.exit(130)


if __name__ == "__main__":
    _worker(*sys.argv[1:3])
