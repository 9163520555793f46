#!/usr/bin/env python3
"""Golden image build times, from one run, against a plain baseline of the same package set.

  ours:     cold build (empty cache and store), no-op rebuild, playbook-variable change rebuild
  baseline: debootstrap + `chroot apt-get install` of the same packages + single-threaded xz mksquashfs
  squashfs: our zstd (all cores) vs single-threaded xz on the same tree: time and size

Needs root and Debian's mirror. Takes about 10 minutes on 2 cores.

    sudo python benchmarks/image_build.py
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from image import golden  # noqa: E402
from onedotzero import inventory, profiles  # noqa: E402


def sh(*argv, **kw) -> float:
    start = time.monotonic()
    subprocess.run([str(a) for a in argv], check=True, stdout=subprocess.DEVNULL, **kw)
    return time.monotonic() - start


def build(inv_path: Path) -> float:
    return sh(sys.executable, REPO / "cluster.py", "-i", inv_path, "image", "build", "golden")


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="odz-bench-", dir="/var/tmp"))
    try:
        key = work / "id_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        data = yaml.safe_load((REPO / "testbed/cluster.yml").read_text())
        data["image"].update(store=str(work / "store"), cache=str(work / "cache"))
        data["admin"]["ssh_public_key"] = str(key) + ".pub"
        inv_path = work / "cluster.yml"
        inv_path.write_text(yaml.safe_dump(data))
        cold = build(inv_path)
        noop = build(inv_path)
        data["image"]["models_label"] = "models-b"
        inv_path.write_text(yaml.safe_dump(data))
        change = build(inv_path)

        # Baseline: the same packages, the plain way.
        d = profiles.distro(data["image"]["distro"])
        base_pkgs = yaml.safe_load((REPO / "playbooks/roles/base/defaults/main.yml").read_text())["base_packages"]
        root = work / "baseline-root"
        t_debootstrap = sh("debootstrap", "--variant=minbase", f"--include={','.join([d.kernel_package, *d.packages])}",
                           d.suite, root, d.mirror)
        with golden.chroot_env(root):
            t_apt = sh("chroot", root, "apt-get", "install", "-y", "-q", *base_pkgs,
                       env={"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
        t_xz = sh("mksquashfs", root, work / "xz.squashfs", "-comp", "xz", "-processors", "1", "-noappend",
                  "-no-progress")
        t_zstd = sh("mksquashfs", root, work / "zstd.squashfs", "-comp", d.squashfs_compression,
                    "-Xcompression-level", str(d.squashfs_level), "-noappend", "-no-progress", "-e", "boot")
        baseline = t_debootstrap + t_apt + t_xz
        size = {k: (work / f"{k}.squashfs").stat().st_size / 2**20 for k in ("xz", "zstd")}
        inv = inventory.load(inv_path)
        versions = sorted((inv.image.store / "golden").iterdir())
        print(f"golden image build, {d.name}, {len(versions)} versions built")
        print(f"{'ours: cold build':44s} {cold:8.1f}s")
        print(f"{'ours: no-op rebuild':44s} {noop:8.1f}s   goal < 2 s: {'met' if noop < 2 else 'NOT met'}")
        print(f"{'ours: playbook-variable change rebuild':44s} {change:8.1f}s")
        print(f"{'baseline: debootstrap':44s} {t_debootstrap:8.1f}s")
        print(f"{'baseline: chroot apt-get install':44s} {t_apt:8.1f}s")
        print(f"{'baseline: mksquashfs xz, 1 thread':44s} {t_xz:8.1f}s  {size['xz']:7.0f} MiB")
        print(f"{'baseline total':44s} {baseline:8.1f}s")
        print(f"{'ratio ours cold / baseline':44s} {cold / baseline:8.2f}x  (ours also runs Ansible, testinfra)")
        print(f"{'ratio ours change / baseline':44s} {change / baseline:8.2f}x")
        print(f"{'squashfs zstd -' + str(d.squashfs_level) + ', all cores, no /boot':44s} {t_zstd:8.1f}s  "
              f"{size['zstd']:7.0f} MiB   ({t_xz / t_zstd:.0f}x faster, {size['zstd'] / size['xz']:.2f}x the size)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
