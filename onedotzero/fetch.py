"""Downloads that survive a bad network: resumed where they stopped (HTTP Range), hashed as they arrive,
published by rename only when complete and (if given) matching their SHA-256; a server that cannot be reached
at all is said once, with why (name resolution, refused, timed out)."""

from __future__ import annotations

import hashlib
import os
import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

import requests
from tqdm import tqdm

from onedotzero.errors import UserError
from onedotzero.log import log

CHUNK = 64 << 10  # small enough that an interrupted transfer keeps nearly all it received
RETRIES = 3  # resumed attempts per download


def download(url: str, dest: Path, *, expected_sha256: str | None = None, timeout: float = 30) -> str:
    """Fetch url to dest (atomically), resuming dest.part; returns the SHA-256 of the whole file."""
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    last_error = ""
    for attempt in range(1, RETRIES + 1):
        sha = hashlib.sha256()
        have = part.stat().st_size if part.exists() else 0
        if have:
            with open(part, "rb") as f:
                for block in iter(lambda: f.read(CHUNK), b""):
                    sha.update(block)
        headers = {"Range": f"bytes={have}-"} if have else {}
        try:
            with requests.get(url, headers=headers, stream=True, timeout=timeout) as r:
                if r.status_code == 416 and have:  # nothing left to fetch: the part is complete
                    break
                if r.status_code not in (200, 206):
                    raise UserError(f"download of {url} failed: HTTP {r.status_code} {r.reason}",
                                    "check the profile's release URL and file name")
                if have and r.status_code == 200:  # the server ignored Range: start over
                    have, sha = 0, hashlib.sha256()
                total = have + int(r.headers.get("Content-Length", 0)) or None
                mode = "ab" if have else "wb"
                with open(part, mode) as f, tqdm(total=total, initial=have, unit="B", unit_scale=True,
                                                 desc=dest.name, leave=False, disable=None) as bar:
                    for block in r.iter_content(CHUNK):
                        f.write(block)
                        sha.update(block)
                        bar.update(len(block))
                if total is not None and part.stat().st_size < total:
                    raise requests.exceptions.ChunkedEncodingError("short read")
            break
        except (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError,
                requests.exceptions.Timeout) as e:
            unreachable = why_unreachable(e, url)
            if unreachable:  # nothing was transferred and retrying will not change that: say what failed, once
                raise UserError(f"download of {url} failed: {unreachable}",
                                "check the network and the URL (the profile's release_url, or --release-url)"
                                ) from None
            last_error = f"{type(e).__name__}: {e}"
            log.info("download of %s interrupted after %d bytes (attempt %d/%d), resuming",
                     dest.name, part.stat().st_size if part.exists() else 0, attempt, RETRIES)
            time.sleep(min(attempt, 3) * 0.2)
    else:
        raise UserError(f"download of {url} kept failing ({last_error})",
                        "re-run to resume from where it stopped; check the network")
    digest = sha.hexdigest()
    if expected_sha256 and digest != expected_sha256:
        part.unlink(missing_ok=True)  # a wrong file is not worth resuming
        raise UserError(f"{dest.name}: SHA-256 {digest} does not match SHA256SUMS ({expected_sha256})",
                        "the download is corrupt or was tampered with; it was deleted, re-run to fetch it again")
    os.rename(part, dest)
    return digest


def why_unreachable(error: BaseException, url: str) -> str | None:
    """The reason a connection was never made (name resolution, refused, timed out), else None."""
    host = urlsplit(url).netloc
    seen, todo = set(), [error]
    while todo:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, socket.gaierror):
            return f"cannot resolve {urlsplit(url).hostname} (DNS: {e.strerror or e})"
        if isinstance(e, ConnectionRefusedError):
            return f"connection refused by {host}"
        if isinstance(e, requests.exceptions.ConnectTimeout):
            return f"timed out connecting to {host}"
        todo += [x for x in (*getattr(e, "args", ()), getattr(e, "reason", None), e.__cause__, e.__context__)
                 if isinstance(x, BaseException)]
    return None


