"""The virtual cluster: the control node's network in a namespace, real servers, QEMU compute nodes.

Runs on the host as root. Everything lives in the network namespace `odz-<name>`:
  odzbr0 (bridge, the control node's compute_interface, 192.168.1.1/24) + one tap per VM;
  dnsmasq, nginx, rpcbind + nfs-ganesha started from the files `netboot.render` produces;
  a Wake-on-LAN listener that starts a node's VM when a magic packet for its MAC arrives.
No DHCP, TFTP or broadcast leaves the namespace; every process is recorded by PID in the state
directory, so `down` (from any process) ends exactly what `up` started, then deletes the namespace.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from image.store import Store
from netboot import render
from onedotzero import profiles
from onedotzero.errors import UserError
from onedotzero.inventory import Inventory, Node
from onedotzero.log import log
from onedotzero.proc import require_tools, run

STATE_ROOT = Path("/var/lib/onedotzero/testbed")
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
SERVICES = ("rpcbind", "ganesha", "dnsmasq", "nginx", "wol")


@dataclass(frozen=True)
class VMSpec:
    name: str
    mac: str
    firmware: str
    argv: list[str]
    pidfile: str
    serial_log: str


class Testbed:
    """Fast mode: the control node's servers run as processes in the namespace."""

    __test__ = False  # not a pytest test class, whatever its name
    mode = "fast"
    services = SERVICES  # what `down` ends, in reverse order
    tools = ("ip", "dnsmasq", "nginx", "ganesha.nfsd", "rpcbind", "qemu-system-x86_64", "unshare", "mkfs.ext4")
    extra_taps: tuple[str, ...] = ()

    def __init__(self, inv: Inventory, name: str = "default", memory_mb: int = 2048):
        if not name.replace("-", "").isalnum() or len(name) > 10:
            raise UserError(f"testbed name {name!r}: use up to 10 letters, digits or '-'")
        self.inv = inv
        self.name = name
        self.ns = f"odz-{name}"
        self.state = STATE_ROOT / f"run-{name}"
        self.memory_mb = memory_mb
        self.bridge = inv.control.compute_interface

    # --- paths and helpers ------------------------------------------------------------------------

    def path(self, *parts: str) -> Path:
        return self.state.joinpath(*parts)

    def ns_argv(self, argv: list[str]) -> list[str]:
        """argv run inside the testbed's network namespace (the control node's network)."""
        return ["ip", "netns", "exec", self.ns, *argv]

    def ns_run(self, argv: list[str], **kw) -> subprocess.CompletedProcess:
        return run(self.ns_argv(argv), host=f"netns {self.ns}", **kw)

    def exists(self) -> bool:
        return (Path("/run/netns") / self.ns).exists()

    def _spawn(self, service: str, argv: list[str], pid_from_file: Path | None = None) -> None:
        """Start a daemon in the namespace and record its PID."""
        with open(self.path("log", f"{service}.out"), "ab") as logf:  # the child keeps its own copy
            proc = subprocess.Popen(self.ns_argv(argv), stdout=logf, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        pidfile = self.path("run", f"{service}.pid")
        if pid_from_file is None:
            pidfile.write_text(f"{proc.pid}\n")
            return
        for _ in range(100):  # daemons that fork write their own pid file
            if running_pid(pid_from_file):
                if pid_from_file != pidfile:
                    shutil.copyfile(pid_from_file, pidfile)
                return
            if proc.poll() not in (None, 0):
                break
            time.sleep(0.1)
        raise UserError(f"testbed: {service} did not start", f"see {self.path('log', service + '.out')}")

    # --- lifecycle ------------------------------------------------------------------------------

    def preflight(self) -> None:
        if os.geteuid() != 0:
            raise UserError("the virtual cluster needs root (network namespaces, taps)", "run it with sudo")
        require_tools(*self.tools)
        if self.exists():
            raise UserError(f"testbed {self.name!r} is already up (namespace {self.ns})",
                            f"stop it first: ./cluster.py -i {self.inv.path} testbed down")

    def up(self) -> None:
        """Namespace, bridge, taps, control-node services and the WoL listener. Nodes stay off."""
        self.preflight()
        shutil.rmtree(self.state, ignore_errors=True)
        for d in ("run", "log", "etc", "disks", "ganesha"):
            self.path(d).mkdir(parents=True, exist_ok=True)
        self.path("mode").write_text(self.mode + "\n")
        try:
            self._network()
            self._serve()
            self._vm_specs()
            self._spawn("wol", [sys.executable, "-m", "testbed.wol_listener", str(self.state), self.bridge])
            self._wait_log("wol.out", "listening", "the Wake-on-LAN listener")
            log.info("testbed %s up: namespace %s, control %s on %s", self.name, self.ns,
                     self.inv.control.address, self.bridge)
        except BaseException:
            self.down()
            raise

    @property
    def address(self):
        """The namespace's own address on the segment: here it is the control node."""
        return self.inv.control.address

    def _network(self) -> None:
        run(["ip", "netns", "add", self.ns])
        self.ns_run(["ip", "link", "set", "lo", "up"])
        self.ns_run(["ip", "link", "add", self.bridge, "type", "bridge"])
        self.ns_run(["ip", "addr", "add", f"{self.address}/{self.inv.control.subnet.prefixlen}", "dev", self.bridge])
        self.ns_run(["ip", "link", "set", self.bridge, "up"])
        for tap in [f"tap{i}" for i, _ in enumerate(self.inv.nodes)] + list(self.extra_taps):
            self.ns_run(["ip", "tuntap", "add", tap, "mode", "tap"])
            self.ns_run(["ip", "link", "set", tap, "master", self.bridge, "up"])

    def _serve(self) -> None:
        """The control node's side: rendered configs, then the daemons on them."""
        self._render()
        self._services()

    def _render(self) -> None:
        """The control node's files, exactly as the toolkit renders them for a real control node."""
        opts = render.RenderOptions(nginx_log_dir=str(self.path("log")), deploy_root=str(self.state))
        for rel, text in render.service_files(self.inv, opts).items():
            render.write_atomic(self.path(rel), text, render.file_mode(rel))
        store = Store(self.inv.image.store)
        for rel, text in render.boot_files(self.inv, store).items():
            render.write_atomic(self.inv.image.store / rel, text)
        render.install_loaders(self.inv.image.store / "tftp")
        # What a host's packaging provides around those drop-ins (main configs, run and log paths).
        self.path("etc/nginx.conf").write_text(
            f"user root;\nworker_processes 1;\npid {self.path('run/nginx.pid')};\n"
            f"error_log {self.path('log/nginx-main.error.log')};\nevents {{ worker_connections 64; }}\n"
            f"http {{\n  include /etc/nginx/mime.types;\n  default_type application/octet-stream;\n"
            f"  client_body_temp_path {self.path('run')};\n  proxy_temp_path {self.path('run')};\n"
            f"  fastcgi_temp_path {self.path('run')};\n  uwsgi_temp_path {self.path('run')};\n"
            f"  scgi_temp_path {self.path('run')};\n"
            f"  include {self.path(render.SERVICE_FILES['nginx'])};\n}}\n")
        self.path("etc/ganesha.conf").write_text(
            f'NFSV4 {{ RecoveryBackend = fs; RecoveryRoot = "{self.path("ganesha")}"; Graceless = true; }}\n'
            f'%include "{self.path(render.SERVICE_FILES["ganesha"])}"\n')

    def _services(self) -> None:
        # No kernel NFS server here: rpcbind + nfs-ganesha in a private mount namespace with its own /run.
        nfs_script = (
            "set -e; mount -t tmpfs tmpfs /run; mkdir -p /run/rpcbind /run/ganesha; "
            # rpcbind in the foreground, so $! is this testbed's (pidof would see every testbed's).
            f"rpcbind -f -w & echo $! > {shlex.quote(str(self.path('run/rpcbind.pid')))}; sleep 0.3; "
            f"exec ganesha.nfsd -F -L {shlex.quote(str(self.path('log/ganesha.log')))} "
            f"-f {shlex.quote(str(self.path('etc/ganesha.conf')))} -p /run/ganesha/ganesha.pid"
        )
        self._spawn("ganesha", ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", nfs_script])
        dnsmasq_pid = self.path("run/dnsmasq.daemon.pid")
        self._spawn("dnsmasq", [
            "dnsmasq", f"--conf-file={self.path(render.SERVICE_FILES['dnsmasq'])}", f"--pid-file={dnsmasq_pid}",
            f"--dhcp-leasefile={self.path('run/dnsmasq.leases')}",
            f"--log-facility={self.path('log/dnsmasq.log')}", "--log-dhcp",
        ], pid_from_file=dnsmasq_pid)
        self._spawn("nginx", ["nginx", "-c", str(self.path("etc/nginx.conf"))],
                    pid_from_file=self.path("run/nginx.pid"))
        self._wait_port(self.inv.control.address, 80, "nginx")
        self._wait_port(self.inv.control.address, 2049, "nfs-ganesha", timeout=30)

    def _wait_port(self, host, port: int, what: str, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        probe = f"import socket; socket.create_connection(('{host}', {port}), 1).close()"
        while time.monotonic() < deadline:
            if subprocess.run(self.ns_argv([sys.executable, "-c", probe]), capture_output=True).returncode == 0:
                return
            time.sleep(0.3)
        raise UserError(f"testbed: {what} is not listening on {host}:{port}", f"logs in {self.path('log')}")

    def _wait_log(self, name: str, text: str, what: str, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.path("log", name).read_text(errors="replace"):
                return
            time.sleep(0.1)
        raise UserError(f"testbed: {what} did not start", f"see {self.path('log', name)}")

    def down(self) -> None:
        """End every process the testbed started (by PID), then delete the namespace and its links."""
        for vm in self.vm_specs().values():
            self._kill(Path(vm.pidfile))
        for service in reversed(self.services):
            self._kill(self.path("run", f"{service}.pid"))
        for pidfile in sorted(self.path("run").glob("*.pid")):  # anything else recorded (e.g. another mode's)
            self._kill(pidfile)
        if self.exists():
            run(["ip", "netns", "delete", self.ns], check=False)
        log.info("testbed %s down", self.name)

    def _kill(self, pidfile: Path) -> None:
        pid = running_pid(pidfile)
        if pid is None:
            return
        os.kill(pid, signal.SIGTERM)
        for _ in range(50):
            if running_pid(pidfile) is None:
                return
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)

    # --- compute nodes --------------------------------------------------------------------------

    def _vm_specs(self) -> None:
        specs = {}
        for i, node in enumerate(self.inv.nodes):
            specs[node.mac] = self._vm_spec(i, node).__dict__
        self.path("vms.json").write_text(json.dumps(specs, indent=1))

    def vm_specs(self) -> dict[str, VMSpec]:
        try:
            return {mac: VMSpec(**d) for mac, d in json.loads(self.path("vms.json").read_text()).items()}
        except FileNotFoundError:
            return {}

    def _vm_spec(self, index: int, node: Node) -> VMSpec:
        firmware = profiles.hardware(node.hardware).firmware
        # The node's local SSD, already formatted and labelled as `compute configure` will leave it.
        disk = self.path("disks", f"{node.name}-models.img")
        with open(disk, "wb") as f:
            f.truncate(4 * 2**30)
        run(["mkfs.ext4", "-q", "-F", "-L", self.inv.image.models_label, disk])
        argv = [
            "qemu-system-x86_64", "-name", node.name, "-accel", "tcg", "-m", str(self.memory_mb), "-smp", "1",
            "-netdev", f"tap,id=n0,ifname=tap{index},script=no,downscript=no",
            "-device", f"virtio-net-pci,netdev=n0,mac={node.mac},bootindex=1",
            "-drive", f"file={disk},if=virtio,format=raw",
            "-serial", f"file:{self.path('log', node.name + '-serial.log')}",
            "-monitor", f"unix:{self.path('run', node.name + '.monitor')},server,nowait",
            "-display", "none", "-daemonize", "-pidfile", str(self.path("run", node.name + ".pid")),
        ]
        if firmware == "uefi":
            vars_copy = self.path("disks", f"{node.name}-OVMF_VARS.fd")
            shutil.copyfile(OVMF_VARS, vars_copy)
            argv += ["-machine", "q35",
                     "-drive", f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}",
                     "-drive", f"if=pflash,format=raw,file={vars_copy}"]
        else:
            argv += ["-machine", "pc", "-boot", "n"]
        return VMSpec(node.name, node.mac, firmware, argv, str(self.path("run", node.name + ".pid")),
                      str(self.path("log", node.name + "-serial.log")))

    def spec(self, node: str) -> VMSpec:
        for s in self.vm_specs().values():
            if s.name == node:
                return s
        raise UserError(f"testbed has no VM for node {node!r}")

    def is_on(self, node: str) -> bool:
        return running_pid(Path(self.spec(node).pidfile)) is not None

    def power_on(self, node: str) -> bool:
        """Press the power button (the WoL listener does the same on a magic packet). False if it was on."""
        return start_vm(self.spec(node), self.ns)

    def power_off(self, node: str) -> None:
        """Pull the plug."""
        self._kill(Path(self.spec(node).pidfile))

    def status(self) -> dict:
        return {
            "namespace": self.ns if self.exists() else None,
            "services": {s: running_pid(self.path("run", f"{s}.pid")) is not None for s in self.services},
            "nodes": {s.name: running_pid(Path(s.pidfile)) is not None for s in self.vm_specs().values()},
        }

    def diagnostics(self, lines: int = 40) -> str:
        """The tails of every log: VM serial consoles, dnsmasq, nginx, ganesha, WoL."""
        out = []
        for f in sorted(self.path("log").glob("*")):
            text = f.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"==> {f} <==\n" + "\n".join(text))
        return "\n".join(out)


def open_testbed(inv: Inventory, name: str = "default", full: bool | None = None) -> Testbed:
    """The testbed called name, in full mode if asked (None: the mode the running one was started in)."""
    from testbed.full import FullTestbed

    bed = Testbed(inv, name)
    if full is None:
        try:
            full = bed.path("mode").read_text().strip() == FullTestbed.mode
        except FileNotFoundError:
            full = False
    return FullTestbed(inv, name) if full else bed


def running_pid(pidfile: Path) -> int | None:
    """The PID in pidfile if that process is alive, else None."""
    try:
        pid = int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    return pid


def start_vm(spec: VMSpec, ns: str) -> bool:
    """Start a VM in the namespace (QEMU daemonizes and writes its pid file). False if it was running."""
    if running_pid(Path(spec.pidfile)) is not None:
        return False
    run(["ip", "netns", "exec", ns, *spec.argv], host=f"netns {ns}")
    return True
