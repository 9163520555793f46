"""The model store: versioned model files published atomically, and the questions asked of them.

Runs on the control node. Layout (all under the inventory's image.cache / "models"):
    <name>/<version>/files/...      the model's files, as in the repository or directory they came from
    <name>/<version>/manifest.json  every file's size and SHA-256, where they came from, the commit a pull resolved
    .staging/                       imports and pulls in progress (same filesystem, so publishing is one rename)
    .hub-cache/<org>--<repo>/       a pull's downloads, kept until published: an interrupted pull resumes from them
    .lock                           held by the import or pull that is running

Like the image store (image/store.py): a version directory appears only by rename of a complete staging
directory, versions are immutable and named `<UTC timestamp>-<first 8 hex digits of the content hash>`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from image.store import VERSION_RE, utc_now, version_name
from onedotzero.errors import UserError

MANIFEST = "manifest.json"
FILES = "files"
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
FORMATS = ("gguf", "hf", "files")


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise UserError(f"{name!r} is not a model name",
                        "1-64 of a-z, 0-9, '.', '_', '-', starting with a letter or digit (give --name)")
    return name


def default_name(source: str | Path) -> str:
    """A model name from a repository id (`Qwen/Qwen2.5-0.5B` -> `qwen--qwen2.5-0.5b`) or a path (a file's stem,
    a directory's name)."""
    if isinstance(source, Path):
        text = source.stem if source.is_file() else source.resolve().name
    else:
        text = source.strip("/").replace("/", "--")
    return check_name(re.sub(r"[^a-z0-9._-]+", "-", text.lower()).lstrip("._-"))


def sha256_file(path: Path) -> str:
    """The file's SHA-256, with a progress bar over its bytes on a terminal."""
    h = hashlib.sha256()
    with open(path, "rb") as f, tqdm(total=path.stat().st_size, unit="B", unit_scale=True, desc=f"hashing {path.name}",
                                     leave=False, disable=None) as bar:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
            bar.update(len(block))
    return h.hexdigest()


def human_size(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 / 10 else f"{n / 2**20:.1f} MiB"


def check_free_space(path: Path, needed: int, what: str) -> None:
    """Refuse before writing `needed` bytes onto path's filesystem when it has less free."""
    free = shutil.disk_usage(path).free
    if needed > free:
        raise UserError(f"{what} needs {human_size(needed)}, {human_size(free)} free on {path}",
                        "free space there (e.g. `cluster.py models gc`) or point image.cache at a larger disk")


@contextlib.contextmanager
def disk_full_is_one_line(path: Path) -> Iterator[None]:
    """A full disk while writing under path becomes one line naming the fix."""
    try:
        yield
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        raise UserError(f"no space left on {path}", "free space there (e.g. `cluster.py models gc`), then run it "
                                                    "again (a pull keeps the files it finished)") from None


def place_file(src: Path, dest: Path) -> None:
    """dest becomes src's content: a hard link on the same filesystem (no second copy of a 20 GB file), else a copy."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dest)
        return
    except OSError:
        pass
    with open(src, "rb") as f, open(dest, "wb") as out, tqdm(total=src.stat().st_size, unit="B", unit_scale=True,
                                                              desc=f"copying {src.name}", leave=False,
                                                              disable=None) as bar:
        for block in iter(lambda: f.read(1 << 20), b""):
            out.write(block)
            bar.update(len(block))
    os.chmod(dest, 0o644)


@dataclass(frozen=True)
class ModelFile:
    path: str  # relative to the version's files/, '/'-separated
    size: int
    sha256: str


def content_hash(files: Iterable[ModelFile]) -> str:
    """What a version is: the SHA-256 over its sorted (path, sha256) pairs."""
    return hashlib.sha256(json.dumps(sorted((f.path, f.sha256) for f in files)).encode()).hexdigest()


def model_format(paths: Iterable[str]) -> str:
    """gguf (llama.cpp loads it), hf (a transformers directory: config.json) or plain files."""
    paths = list(paths)
    if any(p.endswith(".gguf") for p in paths):
        return "gguf"
    return "hf" if "config.json" in paths else "files"


@dataclass(frozen=True)
class ModelManifest:
    """manifest.json of a version: written once at import or pull, read by everything else."""

    name: str
    version: str
    format: str
    files: tuple[ModelFile, ...]
    source: str  # the hub repository's URL, or the imported path
    revision: str  # the commit a pull resolved ("" for imports)
    content_hash: str
    created: str = ""

    @classmethod
    def create(cls, name: str, version: str, files: Iterable[ModelFile], source: str,
               revision: str = "") -> ModelManifest:
        """A new version's manifest (its version from ModelStore.new_version)."""
        files = tuple(sorted(files, key=lambda f: f.path))
        return cls(name, version, model_format(f.path for f in files), files, source, revision, content_hash(files),
                   utc_now())

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: dict) -> ModelManifest:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}  # newer fields of a newer toolkit are ignored
        values["files"] = tuple(ModelFile(f["path"], int(f["size"]), f["sha256"]) for f in values.get("files", ()))
        return cls(**values)

    def write(self, directory: Path) -> None:
        (directory / MANIFEST).write_text(self.to_json())


@dataclass(frozen=True)
class ModelRef:
    """`name` (its newest version) or `name@version`."""

    name: str
    version: str | None = None

    @classmethod
    def parse(cls, text: str) -> ModelRef:
        name, at, version = text.partition("@")
        if not NAME_RE.match(name):
            raise UserError(f"{text!r}: {name!r} is not a model name",
                            "use NAME[@VERSION]; `cluster.py models list` shows the names")
        if at and not version:
            raise UserError(f"{text!r}: no version after '@'", f"e.g. {name}@20261127T100000Z-1a2b3c4d")
        if version and not VERSION_RE.match(version):
            raise UserError(f"{text!r}: {version!r} is not a version", f"e.g. {name}@20261127T100000Z-1a2b3c4d")
        return cls(name, version or None)

    def __str__(self) -> str:
        return f"{self.name}@{self.version}" if self.version else self.name


@dataclass(frozen=True)
class Model:
    name: str
    version: str
    path: Path

    @property
    def ref(self) -> ModelRef:
        return ModelRef(self.name, self.version)

    @property
    def files(self) -> Path:
        return self.path / FILES

    @property
    def manifest(self) -> ModelManifest:
        try:
            return ModelManifest.from_dict(json.loads((self.path / MANIFEST).read_text()))
        except (OSError, ValueError, TypeError, KeyError) as e:
            raise UserError(f"{self.ref}: unreadable manifest: {e}", "import or pull it again, or remove it") from e


class ModelStore:
    def __init__(self, root: Path):
        self.root = root

    def versions(self, name: str) -> list[Model]:
        """Published versions of a model, oldest first (names start with a UTC timestamp)."""
        d = self.root / name
        if name.startswith(".") or not d.is_dir():
            return []
        return [Model(name, p.name, p) for p in sorted(d.iterdir()) if (p / MANIFEST).is_file()]

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return [p.name for p in sorted(self.root.iterdir()) if not p.name.startswith(".") and self.versions(p.name)]

    def all(self) -> list[Model]:
        return [m for n in self.names() for m in self.versions(n)]

    def get(self, ref: ModelRef) -> Model:
        """A named version, or the newest one of the model when the ref names none."""
        versions = self.versions(ref.name)
        if not versions:
            known = ", ".join(self.names()) or "none"
            raise UserError(f"no model {ref.name} in {self.root}",
                            f"known models: {known}; add it with `cluster.py models pull` or `models import`")
        if ref.version is None:
            return versions[-1]
        for m in versions:
            if m.version == ref.version:
                return m
        if (self.root / ref.name / ref.version).exists():
            raise UserError(f"{ref} is incomplete (no {MANIFEST})", "import or pull it again, or remove the directory")
        known = ", ".join(m.version for m in versions[-5:])
        raise UserError(f"no such model {ref}", f"known {ref.name} versions: {known}")

    def new_version(self, name: str, digest: str) -> str:
        """A version name for new content: after every version of name (in the next second if need be), so the
        newest is always the last one. Call with the lock held."""
        versions = self.versions(name)
        newest = versions[-1].version[:16] if versions else ""
        version = version_name(digest)
        while version[:16] == newest:  # at most a second; a clock set back is not waited for
            time.sleep(0.1)
            version = version_name(digest)
        return version

    def find_by_content(self, name: str, digest: str) -> Model | None:
        for m in reversed(self.versions(name)):
            if m.manifest.content_hash == digest:
                return m
        return None

    # --- importing and publishing -----------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """One writer at a time per store; the lock dies with its holder, even on SIGKILL."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
                raise UserError(f"another model import or pull is running on {self.root} (pid {holder})",
                                "wait for it to finish; two at once are refused") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            yield
        finally:
            os.close(fd)

    def clear_staging(self) -> None:
        """Remove what killed imports left behind. Call with the lock held."""
        staging = self.root / ".staging"
        if staging.is_dir():
            for p in staging.iterdir():
                shutil.rmtree(p, ignore_errors=True)

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        """A fresh directory on the store's filesystem, removed unless it was published."""
        base = self.root / ".staging"
        base.mkdir(parents=True, exist_ok=True)
        path = base / f"model-{os.getpid()}-{time.monotonic_ns()}"
        path.mkdir()
        try:
            yield path
        finally:
            if path.exists():
                shutil.rmtree(path, ignore_errors=True)

    def publish(self, name: str, version: str, src: Path) -> Model:
        """Atomically make the complete directory src (manifest.json, files/) visible as name/version."""
        check_name(name)
        if not (src / MANIFEST).is_file():
            raise UserError(f"refusing to publish {name}@{version}: {MANIFEST} missing")
        dest_dir = self.root / name
        dest_dir.mkdir(parents=True, exist_ok=True)
        dest = dest_dir / version
        if dest.exists():
            raise UserError(f"{name}@{version} already exists", "versions are immutable")
        os.chmod(src, 0o755)
        os.rename(src, dest)
        fd = os.open(dest_dir, os.O_RDONLY)  # make the rename durable before nodes are pointed at it
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return Model(name, version, dest)

    # --- maintenance ------------------------------------------------------------------------------

    def gc(self, keep: int, pinned: set[ModelRef]) -> list[Model]:
        """Delete all but the newest `keep` versions of each model; never a pinned one or the newest.

        A pinned ref without a version (what an inference config names as `model: NAME`) pins the newest."""
        if keep < 1:
            raise UserError(f"--keep {keep} would delete the newest model", "keep at least 1")
        removed = []
        for name in self.names():
            versions = self.versions(name)
            held = {r.version or versions[-1].version for r in pinned if r.name == name}
            for m in versions[: max(0, len(versions) - keep)]:
                if m.version in held:
                    continue
                # Rename first so a half-deleted version is never visible as a model.
                trash = self.root / ".staging" / f"gc-{m.name}-{m.version}"
                trash.parent.mkdir(parents=True, exist_ok=True)
                os.rename(m.path, trash)
                shutil.rmtree(trash)
                removed.append(m)
        return removed


def model_store(inv) -> ModelStore:
    """The inventory's model store (under image.cache, beside the download caches)."""
    return ModelStore(inv.image.cache / "models")


def in_use(inv) -> set[ModelRef]:
    """What `models gc` must keep: the model the inference section names, and the version inference runs."""
    from inference.service import plan_file  # the inference layer imports this module: only when asked

    refs = {ModelRef.parse(inv.inference.model)} if inv.inference else set()
    try:
        running = json.loads(plan_file(inv).read_text()).get("model") or {}
    except (OSError, ValueError):
        running = {}
    if running.get("name") and running.get("version"):
        refs.add(ModelRef(running["name"], running["version"]))
    return refs
