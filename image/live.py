"""Live images: the distro's server ISO, fetched, verified, its kernel and initrd extracted, published.

Execution flow (build_live):
  1. fetch_sums      on host: SHA256SUMS and SHA256SUMS.gpg from the profile's release URL (or given files)
  2. verify_sums     on host: gpgv against the keyring; the signer must be the pinned fingerprint
  3. fetch_iso       on host: into the download cache, resuming (HTTP Range) and hashing as it goes;
                     a cached ISO whose hash matches is not downloaded again; an ISO the user already has
                     (--iso) is hashed and must match the signed sum before it is used
  4. extract_boot    on host: casper/vmlinuz and casper/initrd (and the HWE pair) with xorriso, no loop mount
  5. publish         on host: live/<version>/ (ISO hard-linked from the cache, kernel, initrd, manifest),
                     one rename, like golden images
Nodes boot it into RAM: the initrd downloads the whole ISO (`url=`), cloud-init reads the node's seed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from image.store import Boot, Manifest, Store, Version, utc_now, version_name
from onedotzero import inventory as inv_mod
from onedotzero import paths, profiles
from onedotzero.errors import UserError
from onedotzero.fetch import download
from onedotzero.log import log, step
from onedotzero.proc import require_tools, run

KIND = "live"


@dataclass(frozen=True)
class LiveConfig:
    distro: str
    release_url: str  # directory holding the ISO, SHA256SUMS and SHA256SUMS.gpg
    iso: str
    keyring: Path  # OpenPGP keyring (binary) holding the signing key
    fingerprint: str  # the signing key's primary fingerprint: any other signer is refused
    boot_files: dict  # kernel, initrd[, hwe_kernel, hwe_initrd] -> path inside the ISO
    boot_args: tuple[str, ...]  # kernel command line; {iso_url} and {seed_url} are filled in per node
    store: Path
    downloads: Path
    local_iso: Path | None = None  # an ISO the user already has: verified like a download, never fetched
    local_sums: tuple[Path, Path] | None = None  # SHA256SUMS and its signature as files, instead of fetching

    @classmethod
    def from_inventory(cls, inv: inv_mod.Inventory, distro: str | None = None, release_url: str | None = None,
                       iso: Path | None = None, sums: Path | None = None, signature: Path | None = None) -> LiveConfig:
        """The profile's live ISO, with the command line's overrides (another mirror, files at hand)."""
        d = profiles.distro(distro or inv.image.distro)
        live = d.live
        if not live:
            raise UserError(f"distro profile {d.name!r} has no live ISO", "use an Ubuntu profile, e.g. ubuntu-22.04")
        if (sums is None) != (signature is None):
            raise UserError("--sums and --sums-signature go together", "give both files, or neither to fetch them")
        for given in (iso, sums, signature):
            if given is not None and not given.is_file():
                raise UserError(f"{given} is not a file", "give the path of the downloaded file")
        keyring = Path(live["keyring"])
        files = {k: live[k] for k in ("kernel", "initrd", "hwe_kernel", "hwe_initrd") if live.get(k)}
        return cls(d.name, (release_url or live["release_url"]).rstrip("/"), iso.name if iso else live["iso"],
                   keyring if keyring.is_absolute() else paths.REPO / keyring,
                   live["signing_fingerprint"].replace(" ", "").upper(), files, tuple(live["boot_args"]),
                   inv.image.store, inv.image.cache / "downloads", iso,
                   (sums, signature) if sums and signature else None)


def verify_sums(sums: Path, signature: Path, keyring: Path, fingerprint: str) -> None:
    """SHA256SUMS must carry a good signature by the pinned key (checked with gpgv, nothing imported)."""
    if not keyring.is_file():
        raise UserError(f"signing keyring {keyring} is missing",
                        "on Ubuntu it comes with the ubuntu-keyring package (apt-get install ubuntu-keyring)")
    require_tools("gpgv", hint="apt-get install gpgv")
    proc = run(["gpgv", "--status-fd", "1", "--keyring", keyring, signature, sums], capture=True, check=False)
    valid = [line.split() for line in proc.stdout.splitlines() if line.startswith("[GNUPG:] VALIDSIG ")]
    if proc.returncode != 0 or not valid:
        reason = next((ln.split(" ", 1)[1] for ln in proc.stdout.splitlines()
                       if ln.startswith(("[GNUPG:] BADSIG", "[GNUPG:] ERRSIG", "[GNUPG:] NO_PUBKEY"))), "no valid sig")
        raise UserError(f"{sums.name}: signature check failed ({reason})",
                        "the checksums were not signed by the release key: do not use this download")
    signer = valid[0][-1].upper()  # VALIDSIG's last field: the primary key's fingerprint
    if signer != fingerprint:
        raise UserError(f"{sums.name} is signed by {signer}, not by the pinned key {fingerprint}",
                        "refusing a signature by any other key")


def expected_hash(sums_text: str, name: str) -> str:
    for line in sums_text.splitlines():
        m = re.match(r"^([0-9a-f]{64}) [ *]?(.+)$", line.strip())
        if m and m[2] == name:
            return m[1]
    raise UserError(f"{name} is not listed in SHA256SUMS", "check the profile's ISO name (point releases move)")


# --- the steps ----------------------------------------------------------------------------------

def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f, tqdm(total=path.stat().st_size, unit="B", unit_scale=True, desc=f"hashing {path.name}",
                                     leave=False, disable=None) as bar:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
            bar.update(len(block))
    return h.hexdigest()


def fetch_verified_iso(cfg: LiveConfig) -> tuple[Path, str]:
    """Runs on the host. Out: the verified ISO in the download cache, and its SHA-256."""
    with tempfile.TemporaryDirectory(dir=cfg.downloads.parent if cfg.downloads.parent.exists() else None) as t:
        tmp = Path(t)
        if cfg.local_sums:
            sums, sig = cfg.local_sums
        else:
            sums, sig = tmp / "SHA256SUMS", tmp / "SHA256SUMS.gpg"
            with step("live: fetching SHA256SUMS"):
                download(f"{cfg.release_url}/SHA256SUMS", sums)
                download(f"{cfg.release_url}/SHA256SUMS.gpg", sig)
        verify_sums(sums, sig, cfg.keyring, cfg.fingerprint)
        want = expected_hash(sums.read_text(errors="replace"), cfg.iso)
    iso = cfg.downloads / cfg.iso
    stamp = iso.with_name(iso.name + ".sha256")
    if iso.is_file() and stamp.is_file() and stamp.read_text().strip() == want:
        log.info("live: %s cached and verified, not %s", cfg.iso, "copying it" if cfg.local_iso else "downloading")
        return iso, want
    iso.unlink(missing_ok=True)
    if cfg.local_iso:
        with step(f"live: verifying {cfg.local_iso}"):
            got = sha256_file(cfg.local_iso)
            if got != want:
                raise UserError(f"{cfg.local_iso}: SHA-256 {got} does not match SHA256SUMS ({want})",
                                "the file is corrupt or not the release the signed sums list: download it again")
            cfg.downloads.mkdir(parents=True, exist_ok=True)
            part = iso.with_name(iso.name + ".part")
            try:
                os.link(cfg.local_iso, part)  # same filesystem: no second copy of a 2 GB file
            except OSError:
                shutil.copyfile(cfg.local_iso, part)
            os.rename(part, iso)
    else:
        with step(f"live: downloading {cfg.iso}"):
            got = download(f"{cfg.release_url}/{cfg.iso}", iso, expected_sha256=want)
    stamp.write_text(got + "\n")
    return iso, got


def extract_boot(iso: Path, files: dict, out: Path) -> dict[str, str]:
    """Runs on the host (xorriso, no loop mount). Out: the profile's boot files in out; returns the found ones."""
    require_tools("xorriso", hint="apt-get install xorriso")
    listing = run(["xorriso", "-indev", iso, "-find", "/", "-type", "f"], capture=True).stdout
    present = {p.strip().strip("'") for p in listing.splitlines()}
    found = {}
    for role, inside in files.items():
        name = {"kernel": "vmlinuz", "initrd": "initrd", "hwe_kernel": "hwe-vmlinuz", "hwe_initrd": "hwe-initrd"}[role]
        if f"/{inside}" in present:
            run(["xorriso", "-osirrox", "on", "-indev", iso, "-extract", f"/{inside}", out / name], capture=True)
            os.chmod(out / name, 0o644)
            found[role] = name
    if "kernel" not in found or "initrd" not in found:
        raise UserError(f"{iso.name} has no {files['kernel']} and {files['initrd']}", "is it a live-server ISO?")
    return found


def build_live(cfg: LiveConfig) -> Version:
    """Fetch, verify, extract and publish the live image (a no-op naming the version if already there)."""
    store = Store(cfg.store)
    iso, sha = fetch_verified_iso(cfg)
    input_hash = hashlib.sha256(json.dumps([sha, cfg.iso, cfg.boot_files, cfg.boot_args]).encode()).hexdigest()
    existing = store.find_by_input(KIND, input_hash)
    if existing:
        log.info("live image up to date: %s", existing.ref)
        return existing
    with store.lock(), store.staging(KIND) as work:
        out = work / "out"
        out.mkdir()
        with step("live: extracting kernel and initrd"):
            found = extract_boot(iso, cfg.boot_files, out)
        try:
            os.link(iso, out / cfg.iso)  # same filesystem: no second copy of a 2 GB file
        except OSError:
            shutil.copyfile(iso, out / cfg.iso)
        hwe = "hwe_kernel" in found and "hwe_initrd" in found
        version = version_name(input_hash)
        Manifest(
            kind=KIND, version=version, distro=cfg.distro, input_hash=input_hash,
            boot=Boot(found["hwe_kernel" if hwe else "kernel"], found["hwe_initrd" if hwe else "initrd"],
                      cfg.boot_args, iso=cfg.iso),
            created=utc_now(), sizes={p.name: p.stat().st_size for p in out.iterdir()},
            iso=cfg.iso, iso_sha256=sha,
            source=str(cfg.local_iso) if cfg.local_iso else f"{cfg.release_url}/{cfg.iso}",
            files=tuple(sorted(found.values())),
        ).write(out)
        published = store.publish(KIND, version, out)
    log.info("published %s", published.ref)
    return published

