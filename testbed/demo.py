"""`make demo`: the whole flow on the virtual cluster, as a user would run it on the real one.

  1. build the debian-12 golden image (cached after the first time)
  2. start the virtual cluster (namespace, dnsmasq, nginx, NFS, Wake-on-LAN listener)
  3. cluster.py boot --image golden
  4. cluster.py compute up        (run as the control node: inside the namespace)
  5. cluster.py compute status
  6. tear down (unless --keep)

Runs on the host as root. Ctrl-C at any point tears the virtual cluster down.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from onedotzero import inventory, paths
from onedotzero.errors import UserError
from onedotzero.log import setup_logging
from testbed.bed import STATE_ROOT, Testbed

INVENTORY = paths.REPO / "testbed" / "cluster.yml"
BOOT_TIMEOUT = 900


def ensure_key() -> None:
    """The testbed inventory's admin key: made once, kept outside the clone."""
    key = STATE_ROOT / "id_ed25519"
    if not key.exists():
        STATE_ROOT.mkdir(parents=True, exist_ok=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "onedotzero-testbed", "-f", str(key)],
                       check=True)


def cli(bed: Testbed | None, *args: str) -> int:
    """cluster.py as the user types it; inside the namespace when bed is given (the control node's view)."""
    prefix = bed.ns_argv([]) if bed else []
    argv = [*prefix, sys.executable, str(paths.REPO / "cluster.py"), "-i", str(INVENTORY), *args]
    print(f"$ {'ip netns exec ' + bed.ns + ' ' if bed else ''}./cluster.py {' '.join(args)}", flush=True)
    return subprocess.run(argv).returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", action="store_true", help="leave the virtual cluster running")
    args = parser.parse_args()
    setup_logging()
    start = time.monotonic()
    ensure_key()
    if cli(None, "image", "build", "golden") != 0:
        return 1
    bed = Testbed(inventory.load(INVENTORY))
    if bed.exists():
        bed.down()  # a demo left running earlier (--keep): start clean
    bed.up()
    rc = 1
    try:
        if cli(None, "boot", "--image", "golden") == 0 and \
                cli(bed, "compute", "up", "--timeout", str(BOOT_TIMEOUT)) == 0:
            rc = cli(bed, "compute", "status")
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        rc = 130
    finally:
        if rc != 0:
            print(bed.diagnostics(20), file=sys.stderr)
        if args.keep and rc == 0:
            print(f"kept running: sudo ip netns exec {bed.ns} ./cluster.py -i {INVENTORY} compute status; "
                  f"`make testbed-down` stops it")
        else:
            bed.down()
    print(f"demo {'succeeded' if rc == 0 else 'failed'} in {time.monotonic() - start:.0f}s (wall time)")
    return rc


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as e:
        print(f"error: {e.line()}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
