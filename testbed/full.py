"""Full mode: a control-node VM, configured by the real control playbook, serves the compute VMs.

Runs on the host as root. Unlike fast mode, the namespace is not the control node: it is a
workstation on the segment (the subnet's last address), from where the toolkit and the tests reach
the control VM and the nodes over SSH. FullTestbed.up, in order:
  network     bridge + taps (one more for the control VM)
  store disk  the inventory's image store copied into an ext4 disk image: the control node's own disk
  bootstrap   for the control VM's first boot only: DHCP answering its MAC alone, and HTTP serving the
              golden image it boots; both stop once it is up (a real control node boots from its disk)
  control VM  the golden image fetched into RAM; NIC 1 on the segment at the control address (the
              inventory's compute_interface, eth0), NIC 2 QEMU user networking (Debian's mirror)
  prepare     over SSH: mount the store disk at the inventory's store path
  configure   ansible-playbook playbooks/control.yml against the VM over SSH
Compute VMs then PXE-boot from the control VM: nothing in the namespace answers DHCP, TFTP, HTTP or NFS.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time

from image.store import Store, Version
from onedotzero import ansible, paths, roles, ssh
from onedotzero.errors import CommandError, UserError
from onedotzero.log import log
from onedotzero.proc import run
from testbed.base import running_pid, stop_pid
from testbed.bed import Testbed

CONTROL_MAC = "52:54:00:0d:ff:01"
CONTROL_TAP = "tapctl"
STORE_LABEL = "odzstore"
BOOTSTRAP_PORT = 8080
# QEMU user networking's fixed plan: the guest's address, netmask, the gateway out and the DNS relay.
SLIRP = ("10.0.2.15", "255.255.255.0", "10.0.2.2", "10.0.2.3")
# The toolkit's host runs these steps in production (the toolkit runs on the control node); here the
# toolkit's host is the workstation namespace, so they are off. Everything else runs in the VM.
PLAYBOOK_VARS = {"pxe_server_preflight": False, "pxe_server_live_image": False}


class FullTestbed(Testbed):
    """Full mode: the control node is a VM running what playbooks/control.yml installed."""

    mode = "full"
    services = ("wol", "bootstrap-dhcp", "bootstrap-http", "control")
    tools = ("ip", "dnsmasq", "qemu-system-x86_64", "mkfs.ext4", "ssh")
    extra_taps = (CONTROL_TAP,)
    control_memory_mb = 3072  # the root and every package the playbook installs live in RAM

    @property
    def address(self):
        return self.inv.control.subnet[-2]

    def preflight(self) -> None:
        c = self.inv.control
        fix = f"fix control in {self.inv.path}"
        if c.compute_interface != "eth0":
            raise UserError(f"full mode: control.compute_interface is {c.compute_interface!r}, the control VM's "
                            "NIC on the segment is eth0", fix)
        if c.ansible_host != str(c.address) or not c.ansible_user:
            raise UserError("full mode: Ansible must reach the control VM over SSH",
                            f"{fix}: ansible_host: {c.address}, ansible_user: {self.inv.admin.user}")
        if self.address == c.address or self.address in {n.ip for n in self.inv.nodes}:
            raise UserError(f"full mode: the workstation address {self.address} is taken", fix)
        if self.control_image() is None:
            raise UserError(f"full mode: no golden image in {self.inv.image.store} for the control VM to boot",
                            f"build it: ./cluster.py -i {self.inv.path} image build golden")
        super().preflight()

    def control_image(self) -> Version | None:
        """The control VM boots the first node's golden image (any golden image has what the playbook needs)."""
        return Store(self.inv.image.store).newest_for(roles.image_spec(self.inv, self.inv.nodes[0]))

    def _serve(self) -> None:
        version = self.control_image()
        disk = self._store_disk()
        self._bootstrap(version)
        self._start_control(version, disk)
        self.wait_control(timeout=600)
        for service in ("bootstrap-http", "bootstrap-dhcp"):
            stop_pid(self.path("run", f"{service}.pid"))
        store = shlex.quote(str(self.inv.image.store))
        self.control_ssh(f"sudo mkdir -p {store} && sudo mount LABEL={STORE_LABEL} {store}")
        recap = self.configure_control()
        log.info("control VM configured by playbooks/control.yml: ok=%d changed=%d", recap.ok, recap.changed)

    # --- steps ----------------------------------------------------------------------------------

    def _store_disk(self):
        """Host: the image store as an ext4 disk image (sparse; mkfs copies the tree in)."""
        disk = self.path("disks", "control-store.img")
        with open(disk, "wb") as f:
            f.truncate(16 * 2**30)
        run(["mkfs.ext4", "-q", "-F", "-L", STORE_LABEL, "-d", self.inv.image.store, disk])
        return disk

    def _bootstrap(self, version: Version) -> None:
        """Namespace: DHCP for the control VM's MAC only (no router: its default route is the uplink), and
        HTTP for the image it boots."""
        c = self.inv.control
        self._spawn("bootstrap-dhcp", [
            "dnsmasq", "--keep-in-foreground", "--port=0", f"--interface={self.bridge}", "--bind-interfaces",
            f"--dhcp-range={c.subnet.network_address},static,{c.subnet.netmask}",
            f"--dhcp-host={CONTROL_MAC},{c.address},{c.name},infinite", "--dhcp-option=option:router",
            f"--dhcp-leasefile={self.path('run/bootstrap.leases')}",
            f"--log-facility={self.path('log/bootstrap-dhcp.log')}", "--log-dhcp",
        ])
        self._spawn("bootstrap-http", [sys.executable, "-m", "http.server", "--bind", str(self.address),
                                       "--directory", str(version.path), str(BOOTSTRAP_PORT)])
        self._wait_port(self.address, BOOTSTRAP_PORT, "the bootstrap HTTP server")

    def _start_control(self, version: Version, disk) -> None:
        """Host: QEMU in the host's namespace (for user networking) with its first NIC on the testbed's tap."""
        c = self.inv.control
        m = version.manifest
        slirp_ip, slirp_mask, slirp_gw, slirp_dns = SLIRP
        # live-boot's ip= (interface:address:netmask:gateway:dns) becomes /etc/network/interfaces.
        args = ["boot=live", f"fetch=http://{self.address}:{BOOTSTRAP_PORT}/{m.boot.squashfs}",
                f"ip={c.compute_interface}:{c.address}:{c.subnet.netmask}::,"
                f"eth1:{slirp_ip}:{slirp_mask}:{slirp_gw}:{slirp_dns}",
                "net.ifnames=0", "console=ttyS0", *m.boot.args]
        qemu = [
            "qemu-system-x86_64", "-name", c.name, "-accel", "tcg", "-machine", "pc",
            "-m", str(self.control_memory_mb), "-smp", "2",
            "-kernel", str(version.path / m.boot.kernel), "-initrd", str(version.path / m.boot.initrd),
            "-append", " ".join(args),
            "-netdev", "tap,id=seg,fd=TAPFD", "-device", f"virtio-net-pci,netdev=seg,mac={CONTROL_MAC},addr=0x3",
            "-netdev", "user,id=up", "-device", "virtio-net-pci,netdev=up,addr=0x4",
            "-drive", f"file={disk},if=virtio,format=raw",
            "-serial", f"file:{self.path('log', c.name + '-serial.log')}",
            "-display", "none", "-daemonize", "-pidfile", str(self.path("run", "control.pid")),
        ]
        host_ns = os.open("/proc/self/ns/net", os.O_RDONLY)
        try:
            argv = self.ns_argv([sys.executable, "-m", "testbed.tap_exec", CONTROL_TAP, str(host_ns), "--", *qemu])
            proc = subprocess.run(argv, pass_fds=(host_ns,), capture_output=True, text=True,
                                  cwd=paths.REPO)
        finally:
            os.close(host_ns)
        if proc.returncode != 0:
            raise CommandError(argv, proc.returncode, proc.stderr, f"netns {self.ns}")
        log.info("control VM %s starting (%s, serial log %s)", c.name, version.ref,
                 self.path("log", c.name + "-serial.log"))

    def control_ssh(self, command: str, timeout: float = 120) -> str:
        """Run a command on the control VM as the admin user; its stdout."""
        c = self.inv.control
        argv = self.ns_argv([*ssh.options(self.inv), f"{c.ansible_user}@{c.address}", command])
        return run(argv, capture=True, timeout=timeout, host=self.inv.control.name).stdout

    def wait_control(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if running_pid(self.path("run", "control.pid")) is None:
                raise UserError("the control VM stopped while booting", f"see {self.path('log')}")
            try:
                self.control_ssh("true", timeout=30)
                return
            except CommandError:
                time.sleep(5)
        raise UserError(f"the control VM did not answer SSH within {timeout:.0f}s", f"see {self.path('log')}")

    def configure_control(self) -> ansible.HostRecap:
        """Run playbooks/control.yml against the control VM; its PLAY RECAP line."""
        recaps = ansible.playbook(self.inv, "control.yml", extra_vars=PLAYBOOK_VARS, netns=self.ns)
        return next(r for r in recaps if r.host == self.inv.control.name)
