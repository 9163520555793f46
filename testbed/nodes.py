"""The virtual cluster's node kinds, chosen by the node's hardware profile (`virtual: qemu|container`).

Both kinds are prepared when the testbed comes up (disks, cables, the recipe that powers them on) and
stay off until a magic packet or `testbed power-on` arrives:
  qemu       a QEMU VM (SeaBIOS or OVMF by the profile's firmware) on a tap of the segment: PXE, kernel,
             initramfs and NFS root, the whole boot chain, under software emulation
  container  the golden image `boot` chose for the node, run natively by systemd-nspawn with systemd as
             PID 1 (testbed/container.py supervises it): squashfs lower layer, tmpfs upper layer, a
             per-node directory as /models, its own network namespace with a veth into the segment
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from onedotzero import paths
from onedotzero.errors import UserError
from onedotzero.inventory import Node
from onedotzero.proc import run
from testbed import cgroups
from testbed.base import NodeSpec

if TYPE_CHECKING:
    from testbed.bed import Testbed

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
LAN_IFNAME = "eth0"  # a container node's NIC on the segment


class QemuNode:
    kind = "qemu"
    tools = ("qemu-system-x86_64", "mkfs.ext4")

    def __init__(self, bed: Testbed, node: Node, index: int):
        self.bed, self.node, self.index = bed, node, index
        self.tap = f"tap{index}"

    def prepare(self) -> NodeSpec:
        """A tap on the segment, the local SSD (formatted and labelled as `compute configure` leaves it)."""
        bed, node = self.bed, self.node
        bed.ns_run(["ip", "tuntap", "add", self.tap, "mode", "tap"])
        bed.ns_run(["ip", "link", "set", self.tap, "master", bed.bridge, "up"])
        disk = bed.path("disks", f"{node.name}-models.img")
        with open(disk, "wb") as f:
            f.truncate(4 * 2**30)
        run(["mkfs.ext4", "-q", "-F", "-L", bed.inv.image.models_label, disk])
        pidfile = bed.path("run", f"{node.name}.pid")
        serial = bed.path("log", f"{node.name}-serial.log")
        argv = [
            "qemu-system-x86_64", "-name", node.name, "-accel", "tcg", "-m", str(bed.memory_mb), "-smp", "1",
            "-netdev", f"tap,id=n0,ifname={self.tap},script=no,downscript=no",
            "-device", f"virtio-net-pci,netdev=n0,mac={node.mac},bootindex=1",
            "-drive", f"file={disk},if=virtio,format=raw",
            "-serial", f"file:{serial}",
            "-monitor", f"unix:{bed.path('run', node.name + '.monitor')},server,nowait",
            "-display", "none", "-daemonize", "-pidfile", str(pidfile),
        ]
        if node.profile.firmware == "uefi":
            vars_copy = bed.path("disks", f"{node.name}-OVMF_VARS.fd")
            shutil.copyfile(OVMF_VARS, vars_copy)
            argv += ["-machine", "q35", "-drive", f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}",
                     "-drive", f"if=pflash,format=raw,file={vars_copy}"]
        else:
            argv += ["-machine", "pc", "-boot", "n"]
        return NodeSpec(node.name, node.mac, self.kind, bed.ns_argv(argv), str(pidfile), str(serial), False)

    def unplug(self) -> None:
        """Nothing beyond the QEMU process, which the caller has killed."""

    def teardown(self) -> None:
        """Nothing beyond the process: the tap goes with the testbed's namespace."""


class ContainerNode:
    kind = "container"
    tools = ("systemd-nspawn", "unshare", "mount")

    def __init__(self, bed: Testbed, node: Node, index: int):
        self.bed, self.node, self.index = bed, node, index
        self.ns = f"{bed.ns}-{node.name}"[:48]  # the node's own network namespace
        self.host_end = f"odzv{index}"  # its cable's end on the segment's bridge
        self.dir = bed.path("nodes", node.name)
        self.cgroup = f"{bed.ns}/{node.name}"

    @property
    def machine(self) -> str:
        """nspawn's machine name: unique on the host (two testbeds may have a node0 each)."""
        return f"{self.bed.ns}-{self.node.name}"

    def prepare(self) -> NodeSpec:
        """The node's namespace with its NIC (the node's MAC and address, as the inventory says), its
        /models directory (kept across restarts, like the SSD), and the supervisor's configuration."""
        bed, node, inv = self.bed, self.node, self.bed.inv
        run(["ip", "netns", "add", self.ns])
        run(["ip", "-n", self.ns, "link", "set", "lo", "up"])
        run(["ip", "-n", bed.ns, "link", "add", self.host_end, "type", "veth", "peer", "name", LAN_IFNAME,
             "netns", self.ns])
        run(["ip", "-n", bed.ns, "link", "set", self.host_end, "master", bed.bridge, "up"])
        run(["ip", "-n", self.ns, "link", "set", LAN_IFNAME, "address", node.mac, "up"])
        run(["ip", "-n", self.ns, "addr", "add", f"{node.ip}/{inv.control.subnet.prefixlen}", "dev", LAN_IFNAME])
        run(["ip", "-n", self.ns, "route", "add", "default", "via", str(inv.control.address)])
        for d in ("models", "root", "rw"):
            (self.dir / d).mkdir(parents=True, exist_ok=True)
        models = bed.models_root / node.name  # outside run-<name>/: survives `down` like a disk
        models.mkdir(parents=True, exist_ok=True)
        pidfile = bed.path("run", f"{node.name}.pid")
        config = {
            "node": node.name, "inventory": str(inv.path), "state": str(bed.state), "netns": self.ns,
            "machine": self.machine, "dir": str(self.dir), "models": str(models), "pidfile": str(pidfile),
            "cgroup": self.cgroup, "memory_mb": node.profile.memory_mb, "lower_root": str(bed.path("lower")),
            "tftp_hook": str(bed.path("usr/local/libexec/onedotzero-tftp-done")),
        }
        (self.dir / "node.json").write_text(json.dumps(config, indent=1))
        argv = [sys.executable, "-m", "testbed.container", str(self.dir / "node.json")]
        return NodeSpec(node.name, node.mac, self.kind, argv, str(pidfile),
                        str(bed.path("log", f"{node.name}-console.log")), True)

    def unplug(self) -> None:
        """Whatever outlived the supervisor (nspawn, the container's processes) dies with its cgroups."""
        cgroups.kill_and_remove(self.cgroup)
        shutil.rmtree(f"/run/systemd/nspawn/propagate/{self.machine}", ignore_errors=True)

    def teardown(self) -> None:
        """The node's processes, cgroups and network namespace (its cables go with it)."""
        self.unplug()
        run(["ip", "netns", "delete", self.ns], check=False)


KINDS = {"qemu": QemuNode, "container": ContainerNode}


def driver(bed: Testbed, node: Node, index: int) -> QemuNode | ContainerNode:
    kind = node.profile.virtual
    if kind not in KINDS:
        raise UserError(f"node {node.name}: hardware {node.hardware} is not a virtual profile",
                        f"the virtual cluster runs nodes of profiles with `virtual:` ({paths.HARDWARE_DIR})")
    return KINDS[kind](bed, node, index)
