"""`cluster.py models pull REPO [--file PATTERN...] [--revision REV]`: a Hugging Face repository into the store.

Runs on the control node, with huggingface_hub (tested with 2.4). Execution flow (pull):
  1. resolve       model_info(files_metadata=True): the commit the revision points at (every download is
                   pinned to it and the manifest records it), each file's size and its LFS SHA-256
  2. select        the files matching the --file patterns (fnmatch), or all but dotfiles (.gitattributes);
                   a pattern matching nothing fails, listing what the repository has
  3. up to date?   a stored version of this name from the same repository, commit and files: a no-op, no download
  4. free space    with the store lock: what is still missing (not finished by an earlier run, not already in
                   the store under another version) must fit on the store's filesystem, checked before downloading
  5. download      hf_hub_download per file into .hub-cache/<org>--<repo>/ (local_dir), with its progress bars;
                   a dropped transfer is resumed (HTTP Range) within the run, finished files survive a failed
                   run, so running it again continues with the next file. LFS files already in the store are
                   hard-linked instead of downloaded.
  6. verify        every LFS file's SHA-256 and size against the hub's metadata, every other file's git blob id:
                   a mismatch deletes the file and fails (nothing is published)
  7. publish       like an import: hard links into staging, manifest, one rename (identical content already
                   stored under the name is a no-op naming it); the download directory is then removed
Failures are one line saying what and what to do: gated or missing repository (HF_TOKEN), unknown revision,
no such file, the hub unreachable (offline sites: `models import`), a full disk.
HF_TOKEN, HF_ENDPOINT and HF_HUB_OFFLINE are read by huggingface_hub itself; `token`/`endpoint` override them.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import hashlib
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import HfApi, constants, hf_hub_download
from huggingface_hub import errors as hf

from models import store as ms
from models.store import Model, ModelStore
from onedotzero.errors import UserError
from onedotzero.fetch import why_unreachable
from onedotzero.log import log, step

try:  # huggingface_hub 2.x speaks httpx2, 1.x httpx
    import httpx2 as _httpx
except ImportError:  # pragma: no cover
    import httpx as _httpx

CACHE = ".hub-cache"
LIBRARY = "onedotzero"
OFFLINE_HINT = "check the network, proxy and HF_ENDPOINT; offline sites: `cluster.py models import PATH`"
TOKEN_HINT = "set HF_TOKEN to a token of an account with access (huggingface.co/settings/tokens)"


@dataclass(frozen=True)
class Remote:
    """A file of the resolved commit, as the hub describes it."""

    path: str
    size: int
    sha256: str  # LFS files: the hub's SHA-256 of the content; "" for files kept in git
    blob_id: str  # the git object id (for LFS files, the pointer's)


def git_blob_id(path: Path) -> str:
    """The git object id of a file's content (what the hub lists for files kept in git)."""
    h = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def hub_errors(repo_id: str, endpoint: str, revision: str | None = None) -> Iterator[None]:
    """What huggingface_hub raises, as one line saying which and what to do."""
    rev = f"@{revision}" if revision else ""
    try:
        yield
    except hf.GatedRepoError:
        raise UserError(f"{repo_id} is gated", f"accept its license on {endpoint}/{repo_id}, then {TOKEN_HINT}"
                        ) from None
    except hf.RepositoryNotFoundError:
        raise UserError(f"{repo_id}: no such repository on {endpoint}, or private",
                        f"check the name; for a private one {TOKEN_HINT}") from None
    except hf.RevisionNotFoundError:
        raise UserError(f"{repo_id} has no revision {revision or 'main'!r}",
                        "give a branch, tag or commit that exists, or leave --revision out for main") from None
    except hf.DisabledRepoError:
        raise UserError(f"{repo_id} is disabled on {endpoint}", "choose another repository") from None
    except hf.OfflineModeIsEnabled:
        raise UserError("HF_HUB_OFFLINE is set: huggingface_hub will not go online",
                        "unset HF_HUB_OFFLINE to pull; offline sites: `cluster.py models import PATH`") from None
    except hf.EntryNotFoundError as e:
        if isinstance(e, hf.LocalEntryNotFoundError) and e.__cause__ is not None:  # the hub could not be reached
            raise UserError(f"cannot reach {endpoint}: {_reason(e.__cause__, endpoint)}", OFFLINE_HINT) from None
        raise UserError(f"{repo_id}{rev}: a listed file is missing on the hub ({_first_line(e)})",
                        "run it again; if it persists, choose other files with --file") from None
    except hf.HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else "?"
        if status == 401:
            raise UserError(f"{endpoint} refused the token (HTTP 401)", f"check HF_TOKEN: {TOKEN_HINT}") from None
        raise UserError(f"{endpoint} answered HTTP {status} for {repo_id}{rev}: {_first_line(e)}",
                        "try again later") from None
    except hf.HFValidationError:
        raise UserError(f"{repo_id!r} is not a repository id", "use ORG/NAME, e.g. Qwen/Qwen2.5-0.5B-Instruct-GGUF"
                        ) from None
    except (_httpx.TransportError, ConnectionError) as e:
        raise UserError(f"cannot reach {endpoint}: {_reason(e, endpoint)}", OFFLINE_HINT) from None
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise  # disk_full_is_one_line says it
        raise UserError(f"{repo_id}{rev}: download failed: {_first_line(e)}",
                        "run it again: finished files are kept, the rest is fetched again") from None


def _reason(error: BaseException, endpoint: str) -> str:
    return why_unreachable(error, endpoint) or f"{type(error).__name__}: {_first_line(error)}"


def _first_line(error: BaseException) -> str:
    lines = [ln for ln in str(error).splitlines() if ln.strip() and "Client Error" not in ln]
    return lines[0] if lines else type(error).__name__


def select(info, patterns: list[str] | None, label: str) -> list[Remote]:
    """The files to pull: those matching any pattern, or all but dotfiles; a pattern matching nothing fails."""
    listed = {s.rfilename: s for s in info.siblings or ()}
    names = sorted(listed)
    if patterns:
        chosen: set[str] = set()
        for pattern in patterns:
            hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
            if not hits:
                shown = ", ".join(names[:15]) + (f", ... ({len(names)} files)" if len(names) > 15 else "")
                raise UserError(f"--file {pattern!r} matches no file of {label}", f"it has: {shown or 'no files'}")
            chosen.update(hits)
    else:
        chosen = {n for n in names if not any(part.startswith(".") for part in n.split("/"))}
    if not chosen:
        raise UserError(f"{label} has no files to pull", "check the repository and revision on the hub")
    remotes = []
    for n in sorted(chosen):
        if n.startswith("/") or ".." in n.split("/"):
            raise UserError(f"{label} lists a file outside the repository: {n!r}", "is HF_ENDPOINT a Hugging Face hub?")
        s = listed[n]
        lfs = s.lfs or {}
        remotes.append(Remote(n, int(lfs.get("size") or s.size or 0), lfs.get("sha256") or "", s.blob_id or ""))
    return remotes


def already_pulled(store: ModelStore, name: str, source: str, commit: str, wanted: list[Remote]) -> Model | None:
    """The newest stored version of name pulled from source at commit with exactly these files."""
    paths = {w.path for w in wanted}
    for m in reversed(store.versions(name)):
        mf = m.manifest
        if mf.source == source and mf.revision == commit and {f.path for f in mf.files} == paths:
            return m
    return None


def stored_blobs(store: ModelStore) -> dict[tuple[str, int], Path]:
    """(sha256, size) -> a file already in the store with that content."""
    return {(f.sha256, f.size): m.files / f.path for m in store.all() for f in m.manifest.files}


def verify(local: Path, remote: Remote) -> str:
    """The file's SHA-256, after checking it against the hub's metadata; a mismatch deletes the file and fails."""
    sha, size, bad = ms.sha256_file(local), local.stat().st_size, ""
    if remote.sha256 and sha != remote.sha256:
        bad = f"SHA-256 {sha} does not match the hub's {remote.sha256}"
    elif remote.sha256 and size != remote.size:
        bad = f"{size} bytes, the hub says {remote.size}"
    elif not remote.sha256 and remote.blob_id and (got := git_blob_id(local)) != remote.blob_id:
        bad = f"git blob id {got} does not match the hub's {remote.blob_id}"
    if bad:
        local.unlink(missing_ok=True)  # a wrong file is not worth keeping for the next run
        raise UserError(f"{remote.path}: {bad}",
                        "the download is corrupt or was tampered with; it was deleted, run the pull again")
    return sha


def resolve(api: HfApi, repo_id: str, revision: str | None, patterns: list[str] | None) -> tuple[str, list[Remote]]:
    """Step 1-2, asks the hub. Out: the commit the revision points at, and the files to pull from it."""
    with hub_errors(repo_id, api.endpoint, revision):
        info = api.model_info(repo_id, revision=revision, files_metadata=True)
    if not info.sha:
        raise UserError(f"{api.endpoint} did not say which commit {repo_id}@{revision or 'main'} is",
                        "is HF_ENDPOINT a Hugging Face hub?")
    return info.sha, select(info, patterns, f"{repo_id}@{revision or 'main'} ({info.sha[:12]})")


def fetch(store: ModelStore, repo_id: str, commit: str, wanted: list[Remote], out: Path, token: str | None,
          endpoint: str, label: str) -> list[ms.ModelFile]:
    """Steps 4-6, with the store lock held. Out: every wanted file in out, verified; returns their records."""
    downloads = store.root / CACHE / repo_id.replace("/", "--")
    have = stored_blobs(store)
    reuse = {w.path: have[(w.sha256, w.size)] for w in wanted if w.sha256 and (w.sha256, w.size) in have}
    missing = [w for w in wanted if w.path not in reuse and not _finished(downloads / w.path, w)]
    ms.check_free_space(store.root, sum(w.size for w in missing), f"pulling {label}")
    if reuse:
        log.info("models: %d of the files are already in the store (hard-linked, not downloaded)", len(reuse))
    records = []
    with step(f"models: pulling {len(wanted)} file{'s' * (len(wanted) != 1)} of {label}"):
        for w in wanted:
            if w.path in reuse:
                ms.place_file(reuse[w.path], out / w.path)
                records.append(ms.ModelFile(w.path, w.size, w.sha256))
                continue
            with hub_errors(repo_id, endpoint, commit):
                local = Path(hf_hub_download(repo_id, w.path, revision=commit, local_dir=downloads,
                                             cache_dir=store.root / CACHE, token=token, endpoint=endpoint,
                                             library_name=LIBRARY))
            records.append(ms.ModelFile(w.path, local.stat().st_size, verify(local, w)))
            ms.place_file(local, out / w.path)
    return records


def pull(store: ModelStore, repo_id: str, patterns: list[str] | None = None, revision: str | None = None,
         name: str | None = None, token: str | None = None, endpoint: str | None = None) -> Model:
    """Runs on the control node. In: a hub repository (and revision, file patterns). Out: its published version."""
    name = ms.check_name(name) if name else ms.default_name(repo_id)
    api = HfApi(endpoint=(endpoint or constants.ENDPOINT).rstrip("/"), token=token, library_name=LIBRARY)
    commit, wanted = resolve(api, repo_id, revision, patterns)
    label = f"{repo_id}@{revision or 'main'} ({commit[:12]})"
    source = f"{api.endpoint}/{repo_id}"
    existing = already_pulled(store, name, source, commit, wanted)
    if existing:
        log.info("models: %s up to date: %s", label, existing.ref)
        return existing
    with store.lock():
        store.clear_staging()
        with store.staging() as work, ms.disk_full_is_one_line(store.root):
            records = fetch(store, repo_id, commit, wanted, work / "files", token, api.endpoint, label)
            digest = ms.content_hash(records)
            model = store.find_by_content(name, digest)
            if model:
                log.info("models: %s up to date: %s has the same files", label, model.ref)
            else:
                manifest = ms.ModelManifest.create(name, store.new_version(name, digest), records, source, commit)
                manifest.write(work)
                model = store.publish(name, manifest.version, work)
                log.info("models: pulled %s as %s (%s, %d files, %s)", label, model.ref, manifest.format,
                         len(records), ms.human_size(manifest.total_size))
        shutil.rmtree(store.root / CACHE / repo_id.replace("/", "--"), ignore_errors=True)  # now in the version
    return model


def _finished(local: Path, remote: Remote) -> bool:
    """Downloaded completely by an earlier run (verified again before it is published)."""
    return local.is_file() and local.stat().st_size == remote.size
