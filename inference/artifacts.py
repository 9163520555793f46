"""Engine builds as cached artefacts: an engine compiled once per (version, backend, flags, distribution), in a
chroot of that distribution's base tree, so its binaries link against exactly what the image has.

Runs on the host as root, inside the image build's worker (image/golden.py build_image calls `ensure` before
the layer of the image's own roles). A playbook edit never rebuilds an artefact; a new version, backend or flag
does (they make the key).
  1. fetch    the pinned source into the download cache, resumable, its SHA-256 checked
  2. tree     the distribution's base tree (given by the caller: the cached debootstrap stage)
  3. deps     apt-get install of the backend's build packages in the chroot
  4. build    cmake configure, then only the targets the cluster runs, in the chroot
  5. pack     bin/ and BUILD-INFO as <cache>/artifacts/<engine>-<backend>-<key>.tar.gz (one rename)
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

from onedotzero import profiles, yamlfile
from onedotzero.errors import UserError
from onedotzero.fetch import download
from onedotzero.log import log, step
from onedotzero.proc import run_progress
from onedotzero.schema import Fields

ENGINES_DIR = Path(__file__).resolve().parent / "engines"
PREFIX = "/opt/onedotzero"  # where engines live on a node: <PREFIX>/<engine>/<version>-<backend>/
CHROOT_ENV = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


@dataclass(frozen=True)
class Source:
    url: str
    sha256: str
    subdir: str  # the engine's tree inside the archive


@dataclass(frozen=True)
class EngineBuild:
    """One engine at one version for one backend: what to fetch, how to build it, what nodes need to run it."""

    engine: str
    version: str
    commit: str
    source: Source
    targets: tuple[str, ...]
    flags: tuple[str, ...]
    backend: str
    build_packages: tuple[str, ...]
    runtime_packages: tuple[str, ...]
    release_flags: tuple[tuple[str, str], ...] = ()  # ("default"|CMake project, compiler flags)

    def key(self, distro: profiles.DistroProfile) -> str:
        data = [self.engine, self.version, self.commit, self.source.sha256, self.targets, self.flags, self.backend,
                self.build_packages, distro.name, distro.suite]
        if self.release_flags:
            data.append(self.release_flags)
        return hashlib.sha256(json.dumps(data).encode()).hexdigest()

    def install_dir(self) -> str:
        return f"{PREFIX}/{self.engine}/{self.version}-{self.backend}"


@functools.cache
def engine(name: str, backend: str) -> EngineBuild:
    """The pinned build of an engine (inference/engines/<name>.yml) for a backend."""
    path = ENGINES_DIR / f"{name}.yml"
    f = Fields(path, "", yamlfile.load(path), {"version", "commit", "sources", "source", "targets", "flags",
                                              "release_flags", "backends"}, "inference/engines/llama_cpp.yml")
    sources = f.mapping("sources", set(f.get("sources", kind=dict)))
    chosen = f.choice("source", sorted(sources.data))
    s = sources.mapping(chosen, {"url", "sha256", "subdir"})
    backends = f.mapping("backends", set(f.get("backends", kind=dict)))
    if not backends.has(backend):
        backends.fail(f"{name} has no backend {backend!r}", f"choose one of: {', '.join(sorted(backends.data))}")
    b = backends.mapping(backend, {"flags", "build_packages", "runtime_packages"})
    source = Source(s.get("url"), s.get("sha256", ""), s.get("subdir"))
    release = f.get("release_flags", {}, kind=dict)
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in release.items()):
        f.fail("release_flags maps a CMake project (or default) to a string of compiler flags")
    return EngineBuild(name, f.get("version"), f.get("commit"), source, tuple(f.strings("targets")),
                       (*f.strings("flags"), *b.strings("flags", [])), backend, tuple(b.strings("build_packages")),
                       tuple(b.strings("runtime_packages", [])), tuple(sorted(release.items())))


def artifact_path(cache: Path, build: EngineBuild, distro: profiles.DistroProfile) -> Path:
    return cache / "artifacts" / f"{build.engine}-{build.backend}-{build.key(distro)[:16]}.tar.gz"


def fetch_source(build: EngineBuild, downloads: Path) -> Path:
    """Runs on the host. The pinned source archive in the download cache, checked by SHA-256."""
    name = build.source.url.rsplit("/", 1)[-1]
    dest = downloads / name
    if not build.source.sha256:
        raise UserError(f"{build.engine}: the source {build.source.url} has no pinned sha256",
                        f"pin it in {ENGINES_DIR / (build.engine + '.yml')} (sha256sum of the file)")
    if dest.is_file() and _sha256(dest) == build.source.sha256:
        return dest
    with step(f"{build.engine}: downloading {name}"):
        download(build.source.url, dest, expected_sha256=build.source.sha256)
    return dest


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def chroot(root: Path, *argv: str, title: str, phase: str | None = None) -> None:
    run_progress(["chroot", root, *argv], title, phase=re.compile(phase) if phase else None, env=CHROOT_ENV,
                 host=f"chroot {root}")


def release_flags(build: EngineBuild, work: Path) -> list[str]:
    """CMake arguments for the Release flags: the default for every project, and a file per named project that
    CMake includes right after that project's project() call, setting its own (it scopes to the project's tree)."""
    argv = []
    for project, flags in build.release_flags:
        if project == "default":
            argv += [f"-DCMAKE_C_FLAGS_RELEASE={flags}", f"-DCMAKE_CXX_FLAGS_RELEASE={flags}"]
            continue
        (work / f"project-{project}.cmake").write_text(
            f'set(CMAKE_C_FLAGS_RELEASE "{flags}")\nset(CMAKE_CXX_FLAGS_RELEASE "{flags}")\n')
        argv.append(f"-DCMAKE_PROJECT_{project}_INCLUDE=/build/project-{project}.cmake")
    return argv


def build(build: EngineBuild, distro: profiles.DistroProfile, rootfs: Path, source: Path, out: Path,
          jobs: int) -> None:
    """Runs in the chroot of rootfs (a base tree the caller prepared, with its mounts). Out: the artefact at out."""
    work = rootfs / "build"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    with step(f"{build.engine}: build packages ({', '.join(build.build_packages)})"):
        chroot(rootfs, "apt-get", "update", "-q", title="apt-get update")
        chroot(rootfs, "apt-get", "install", "-y", "-q", "--no-install-recommends", *build.build_packages,
               title="apt-get install", phase=r"^(?:Unpacking|Setting up) (\S+)")
    with step(f"{build.engine}: unpacking {source.name}"), tarfile.open(source) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(build.source.subdir + "/")]
        if not members:
            raise UserError(f"{source.name} has no {build.source.subdir}/", f"fix subdir in {build.engine}.yml")
        tar.extractall(work, members=members, filter="data")
    tree = f"/build/{build.source.subdir}"
    with step(f"{build.engine} {build.version} ({build.backend}): cmake, {', '.join(build.targets)} on {jobs} cores"):
        chroot(rootfs, "cmake", "-S", tree, "-B", "/build/out", *build.flags, *release_flags(build, work),
               title="cmake configure")
        chroot(rootfs, "cmake", "--build", "/build/out", "--target", *build.targets, "-j", str(jobs),
               title=f"building {build.engine}", phase=r"(\[\s*\d+%\])")
    pack = work / "pack"
    bin_dir = pack / build.install_dir().lstrip("/") / "bin"
    bin_dir.mkdir(parents=True)
    for target in build.targets:
        shutil.copy2(work / "out" / "bin" / target, bin_dir / target)
    version = subprocess.run(["chroot", rootfs, f"/build/out/bin/{build.targets[0]}", "--version"],
                             capture_output=True, text=True, env=CHROOT_ENV).stderr.strip().splitlines()
    (bin_dir.parent / "BUILD-INFO").write_text(json.dumps({
        "engine": build.engine, "version": build.version, "commit": build.commit, "backend": build.backend,
        "flags": list(build.flags), "release_flags": dict(build.release_flags),
        "targets": list(build.targets), "distro": distro.name,
        "source": build.source.url, "source_sha256": build.source.sha256, "reports": version[:3],
    }, indent=1) + "\n")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}")
    with tarfile.open(tmp, "w:gz", compresslevel=3) as tar:
        tar.add(pack / PREFIX.lstrip("/"), arcname=PREFIX.lstrip("/"))
    os.rename(tmp, out)
    shutil.rmtree(work, ignore_errors=True)
    log.info("%s %s (%s): %s, %.1f MiB", build.engine, build.version, build.backend, out.name,
             out.stat().st_size / 2**20)


def role_vars(cache: Path, engine_name: str, backend: str, distro: profiles.DistroProfile) -> dict:
    """What the engine's role needs: where the artefact is on the machine that runs Ansible, where it goes."""
    b = engine(engine_name, backend)
    return {f"{engine_name}_artifact": str(artifact_path(cache, b, distro)), f"{engine_name}_version": b.version,
            f"{engine_name}_backend": backend, f"{engine_name}_install_dir": b.install_dir(),
            f"{engine_name}_runtime_packages": list(b.runtime_packages)}


def needed(spec_roles: tuple[str, ...], variables: dict) -> list[tuple[EngineBuild, Path]]:
    """The artefacts an image's roles install (engine roles carry <engine>_artifact and <engine>_backend)."""
    out = []
    for role in spec_roles:
        if f"{role}_artifact" in variables and (ENGINES_DIR / f"{role}.yml").is_file():
            out.append((engine(role, variables[f"{role}_backend"]), Path(variables[f"{role}_artifact"])))
    return out

