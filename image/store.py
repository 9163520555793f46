"""The image store: versioned images published atomically, and the questions asked of them.

Layout (all under the inventory's image.store):
    golden/<version>/           a published golden image (manifest.json, vmlinuz, initrd.img, live/*.squashfs)
    live/<version>/             a published live image
    .staging/                   builds in progress (same filesystem, so publishing is one rename)
    .lock                       held by the build that is running

A version directory appears only by rename of a complete staging directory, so anything under
golden/ or live/ is complete; a build that dies leaves at most junk in .staging/, cleared by the next.
Versions are named `<UTC timestamp>-<first 8 hex digits of the input hash>` (version_name).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import fcntl
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from onedotzero.errors import UserError
from onedotzero.roles import ImageSpec

KINDS = ("golden", "live")
# What a node can be pointed at: a store kind, the install entry of a live version, the local disk, the menu.
TARGETS = (*KINDS, "install", "local", "menu")
MANIFEST = "manifest.json"
VERSION_RE = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{8}$")


def version_name(input_hash: str, now: dt.datetime | None = None) -> str:
    """The one place version names are made: sortable by time, tied to the inputs."""
    now = now or dt.datetime.now(dt.timezone.utc)
    return f"{now:%Y%m%dT%H%M%SZ}-{input_hash[:8]}"


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class ImageRef:
    """`golden`, `golden@<version>`, `live[@v]`, `install[@v]` (a live version's install entry), `local`, `menu`."""

    kind: str
    version: str | None = None

    @classmethod
    def parse(cls, text: str, allowed: tuple[str, ...] = TARGETS) -> ImageRef:
        kind, at, version = text.partition("@")
        if kind not in allowed:
            forms = [k if k in ("local", "menu") else f"{k}[@VERSION]" for k in allowed]
            raise UserError(f"{text!r}: unknown image", f"use {', '.join(forms)}")
        if at and not version:
            raise UserError(f"{text!r}: no version after '@'", f"e.g. {kind}@20261127T100000Z-1a2b3c4d")
        if version and kind in ("local", "menu"):
            raise UserError(f"{text!r}: {kind} has no versions", f"use {kind}")
        return cls(kind, version or None)

    @property
    def store_kind(self) -> str | None:
        """The store directory holding it (install entries are live images), None for local and menu."""
        return {"install": "live"}.get(self.kind, self.kind if self.kind in KINDS else None)

    def __str__(self) -> str:
        return f"{self.kind}@{self.version}" if self.version else self.kind


@dataclass(frozen=True)
class Boot:
    """How a version boots: file names relative to the version directory, and its kernel arguments."""

    kernel: str
    initrd: str
    args: tuple[str, ...] = ()
    squashfs: str = ""  # golden: the root filesystem
    iso: str = ""  # live: the ISO the initrd fetches into RAM


@dataclass(frozen=True)
class Manifest:
    """manifest.json of a version: written once at build time, read by everything else."""

    kind: str
    version: str
    distro: str
    input_hash: str
    boot: Boot
    created: str = ""
    sizes: dict = field(default_factory=dict)
    # golden: what the image is (distribution + roles: nodes of equal pairs share it) and who it was built for
    roles: tuple[str, ...] = ()
    profiles: tuple[str, ...] = ()
    suite: str = ""
    kernel_version: str = ""
    stage_keys: dict = field(default_factory=dict)
    inputs: dict = field(default_factory=dict)
    durations: dict = field(default_factory=dict)
    stages_ran: tuple[str, ...] = ()
    packages: dict = field(default_factory=dict)
    # live: the ISO it came from
    iso: str = ""
    iso_sha256: str = ""
    source: str = ""
    files: tuple[str, ...] = ()

    @property
    def spec(self) -> ImageSpec | None:
        """The golden image's identity; None for live images and golden ones built before images per profile."""
        return ImageSpec(self.distro, self.roles) if self.kind == "golden" and self.roles else None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: dict) -> Manifest:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}  # newer fields of a newer toolkit are ignored
        boot = dict(values.get("boot") or {})
        values["boot"] = Boot(boot.get("kernel", ""), boot.get("initrd", ""), tuple(boot.get("args", ())),
                              boot.get("squashfs", ""), boot.get("iso", ""))
        for name in ("roles", "profiles", "stages_ran", "files"):
            values[name] = tuple(values.get(name, ()))
        return cls(**values)

    def write(self, directory: Path) -> None:
        (directory / MANIFEST).write_text(self.to_json())


@dataclass(frozen=True)
class Version:
    kind: str
    name: str
    path: Path

    @property
    def ref(self) -> ImageRef:
        return ImageRef(self.kind, self.name)

    @property
    def manifest(self) -> Manifest:
        try:
            return Manifest.from_dict(json.loads((self.path / MANIFEST).read_text()))
        except (OSError, ValueError, TypeError) as e:
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

    def get(self, ref: ImageRef) -> Version:
        """A named version, or the newest one of its kind when the ref names none."""
        kind = ref.store_kind
        if kind is None:
            raise UserError(f"{ref} is not an image in the store", f"choose one of: {', '.join(KINDS)}")
        versions = self.versions(kind)
        if ref.version is None:
            if not versions:
                raise UserError(f"no {kind} image in {self.root}", f"build one: ./cluster.py image build {kind}")
            return versions[-1]
        for v in versions:
            if v.name == ref.version:
                return v
        if (self.root / kind / ref.version).exists():
            raise UserError(f"{kind}@{ref.version} is incomplete (no {MANIFEST})", "rebuild it or remove the directory")
        known = ", ".join(v.name for v in versions[-5:]) or "none"
        raise UserError(f"no such image {kind}@{ref.version}", f"known {kind} versions: {known}")

    def newest_for(self, spec: ImageSpec) -> Version | None:
        """The newest golden version whose distribution and roles are spec's."""
        for v in reversed(self.versions("golden")):
            if v.manifest.spec == spec:
                return v
        return None

    def find_by_input(self, kind: str, input_hash: str) -> Version | None:
        for v in reversed(self.versions(kind)):
            if v.manifest.input_hash == input_hash:
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

    def gc(self, keep: int, pinned: set[ImageRef]) -> list[Version]:
        """Delete all but the newest `keep` versions of each kind and image; never a pinned ref or the newest.

        Golden images are counted per identity (distribution + roles): every profile keeps its own newest."""
        if keep < 1:
            raise UserError(f"--keep {keep} would delete the newest image", "keep at least 1")
        removed = []
        for kind in KINDS:
            groups: dict[object, list[Version]] = {}
            for v in self.versions(kind):
                groups.setdefault(v.manifest.spec if kind == "golden" else kind, []).append(v)
            for versions in groups.values():
                for v in versions[: max(0, len(versions) - keep)]:
                    if v.ref in pinned:
                        continue
                    # Rename first so a half-deleted version is never visible as an image.
                    trash = self.root / ".staging" / f"gc-{v.kind}-{v.name}"
                    trash.parent.mkdir(parents=True, exist_ok=True)
                    os.rename(v.path, trash)
                    shutil.rmtree(trash)
                    removed.append(v)
        return sorted(removed, key=lambda v: (v.kind, v.name))


def diff_packages(a: Manifest, b: Manifest) -> list[str]:
    """Package changes from manifest a to manifest b, as `+ name ver`, `- name ver`, `~ name old -> new`."""
    pa, pb = a.packages, b.packages
    lines = []
    for name in sorted(set(pa) | set(pb)):
        if name not in pa:
            lines.append(f"+ {name} {pb[name]}")
        elif name not in pb:
            lines.append(f"- {name} {pa[name]}")
        elif pa[name] != pb[name]:
            lines.append(f"~ {name} {pa[name]} -> {pb[name]}")
    return lines
