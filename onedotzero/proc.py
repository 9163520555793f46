"""Running commands: stream or capture, and fail with the full story (command, exit code, stderr, host)."""

from __future__ import annotations

import collections
import ctypes
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from onedotzero.errors import CommandError, UserError
from onedotzero.log import log

_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In the child before exec: get SIGKILL when the toolkit dies, so no orphan keeps writing."""
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


_interrupted = False


def remember_interrupts() -> None:
    """Ctrl-C raises KeyboardInterrupt as usual, and is remembered: Python drops an exception raised while it
    runs its at-fork hooks (logging's, at every subprocess start), so a Ctrl-C landing there would be lost.
    Long orchestrators call check_interrupt() between steps. Leaves an ignored SIGINT (nohup, &) ignored."""
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        return

    def on_sigint(signum, frame):
        global _interrupted
        _interrupted = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_sigint)


def check_interrupt() -> None:
    """Between steps: raise the KeyboardInterrupt a Ctrl-C should have raised, if Python dropped it."""
    if _interrupted:
        raise KeyboardInterrupt


def require_tools(*tools: str, hint: str = "run `make setup`") -> None:
    """Refuse early when a tool we shell out to is missing."""
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        raise UserError(f"missing tool(s): {', '.join(missing)}", hint)


def require_interface(interface: str, inventory_path: Path) -> None:
    """Refuse early when the inventory's compute interface is not on this host."""
    if not Path(f"/sys/class/net/{interface}").exists():
        raise UserError(f"compute_interface {interface!r} does not exist on this host",
                        f"fix control.compute_interface in {inventory_path} (see `ip link`)")


def run(
    cmd: Sequence[str | os.PathLike],
    *,
    capture: bool = False,
    check: bool = True,
    host: str = "localhost",
    env: dict[str, str] | None = None,
    cwd: str | Path | None = None,
    input: str | None = None,
    timeout: float | None = None,
) -> subprocess.CompletedProcess:
    """Run cmd. Streams stdout unless capture; stderr is always kept for the failure report."""
    argv = [str(c) for c in cmd]
    log.debug("$ %s", " ".join(argv))
    start = time.monotonic()
    try:
        proc = subprocess.run(
            argv,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **env} if env else None,
            cwd=cwd,
            input=input,
            timeout=timeout,
            preexec_fn=die_with_parent,
        )
    except FileNotFoundError as e:
        raise UserError(f"cannot run {argv[0]}: not installed", "run `make setup`") from e
    except subprocess.TimeoutExpired as e:
        raise CommandError(argv, -1, f"timed out after {timeout}s\n{e.stderr or ''}", host,
                           time.monotonic() - start) from e
    if proc.stderr and not capture:
        log.debug(proc.stderr.rstrip())
    if check and proc.returncode != 0:
        raise CommandError(argv, proc.returncode, proc.stderr or "", host, time.monotonic() - start)
    return proc


def run_progress(
    cmd: Sequence[str | os.PathLike],
    title: str,
    *,
    phase: re.Pattern[str] | None = None,
    host: str = "localhost",
    env: dict[str, str] | None = None,
    cwd: str | Path | None = None,
) -> None:
    """Run a long, chatty command showing one progress line instead of its output.

    Lines matching `phase` (group 1 = a short description) advance the bar; stdout and stderr are
    merged, and the last 40 lines go into the error if the command fails. With -v every line is logged.
    """
    argv = [str(c) for c in cmd]
    log.debug("$ %s", " ".join(argv))
    start = time.monotonic()
    tail: collections.deque[str] = collections.deque(maxlen=40)
    bar = tqdm(desc=title, unit=" steps", leave=False, disable=not sys.stderr.isatty(), file=sys.stderr)
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, **env} if env else None, cwd=cwd, bufsize=1,
                                preexec_fn=die_with_parent)
    except FileNotFoundError as e:
        raise UserError(f"cannot run {argv[0]}: not installed", "run `make setup`") from e
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            tail.append(line)
            log.debug("  %s", line)
            m = phase.search(line) if phase else None
            if m:
                bar.set_postfix_str(m.group(1)[:60], refresh=False)
                bar.update(1)
        proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        bar.close()
    if proc.returncode != 0:
        raise CommandError(argv, proc.returncode, "\n".join(tail), host, time.monotonic() - start)
