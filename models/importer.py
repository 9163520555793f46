"""`cluster.py models import PATH [--name NAME]`: a local model file or directory into the model store.

Runs on the control node; how offline sites (and the tests) get models. Execution flow (import_path):
  1. list_files    the file, or the directory's files recursively (dotfiles and dot-directories skipped;
                   symlinks followed, so a Hugging Face cache snapshot imports as its real files)
  2. free space    what cannot be hard-linked (another filesystem) must fit on the store's filesystem
  3. hash          every file's SHA-256 (progress bar over bytes on a terminal)
  4. publish       with the store lock: identical content already stored under that name is a no-op naming
                   the version; else hard link (same filesystem) or copy into staging, manifest, one rename
"""

from __future__ import annotations

import os
from pathlib import Path

from models import store as ms
from models.store import Model, ModelStore
from onedotzero.errors import UserError
from onedotzero.log import log, step


def list_files(path: Path) -> list[tuple[str, Path]]:
    """(path inside the model, file) for a file or every file under a directory, sorted; dotfiles skipped."""
    if not path.exists():
        raise UserError(f"{path} does not exist", "give the path of a model file or of a directory of its files")
    if not path.is_dir():
        return [(path.name, path)]
    found = []
    for top, dirs, names in os.walk(path):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for n in names:
            f = Path(top) / n
            if n.startswith("."):
                continue
            if not f.is_file():
                raise UserError(f"{f} is not a readable file (a broken link?)", "fix or remove it, then import again")
            found.append((f.relative_to(path).as_posix(), f))
    if not found:
        raise UserError(f"{path} holds no files", "give the directory holding the model's files (dotfiles are skipped)")
    return sorted(found)


def same_filesystem(a: Path, b: Path) -> bool:
    return a.stat().st_dev == b.stat().st_dev


def import_path(store: ModelStore, path: Path, name: str | None = None) -> Model:
    """Runs on the control node. In: a file or directory. Out: its published version (or the identical one)."""
    name = ms.check_name(name) if name else None
    files = list_files(path)
    name = name or ms.default_name(path)
    store.root.mkdir(parents=True, exist_ok=True)
    to_copy = sum(f.stat().st_size for _, f in files if not same_filesystem(f, store.root))
    ms.check_free_space(store.root, to_copy, f"importing {path}")
    with step(f"models: hashing {path}"):
        records = [ms.ModelFile(rel, f.stat().st_size, ms.sha256_file(f)) for rel, f in files]
    with store.lock():
        existing = store.find_by_content(name, ms.content_hash(records))
        if existing:
            log.info("models: %s up to date: %s has the same files", path, existing.ref)
            return existing
        store.clear_staging()
        with store.staging() as work, ms.disk_full_is_one_line(store.root):
            for rel, f in files:
                ms.place_file(f, work / "files" / rel)
            manifest = ms.ModelManifest.create(name, store.new_version(name, ms.content_hash(records)), records,
                                               str(path.resolve()))
            manifest.write(work)
            model = store.publish(name, manifest.version, work)
    log.info("models: imported %s as %s (%s, %d files, %s)", path, model.ref, manifest.format, len(records),
             ms.human_size(manifest.total_size))
    return model
