"""The virtual cluster: the control node's network in a namespace, real servers, QEMU and container nodes.

Runs on the host as root. Everything lives in network namespaces the testbed creates:
  odz-<name>          the control node's side of compute_interface: the bridge (192.168.1.1/24), dnsmasq,
                      nginx, rpcbind + nfs-ganesha, Prometheus started from the files `netboot.render.deploy` writes
                      for a real control node, and the Wake-on-LAN listener
  tap<i>              one per QEMU node, on the bridge (testbed/nodes.py QemuNode)
  odz-<name>-<node>   one per container node, its veth on the bridge; fabric cables between them
                      (testbed/links.py)
The node kinds come from the nodes' hardware profiles (`virtual: qemu|container`), so a testbed can mix
them. No DHCP, TFTP or broadcast leaves the namespaces; every process is recorded by PID (and container
nodes by cgroup) in the state directory, so `down` (from any process) ends exactly what `up` started.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import telemetry
from netboot import render
from onedotzero.errors import UserError
from onedotzero.inventory import Inventory
from onedotzero.log import log
from onedotzero.proc import check_interrupt, require_tools, run
from testbed import base, links, nodes
from testbed.base import NODES_FILE, STATE_ROOT, NodeSpec, ns_argv, read_specs, running_pid, start_node, stop_pid

SERVICES = ("rpcbind", "ganesha", "dnsmasq", "nginx", "prometheus", "wol")
# Debian's Prometheus, unpacked by `make setup` (installing the package would start one in the machine's own
# network namespace); one on PATH is used first.
PROMETHEUS = Path("/var/cache/onedotzero/tools/prometheus/usr/bin/prometheus")
MODELS_ROOT = STATE_ROOT / "models"  # container nodes' /models: kept across `down`, like their SSDs


class Testbed:
    """Fast mode: the control node's servers run as processes in the namespace."""

    __test__ = False  # not a pytest test class, whatever its name
    mode = "fast"
    services = SERVICES  # what `down` ends, in reverse order
    tools = ("ip", "tc", "nft", "sysctl", "dnsmasq", "nginx", "ganesha.nfsd", "rpcbind", "unshare")
    extra_taps: tuple[str, ...] = ()

    def __init__(self, inv: Inventory, name: str = "default", memory_mb: int = 2048, lan: str | None = "gbe"):
        if not name.replace("-", "").isalnum() or len(name) > 10:
            raise UserError(f"testbed name {name!r}: use up to 10 letters, digits or '-'")
        self.inv = inv
        self.name = name
        self.ns = f"odz-{name}"
        self.state = STATE_ROOT / f"run-{name}"
        self.memory_mb = memory_mb  # each QEMU node's RAM
        self.lan = lan  # link kind the container nodes' LAN ports are shaped to (None: unshaped)
        self.bridge = inv.control.compute_interface
        self.models_root = MODELS_ROOT / name
        self.drivers = [nodes.driver(self, node, i) for i, node in enumerate(inv.nodes)]

    # --- paths and helpers ------------------------------------------------------------------------

    def path(self, *parts: str) -> Path:
        return self.state.joinpath(*parts)

    def ns_argv(self, argv: list[str]) -> list[str]:
        """argv run inside the testbed's network namespace (the control node's network)."""
        return ns_argv(self.ns, argv)

    def ns_run(self, argv: list[str], **kw) -> subprocess.CompletedProcess:
        return run(self.ns_argv(argv), host=f"netns {self.ns}", **kw)

    def exists(self) -> bool:
        return (Path("/run/netns") / self.ns).exists()

    @property
    def containers(self) -> dict[str, nodes.ContainerNode]:
        return {d.node.name: d for d in self.drivers if isinstance(d, nodes.ContainerNode)}

    def _spawn(self, service: str, argv: list[str], pid_from_file: Path | None = None, net_only: bool = False) -> None:
        """Start a daemon in the namespace and record its PID. net_only: enter the network namespace alone
        (`ip netns exec` also mounts a /sys of its own, which hides the cgroup hierarchies)."""
        wrapped = ["nsenter", f"--net=/run/netns/{self.ns}", "--", *argv] if net_only else self.ns_argv(argv)
        with open(self.path("log", f"{service}.out"), "ab") as logf:  # the child keeps its own copy
            proc = subprocess.Popen(wrapped, stdout=logf, stderr=subprocess.STDOUT,
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
        require_tools(*self.tools, *{t for d in self.drivers for t in d.tools})
        if "prometheus" in self.services and not prometheus_binary():
            raise UserError(f"the virtual control node's Prometheus is missing (not on PATH, not at {PROMETHEUS})",
                            "run `sudo make setup`: it unpacks Debian's prometheus package there")
        if self.exists():
            raise UserError(f"testbed {self.name!r} is already up (namespace {self.ns})",
                            f"stop it first: ./cluster.py -i {self.inv.path} testbed down")

    def up(self) -> None:
        """Namespaces, bridge, cables, control-node services and the WoL listener. Nodes stay off."""
        self.preflight()
        shutil.rmtree(self.state, ignore_errors=True)
        for d in ("run", "log", "etc", "disks", "ganesha", "nodes", "lower"):
            self.path(d).mkdir(parents=True, exist_ok=True)
        self.path("mode").write_text(self.mode + "\n")
        try:
            self._network()
            check_interrupt()
            specs = [d.prepare() for d in self.drivers]
            base.write_specs(self.path(NODES_FILE), specs)
            shaping = [*links.cable_fabric(self.inv, self.containers)]
            if self.containers:
                shaping.append(links.shape_lan(self.containers, self.ns, self.lan))
            self.path("shaping.json").write_text(json.dumps([s.describe() for s in shaping], indent=1))
            check_interrupt()
            self._serve()
            check_interrupt()
            # The listener starts container nodes' supervisors, which need the host's /sys (cgroups).
            self._spawn("wol", [sys.executable, "-m", "testbed.wol_listener", str(self.state), self.bridge],
                        net_only=True)
            self._wait_log("wol.out", "listening", "the Wake-on-LAN listener")
            check_interrupt()
            kinds = ", ".join(f"{n.name} ({d.kind})" for n, d in zip(self.inv.nodes, self.drivers, strict=True))
            log.info("testbed %s up: namespace %s, control %s on %s; nodes %s", self.name, self.ns,
                     self.inv.control.address, self.bridge, kinds)
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
        for tap in self.extra_taps:
            self.ns_run(["ip", "tuntap", "add", tap, "mode", "tap"])
            self.ns_run(["ip", "link", "set", tap, "master", self.bridge, "up"])

    def _serve(self) -> None:
        """The control node's side: rendered configs, then the daemons on them."""
        self._render()
        self._services()

    def _render(self) -> None:
        """The control node's files, exactly as the toolkit deploys them on a real control node."""
        render.deploy(self.inv, self.state, render.RenderOptions(nginx_log_dir=str(self.path("log"))))
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
        # The control node routes for its nodes and keeps other networks out of theirs: the rendered firewall.
        self.ns_run(["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
        self.ns_run(["nft", "-f", str(self.path(render.SERVICE_FILES["firewall"]))])
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
        # Prometheus on the rendered config and command line, its store in the state directory.
        argv = render.prometheus_argv(self.inv, str(self.path(render.SERVICE_FILES["prometheus"])),
                                      str(self.path("prometheus")))
        self._spawn("prometheus", [str(prometheus_binary()), *argv[1:]])
        self._wait_port(self.inv.control.address, 80, "nginx")
        self._wait_port(self.inv.control.address, 2049, "nfs-ganesha", timeout=30)
        self._wait_port(self.inv.control.address, telemetry.PROMETHEUS_PORT, "prometheus", timeout=30)

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
        """End every process the testbed started (by PID, and container nodes by cgroup), unmount the
        images container nodes booted, then delete the namespaces and their links."""
        specs = self.node_specs()
        for spec in specs.values():
            stop_pid(Path(spec.pidfile), grace=15 if spec.kind == "container" else 5)
        for service in reversed(self.services):
            stop_pid(self.path("run", f"{service}.pid"))
        for pidfile in sorted(self.path("run").glob("*.pid")):  # anything else recorded (e.g. another mode's)
            stop_pid(pidfile)
        for d in self.drivers:
            d.teardown()
        lower = self.path("lower")
        for mount in sorted(lower.glob("*")) if lower.is_dir() else ():
            if mount.is_dir():
                run(["umount", "-l", mount], check=False)
        if self.exists():
            run(["ip", "netns", "delete", self.ns], check=False)
        log.info("testbed %s down", self.name)

    # --- compute nodes --------------------------------------------------------------------------

    def node_specs(self) -> dict[str, NodeSpec]:
        return read_specs(self.path(NODES_FILE))

    def spec(self, node: str) -> NodeSpec:
        for s in self.node_specs().values():
            if s.name == node:
                return s
        raise UserError(f"testbed has no node {node!r}")

    def is_on(self, node: str) -> bool:
        return self.spec(node).is_on()

    def power_on(self, node: str) -> bool:
        """Press the power button (the WoL listener does the same on a magic packet). False if it was on."""
        return start_node(self.spec(node))

    def power_off(self, node: str) -> None:
        """Pull the plug: the node's processes die at once, no shutdown."""
        stop_pid(Path(self.spec(node).pidfile), grace=0)
        for d in self.drivers:
            if d.node.name == node:
                d.unplug()

    def status(self) -> dict:
        return {
            "namespace": self.ns if self.exists() else None,
            "services": {s: running_pid(self.path("run", f"{s}.pid")) is not None for s in self.services},
            "nodes": {s.name: s.is_on() for s in self.node_specs().values()},
            "kinds": {s.name: s.kind for s in self.node_specs().values()},
        }

    def diagnostics(self, lines: int = 40) -> str:
        """The tails of every log: consoles, dnsmasq, nginx, ganesha, WoL."""
        out = []
        for f in sorted(self.path("log").glob("*")):
            text = f.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"==> {f} <==\n" + "\n".join(text))
        return "\n".join(out)


def prometheus_binary() -> Path | None:
    found = shutil.which("prometheus")
    return Path(found) if found else (PROMETHEUS if PROMETHEUS.is_file() else None)
