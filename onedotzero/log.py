"""Logging convention: success is one short line per node/step; failures carry full detail."""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterator

log = logging.getLogger("onedotzero")


def setup_logging(verbose: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s" if not verbose else "%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger("onedotzero")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False


@contextlib.contextmanager
def step(title: str) -> Iterator[None]:
    """Log a step's start at debug level and its outcome with the elapsed time."""
    start = time.monotonic()
    log.debug("%s ...", title)
    try:
        yield
    except BaseException:
        log.error("%s: failed after %.1fs", title, time.monotonic() - start)
        raise
    log.info("%s: done in %.1fs", title, time.monotonic() - start)
