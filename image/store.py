"""The image store: versioned images published atomically, and the questions asked of them.

Layout (all under the inventory's image.store):
    golden/<version>/           a published golden image (manifest.json, vmlinuz, initrd.img, live/*.squashfs)
    live/<version>/             a published live image
    .staging/                   builds in progress (same filesystem, so publishing is one rename)
    .lock                       held by the build that is running

A version directory appears only by rename of a complete staging directory, so anything under
golden/ or live/ is complete; a build that dies leaves at most junk in .staging/, cleared by the next.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from onedotzero.errors import UserError

KINDS = ("golden", "live")
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Version:
    kind: str
    name: str
    path: Path

    @property
    def ref(self) -> str:
        return f"{self.kind}@{self.name}"

    def manifest(self) -> dict:
        try:
            return json.loads((self.path / MANIFEST).read_text())
        except (OSError, ValueError) as e:
            raise UserError(f"{self.ref}: unreadable manifest: {e}", "rebuild it or remove it") from e

    def size(self) -> int:
        return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())


class Store:
    def __init__(self, root: Path):
        self.root = root

    def versions(self, kind: str) -> list[Version]:
        """Published versions of a kind, oldest first (names start with a UTC timestamp)."""
        d = self.root / kind
        if not d.is_dir():
            return []
        return [Version(kind, p.name, p) for p in sorted(d.iterdir()) if (p / MANIFEST).is_file()]

    def all_versions(self) -> list[Version]:
        return [v for k in KINDS for v in self.versions(k)]

    def get(self, kind: str, name: str | None = None) -> Version:
        """A named version, or the newest one when name is None."""
        if kind not in KINDS:
            raise UserError(f"unknown image kind {kind!r}", f"choose one of: {', '.join(KINDS)}")
        versions = self.versions(kind)
        if name is None:
            if not versions:
                raise UserError(f"no {kind} image in {self.root}", f"build one: ./cluster.py image build {kind}")
            return versions[-1]
        for v in versions:
            if v.name == name:
                return v
        if (self.root / kind / name).exists():
            raise UserError(f"{kind}@{name} is incomplete (no {MANIFEST})", "rebuild it or remove the directory")
        known = ", ".join(v.name for v in versions[-5:]) or "none"
        raise UserError(f"no such image {kind}@{name}", f"known {kind} versions: {known}")

    def find_by_input(self, kind: str, input_hash: str) -> Version | None:
        for v in reversed(self.versions(kind)):
            if v.manifest().get("input_hash") == input_hash:
                return v
        return None

    # --- building and publishing ------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """One build at a time per store; the lock dies with its holder, even on SIGKILL."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
                raise UserError(f"another build is running on {self.root} (pid {holder})",
                                "wait for it to finish; two builds at once are refused") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            yield
        finally:
            os.close(fd)

    def clear_staging(self) -> None:
        """Remove what killed builds left behind. Call with the lock held."""
        staging = self.root / ".staging"
        if staging.is_dir():
            for p in staging.iterdir():
                shutil.rmtree(p, ignore_errors=True)

    @contextlib.contextmanager
    def staging(self, kind: str) -> Iterator[Path]:
        """A fresh directory on the store's filesystem, removed unless it was published."""
        base = self.root / ".staging"
        base.mkdir(parents=True, exist_ok=True)
        path = base / f"{kind}-{os.getpid()}-{time.monotonic_ns()}"
        path.mkdir()
        try:
            yield path
        finally:
            if path.exists():
                shutil.rmtree(path, ignore_errors=True)

    def publish(self, kind: str, name: str, src: Path) -> Version:
        """Atomically make the complete directory src visible as kind/name."""
        if not (src / MANIFEST).is_file():
            raise UserError(f"refusing to publish {kind}@{name}: {MANIFEST} missing")
        dest_dir = self.root / kind
        dest_dir.mkdir(parents=True, exist_ok=True)
        dest = dest_dir / name
        if dest.exists():
            raise UserError(f"{kind}@{name} already exists", "versions are immutable")
        os.chmod(src, 0o755)
        os.rename(src, dest)
        fd = os.open(dest_dir, os.O_RDONLY)  # make the rename durable before nodes are pointed at it
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return Version(kind, name, dest)

    # --- maintenance ------------------------------------------------------------------------------

    def gc(self, keep: int, pinned: set[str]) -> list[Version]:
        """Delete all but the newest `keep` versions of each kind; never a pinned ref or the newest."""
        if keep < 1:
            raise UserError(f"--keep {keep} would delete the newest image", "keep at least 1")
        removed = []
        for kind in KINDS:
            versions = self.versions(kind)
            for v in versions[: max(0, len(versions) - keep)]:
                if v.ref in pinned:
                    continue
                # Rename first so a half-deleted version is never visible as an image.
                trash = self.root / ".staging" / f"gc-{v.kind}-{v.name}"
                trash.parent.mkdir(parents=True, exist_ok=True)
                os.rename(v.path, trash)
                shutil.rmtree(trash)
                removed.append(v)
        return removed


def diff_packages(a: dict, b: dict) -> list[str]:
    """Package changes from manifest a to manifest b, as `+ name ver`, `- name ver`, `~ name old -> new`."""
    pa, pb = a.get("packages", {}), b.get("packages", {})
    lines = []
    for name in sorted(set(pa) | set(pb)):
        if name not in pa:
            lines.append(f"+ {name} {pb[name]}")
        elif name not in pb:
            lines.append(f"- {name} {pa[name]}")
        elif pa[name] != pb[name]:
            lines.append(f"~ {name} {pa[name]} -> {pb[name]}")
    return lines
