"""Start a program attached to a tap of one network namespace while it runs in another.

    ip netns exec <testbed-ns> python -m testbed.tap_exec TAP NETNS_FD -- qemu-system-x86_64 ... fd=TAPFD ...

Runs inside the testbed's namespace: opens the tap there (a tap is reached by name only in its own
namespace), then switches to the namespace behind NETNS_FD (an inherited descriptor, the caller's
own network namespace) and execs the program with the tap's descriptor in place of "TAPFD". The
control-node VM needs both: its NIC on the testbed's segment, and QEMU user networking that can
reach Debian's mirror, which only works from a namespace with a route out.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import struct
import sys

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
CLONE_NEWNET = 0x40000000


def main(argv: list[str]) -> None:
    tap, netns_fd, sep, *program = argv
    if sep != "--" or not program:
        sys.exit("usage: python -m testbed.tap_exec TAP NETNS_FD -- PROGRAM [ARGS... TAPFD ...]")
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", tap.encode(), IFF_TAP | IFF_NO_PI))
    os.set_inheritable(fd, True)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(int(netns_fd), CLONE_NEWNET) != 0:
        sys.exit(f"tap_exec: setns: {os.strerror(ctypes.get_errno())}")
    os.close(int(netns_fd))
    os.execvp(program[0], [a.replace("TAPFD", str(fd)) for a in program])


if __name__ == "__main__":
    main(sys.argv[1:])
