"""A fixture live ISO for the virtual cluster, since Ubuntu's servers are out of reach here.

Built from the cached Debian 12 debootstrap tree plus cloud-init, with the same layout the live
pipeline extracts from (casper/vmlinuz, casper/initrd) and Debian's live-boot squashfs in live/.
Nodes boot it like the Ubuntu ISO: the initramfs downloads the whole ISO into RAM (`fetch=`),
and cloud-init reads the node's NoCloud seed: the `admin` user and its key come only from the seed.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from image import golden

CLOUD_CFG = """\
# onedotzero fixture: seeds come over HTTP (ds=nocloud-net on the command line); live-boot owns the network.
datasource_list: [NoCloud, None]
network: {config: disabled}
"""
BOOT_ARGS = ("boot=live", "fetch={iso_url}", "ds=nocloud-net;s={seed_url}")


def chroot(root: Path, *argv: str) -> None:
    subprocess.run(["chroot", str(root), *argv], check=True, capture_output=True,
                   env={"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"})


def build_fixture_iso(ctx: golden.Context, out: Path) -> Path:
    """ctx.rootfs holds the restored base tree; writes out (the ISO) and returns it."""
    root = ctx.rootfs
    with golden.chroot_env(root):
        chroot(root, "apt-get", "install", "-y", "-q", "--no-install-recommends", "cloud-init")
        (root / "etc/cloud/cloud.cfg.d/99-onedotzero.cfg").write_text(CLOUD_CFG)
        (root / "etc/initramfs-tools/conf.d/netboot.conf").write_text("MODULES=netboot\n")
        chroot(root, "update-initramfs", "-u", "-k", "all")
    for p in root.glob("etc/ssh/ssh_host_*"):
        p.unlink()  # cloud-init makes this boot's host keys
    (root / "etc/machine-id").write_text("")
    (root / "etc/hostname").write_text("")
    tree = out.parent / "iso-tree"
    (tree / "live").mkdir(parents=True)
    (tree / "casper").mkdir()
    kernel = sorted((root / "boot").glob("vmlinuz-*"))[-1]
    shutil.copyfile(kernel, tree / "casper/vmlinuz")
    shutil.copyfile(root / "boot" / kernel.name.replace("vmlinuz-", "initrd.img-"), tree / "casper/initrd")
    subprocess.run(["mksquashfs", str(root), str(tree / "live/filesystem.squashfs"), "-comp", "zstd",
                    "-noappend", "-no-progress", "-e", "boot"], check=True, capture_output=True)
    subprocess.run(["xorriso", "-as", "mkisofs", "-quiet", "-R", "-J", "-V", "ODZ_LIVE", "-o", str(out), str(tree)],
                   check=True, capture_output=True)
    shutil.rmtree(tree)
    return out
