"""A fixture live ISO for the virtual cluster, since Ubuntu's servers are out of reach here.

Built from the cached Debian 12 debootstrap tree plus cloud-init, with the same layout the live
pipeline extracts from (casper/vmlinuz, casper/initrd) and Debian's live-boot squashfs in live/.
Nodes boot it like the Ubuntu ISO: the initramfs downloads the whole ISO into RAM (`fetch=`),
and cloud-init reads the node's NoCloud seed: the `admin` user and its key come only from the seed.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

from image import golden, live
from image.store import Version
from onedotzero.inventory import Inventory
from testbed.fixture_http import make_keys, serve, sign

ISO_NAME = "debian-live-fixture.iso"

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


def publish_fixture_live(inv: Inventory, workdir: Path) -> Version:
    """Build the fixture ISO and publish it into inv's store through the real live pipeline: signed
    SHA256SUMS from a loopback HTTP server, a test key pinned as the release key, download, verify, extract."""
    cfg = golden.GoldenConfig.from_inventory(inv)
    ctx = golden.Context(cfg, workdir, golden.stage_keys(golden.stage_inputs(cfg)), "n/a")
    if not golden.restore(ctx, "base"):
        raise RuntimeError("no cached debootstrap tree: build the golden image first")
    iso = build_fixture_iso(ctx, workdir / ISO_NAME).read_bytes()
    shutil.rmtree(ctx.rootfs)
    gpg = make_keys(workdir / "gnupg")
    sums = f"{hashlib.sha256(iso).hexdigest()} *{ISO_NAME}\n".encode()
    srv = serve({ISO_NAME: iso, "SHA256SUMS": sums, "SHA256SUMS.gpg": sign(gpg, sums, gpg["pinned"])})
    try:
        return live.build_live(live.LiveConfig(
            "debian-12", f"http://127.0.0.1:{srv.server_address[1]}", ISO_NAME, gpg["keyring"], gpg["pinned"],
            {"kernel": "casper/vmlinuz", "initrd": "casper/initrd"}, BOOT_ARGS, inv.image.store,
            workdir / "downloads"))
    finally:
        srv.shutdown()
        srv.server_close()
