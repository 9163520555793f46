"""A container node's supervisor: its power button, firmware and power supply in one process.

    python -m testbed.container <state>/nodes/<node>/node.json        (started by start_node)

The node is on while this process lives (its PID file). Each boot, in order:
  choose    the node's boot choice from the store, as the toolkit left it (`cluster.py boot`); a pending
            one-time choice is taken and dnsmasq's TFTP hook is run, as when a real node fetches its file
  lower     the chosen golden image's squashfs, loop-mounted read-only once per testbed and version
            (shared by every node booting it, under <state>/lower/<version>)
  root      in a mount namespace of the boot's own: tmpfs upper layer + overlayfs at <node>/root
            (the writable layer in RAM, gone when the boot ends, as on a real node)
  run       systemd-nspawn --boot in the node's network namespace and cgroups, /models bound from the
            node's directory (it survives restarts like the SSD)
nspawn exits 133 when the node reboots: the next boot takes the choice it now points at. A poweroff, a
failure or SIGTERM (sent on to nspawn: an orderly halt) ends the supervisor: the node is off.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from image.store import Store
from netboot import selection
from onedotzero import inventory
from onedotzero.errors import UserError
from onedotzero.proc import die_with_parent
from testbed import cgroups

REBOOT = 133  # systemd-nspawn's exit status when the container rebooted
CLONE_NEWNS = 0x00020000
MS_REC, MS_SLAVE = 0x4000, 0x80000


def say(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} supervisor: {message}", flush=True)


def choose(cfg: dict) -> Path:
    """The squashfs of the golden image the node boots now (a pending --once is taken, as a node would)."""
    inv = inventory.load(cfg["inventory"])
    node = inv.node(cfg["node"])
    choice = next(c for c in selection.choices(inv) if c.node == node.name)
    if choice.then is not None and Path(cfg["tftp_hook"]).is_file():
        # What dnsmasq runs when a node has fetched its one-time boot file: the previous choice comes back.
        subprocess.run([cfg["tftp_hook"], "tftp", "0", str(node.ip),
                        str(inv.image.store / "tftp" / "once" / f"{node.mac_hyphen}.ipxe")], check=False)
    if choice.ref.kind != "golden":
        raise UserError(f"{node.name} is set to boot {choice.ref}: a container node boots golden images only",
                        f"./cluster.py boot --image golden {node.name}")
    version = Store(inv.image.store).get(choice.ref)
    say(f"booting {version.ref}" + (" (once)" if choice.then else ""))
    return version.path / version.manifest.boot.squashfs


def mounted(path: Path) -> bool:
    return any(line.split()[4] == str(path) for line in Path("/proc/self/mountinfo").read_text().splitlines())


def ensure_lower(cfg: dict, squashfs: Path) -> Path:
    """The image's squashfs mounted read-only under <state>/lower/<version>, once for all nodes."""
    root = Path(cfg["lower_root"])
    root.mkdir(parents=True, exist_ok=True)
    lower = root / squashfs.parent.parent.name
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not mounted(lower):
            lower.mkdir(exist_ok=True)
            subprocess.run(["mount", "-o", "loop,ro", str(squashfs), str(lower)], check=True, capture_output=True)
    return lower


def boot(cfg: dict, lower: Path, groups: list[Path]) -> int:
    """One boot of the node; returns nspawn's exit status."""
    d = Path(cfg["dir"])
    rw, root = d / "rw", d / "root"

    def child() -> None:  # runs in the forked child, before exec: its own mount namespace and cgroups
        die_with_parent()
        cgroups.enter(groups)
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.unshare(CLONE_NEWNS) != 0 or libc.mount(b"none", b"/", None, MS_REC | MS_SLAVE, None) != 0:
            raise OSError(ctypes.get_errno(), "cannot make a private mount namespace")
        for argv in (["mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", str(rw)],
                     ["mkdir", "-p", f"{rw}/upper", f"{rw}/work"],
                     ["mount", "-t", "overlay", "overlay", "-o",
                      f"lowerdir={lower},upperdir={rw}/upper,workdir={rw}/work", str(root)]):
            subprocess.run(argv, check=True)

    argv = ["systemd-nspawn", "--quiet", "--boot", "--register=no", "--keep-unit", f"--directory={root}",
            f"--machine={cfg['machine']}", f"--hostname={cfg['node']}",
            # The node's own network namespace: it may configure its links (networkd needs CAP_NET_ADMIN).
            f"--network-namespace-path=/run/netns/{cfg['netns']}", "--capability=CAP_NET_ADMIN",
            f"--bind={cfg['models']}:/models",
            "--console=read-only", "--link-journal=no", "--resolv-conf=off", "--timezone=off"]
    proc = subprocess.Popen(argv, preexec_fn=child, stdin=subprocess.DEVNULL)
    stop = {"asked": False}

    def forward(signum, _frame) -> None:
        stop["asked"] = True
        proc.send_signal(signal.SIGTERM)  # nspawn asks the container's systemd for an orderly halt

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    code = proc.wait()
    return -1 if stop["asked"] else code


def main(config: str) -> int:
    cfg = json.loads(Path(config).read_text())
    pidfile = Path(cfg["pidfile"])
    groups = None
    try:
        while True:
            try:
                lower = ensure_lower(cfg, choose(cfg))
            except (UserError, subprocess.CalledProcessError) as e:
                say(f"cannot boot: {e}")
                return 1
            if groups is None:  # on only once it has something to boot: power-on waits for this PID file
                pidfile.write_text(f"{os.getpid()}\n")
                groups = cgroups.create(cfg["cgroup"], cfg.get("memory_mb"))
            code = boot(cfg, lower, groups)
            if code != REBOOT:
                say(f"powered off (nspawn exit status {code})")
                return 0
            say("rebooting")
    finally:
        pidfile.unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
