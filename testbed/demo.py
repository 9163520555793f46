"""`make demo`: the whole flow on the virtual cluster, as a user would run it on the real one.

  1. build the debian-12 golden images, one per hardware profile (cached after the first time; the container
     nodes' image carries the llama.cpp build, compiled once and cached)
  2. start the virtual cluster (namespace, dnsmasq, nginx, NFS, Wake-on-LAN listener, the fabric cable)
  3. cluster.py boot --image golden
  4. cluster.py compute up        (run as the control node: inside the namespace; QEMU nodes PXE-boot,
                                   container nodes run their image natively)
  5. cluster.py compute status
  6. a small generated model: models import, models push to the inference nodes
  7. cluster.py inference up, then cluster.py chat: an answer streamed from the cluster through the control node
  8. tear down (unless --keep)

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
from testbed.tiny_model import write_gguf

INVENTORY = paths.REPO / "testbed" / "cluster.yml"
BOOT_TIMEOUT = 900
MODEL = "tiny-chat"  # the inventory's inference.model
QUESTION = "What does a fabric link carry?"


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
        inv = bed.inv
        serving = [inv.inference.head, *inv.inference.workers]
        model = write_gguf(STATE_ROOT / f"{MODEL}.gguf")  # random weights, fixed seed: mechanics, not wisdom
        steps = [(None, "boot", "--image", "golden"),
                 (bed, "compute", "up", "--timeout", str(BOOT_TIMEOUT)),
                 (bed, "compute", "status"),
                 (None, "models", "import", str(model), "--name", MODEL),
                 (bed, "models", "push", MODEL, *serving),
                 (bed, "inference", "up"),
                 (bed, "chat", QUESTION, "--max-tokens", "32")]
        rc = 0
        for where, *step_args in steps:
            rc = cli(where, *step_args)
            if rc != 0:
                break
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
