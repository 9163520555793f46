#!/usr/bin/env python3
"""Sync this working copy to the control node and run a command there.

    ./remote.py make test            # rsync to control:~/remote/<dirname>, then run `make test` there
    ./remote.py --host nuc ls -la    # another ssh Host alias

The tree is mirrored: files deleted here are deleted there, and whatever .gitignore files exclude
(build outputs, caches, the venv) is neither sent nor deleted remotely. The command runs in a login
shell in the synced directory; its output streams back and its exit code is ours.

Stdlib only on purpose: it must work on a fresh checkout before `make setup` has made a venv.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

SSH_UNREACHABLE = 255  # ssh's own exit code for connection errors
RSYNC_CONN_CODES = {5, 10, 12, 35, 255}  # rsync: protocol/startup, socket, stream, timeout, ssh failure
EXCLUDES = (".git/", ".venv/", "__pycache__/", ".pytest_cache/", ".ruff_cache/")


def fail(message: str, code: int = 2) -> None:
    print(f"remote.py: {message}", file=sys.stderr)
    sys.exit(code)


def working_copy() -> Path:
    """The git top level of the cwd, else the cwd itself."""
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True, check=True)
        return Path(top.stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        return Path.cwd()


def ssh_base(args: argparse.Namespace) -> list[str]:
    cmd = ["ssh", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={args.connect_timeout}"]
    if args.ssh_config:
        cmd += ["-F", args.ssh_config]
    return cmd


def sync(args: argparse.Namespace, src: Path, dest: str) -> None:
    """Mirror src to host:dest (relative to the remote home), creating it if needed."""
    cmd = [
        # --checksum: a quick size+mtime check misses same-size edits made within the same second.
        "rsync", "--archive", "--checksum", "--compress", "--delete",
        "--filter=:- .gitignore",  # honour .gitignore files, in every directory
        *(f"--exclude={e}" for e in EXCLUDES),
        f"--rsh={shlex.join(ssh_base(args))}",
        f"--rsync-path=mkdir -p {shlex.quote(dest)} && rsync",
        f"{src}/", f"{args.host}:{dest}/",
    ]
    proc = subprocess.run(cmd, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        if proc.returncode in RSYNC_CONN_CODES:
            fail(f"cannot reach {args.host!r} over ssh: {last} "
                 f"(check `ssh {args.host}` works: a Host alias in ~/.ssh/config, the key, the network)")
        fail(f"rsync to {args.host}:{dest} failed with exit code {proc.returncode}: {last}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description="Rsync this working copy to the control node and run CMD there.",
        epilog="example: ./remote.py make test",
    )
    p.add_argument("--host", default=os.environ.get("ONEDOTZERO_REMOTE_HOST", "control"),
                   help="ssh host or Host alias (default: control, env ONEDOTZERO_REMOTE_HOST)")
    p.add_argument("--ssh-config", default=os.environ.get("ONEDOTZERO_REMOTE_SSH_CONFIG"),
                   help="ssh config file to use instead of ~/.ssh/config (env ONEDOTZERO_REMOTE_SSH_CONFIG)")
    p.add_argument("--connect-timeout", type=int, default=10, help="seconds to wait for ssh to connect")
    p.add_argument("command", nargs=argparse.REMAINDER, help="the command to run remotely")
    args = p.parse_args(argv)
    if not args.command:
        p.error("give a command to run, e.g. ./remote.py make test")
    for tool in ("ssh", "rsync"):
        if shutil.which(tool) is None:
            fail(f"{tool} is not installed (apt-get install openssh-client rsync)")

    src = working_copy()
    dest = f"remote/{src.name}"
    sync(args, src, dest)
    remote_cmd = f"cd {shlex.quote(dest)} && exec bash -lc {shlex.quote(shlex.join(args.command))}"
    tty = ["-t"] if sys.stdin.isatty() and sys.stdout.isatty() else []
    proc = subprocess.run([*ssh_base(args), *tty, args.host, remote_cmd])
    if proc.returncode == SSH_UNREACHABLE:
        fail(f"lost the ssh connection to {args.host!r} (or the command exited 255)", SSH_UNREACHABLE)
    return proc.returncode


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
