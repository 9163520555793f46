"""Fixture servers for download tests: a loopback HTTP server with Range support and injectable faults,
and OpenPGP test keys made by the test (never a real release key)."""

from __future__ import annotations

import http.server
import os
import re
import subprocess
import threading
from pathlib import Path


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.files: dict[str, bytes] = {}
        self.faults: dict[str, str] = {}  # path -> "drop-once" | "truncate"
        self.requests: list[tuple[str, str]] = []  # (path, Range header)


class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def do_GET(self):
        srv: Server = self.server  # type: ignore[assignment]
        path = self.path.lstrip("/")
        rng = self.headers.get("Range", "")
        srv.requests.append((path, rng))
        if path not in srv.files:
            self.send_error(404)
            return
        data, start = srv.files[path], 0
        if m := re.match(r"bytes=(\d+)-$", rng):
            start = int(m[1])
            if start >= len(data):
                self.send_response(416)
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        fault = srv.faults.get(path)
        if fault == "truncate" or (fault == "drop-once" and not rng):
            if fault == "drop-once":
                srv.faults.pop(path)
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(2)  # the server drops mid-download
            return
        self.wfile.write(body)


def serve(files: dict[str, bytes]) -> Server:
    srv = Server()
    srv.files = dict(files)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def make_keys(home: Path) -> dict:
    """Two test signing keys, "pinned" and "other", both in one binary keyring."""
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(home, 0o700)
    env = {**os.environ, "GNUPGHOME": str(home)}
    fprs = []
    for name in ("pinned", "other"):
        subprocess.run(["gpg", "--batch", "--passphrase", "", "--quick-gen-key", f"onedotzero {name} <{name}@invalid>",
                        "ed25519", "sign", "never"], env=env, check=True, capture_output=True)
        out = subprocess.run(["gpg", "--with-colons", "--list-keys", f"{name}@invalid"], env=env, check=True,
                             capture_output=True, text=True).stdout
        fprs.append(next(line.split(":")[9] for line in out.splitlines() if line.startswith("fpr:")))
    keyring = home / "keyring.gpg"
    keyring.write_bytes(subprocess.run(["gpg", "--export", *fprs], env=env, check=True, capture_output=True).stdout)
    return {"env": env, "pinned": fprs[0], "other": fprs[1], "keyring": keyring}


def sign(keys: dict, data: bytes, signer: str) -> bytes:
    return subprocess.run(["gpg", "--batch", "--yes", "--detach-sign", "-u", signer, "-o", "-"], input=data,
                          env=keys["env"], check=True, capture_output=True).stdout
