"""Engine builds as cached artefacts: an engine made once per (version, backend, flags, distribution), in a
chroot of that distribution's base tree, so it links against (or runs on) exactly what the image has.

Runs on the host as root, inside the image build's worker (image/golden.py ensure_artifacts, before the layer
of the image's own roles). A playbook edit never rebuilds an artefact; a new version, backend, flag or lock
does (they make the key). Two kinds, from inference/engines/<engine>.yml:
  cmake (llama.cpp)                                python (vLLM)
  1. fetch  the pinned source archive, SHA-256       the lock's wheels (pip download, --require-hashes)
  2. tree   the distribution's base tree (given by the caller: the cached debootstrap stage)
  3. deps   apt-get install of the build packages    apt-get install of the distribution's Python and venv
  4. build  cmake, only the targets the cluster runs a venv at its final path, pip offline from the wheels
  5. pack   bin/ + BUILD-INFO -> .tar.gz             the venv + BUILD-INFO -> .tar.zst (one rename, both)
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import requests

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

    def runtime(self, distro: profiles.DistroProfile) -> tuple[str, ...]:
        """The packages a node needs to run it."""
        return self.runtime_packages

    suffix = ".tar.gz"


@dataclass(frozen=True)
class PythonEnv:
    """One Python engine at one version for one backend: a venv of the wheels its lock pins (with their SHA-256),
    on the image distribution's own Python. The lock is per Python version (wheels are built per version)."""

    engine: str
    version: str
    backend: str
    python: str  # the oldest Python it runs on
    requirements: tuple[str, ...]  # what the lock was resolved from
    exclude: tuple[str, ...]  # dependencies kept out of the lock
    index_urls: tuple[str, ...]  # indexes besides PyPI (e.g. PyTorch's CPU wheels)
    env: tuple[tuple[str, str], ...]  # the environment the engine runs with
    runtime_packages: tuple[str, ...]
    executors: tuple[str, ...]
    verified: bool  # proven on this project's machines (else rendered and documented only)
    python_headers: bool = False  # compiles against Python.h at run time (the distribution's headers package)
    commit: str = ""

    def lock_path(self, distro: profiles.DistroProfile) -> Path:
        return ENGINES_DIR / f"{self.engine}-{self.backend}-py{distro.python}.lock"

    def lock(self, distro: profiles.DistroProfile) -> Path:
        """The lock for the distribution's Python, or one line saying why there is none."""
        if not distro.python or tuple(map(int, distro.python.split("."))) < tuple(map(int, self.python.split("."))):
            raise UserError(f"{self.engine} needs Python >= {self.python}, but {distro.name} gives "
                            f"{distro.python or 'none'}", f"give image/distros/{distro.name}.yml a python: that fits")
        path = self.lock_path(distro)
        if not path.is_file():
            state = "" if self.verified else " (a backend not proven here)"
            raise UserError(f"{self.engine} {self.version} ({self.backend}{state}) has no lock for Python "
                            f"{distro.python}: {path.name}",
                            f"make it where the indexes are reachable: python -m inference.lock {self.engine} "
                            f"{self.backend} --distro {distro.name}")
        return path

    def key(self, distro: profiles.DistroProfile) -> str:
        data = [self.engine, self.version, self.backend, self.lock(distro).read_text(), sorted(self.env),
                distro.name, distro.suite, distro.python, distro.python_packages]
        return hashlib.sha256(json.dumps(data).encode()).hexdigest()

    def install_dir(self) -> str:
        return f"{PREFIX}/{self.engine}/{self.version}-{self.backend}"

    def runtime(self, distro: profiles.DistroProfile) -> tuple[str, ...]:
        return (*distro.python_packages, *(distro.python_headers if self.python_headers else ()),
                *self.runtime_packages)

    suffix = ".tar.zst"


@functools.cache
def engine(name: str, backend: str) -> EngineBuild | PythonEnv:
    """The pinned build of an engine (inference/engines/<name>.yml) for a backend."""
    path = ENGINES_DIR / f"{name}.yml"
    data = yamlfile.load(path)
    if isinstance(data, dict) and data.get("kind") == "python":
        return _python_env(name, backend, path, data)
    f = Fields(path, "", data, {"kind", "version", "commit", "sources", "source", "targets", "flags",
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


def _python_env(name: str, backend: str, path: Path, data: dict) -> PythonEnv:
    f = Fields(path, "", data, {"kind", "version", "python", "backends"}, "inference/engines/vllm.yml")
    backends = f.mapping("backends", set(f.get("backends", kind=dict)))
    if not backends.has(backend):
        backends.fail(f"{name} has no backend {backend!r}", f"choose one of: {', '.join(sorted(backends.data))}")
    b = backends.mapping(backend, {"requirements", "exclude", "index_urls", "env", "runtime_packages", "executors",
                                   "verified", "python_headers"})
    env = b.get("env", {}, kind=dict)
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        b.fail("maps variable names to strings", None, "env")
    return PythonEnv(name, f.get("version"), backend, f.get("python"), tuple(b.strings("requirements")),
                     tuple(b.strings("exclude", [])), tuple(b.strings("index_urls", [])), tuple(sorted(env.items())),
                     tuple(b.strings("runtime_packages", [])), tuple(b.strings("executors", ["mp"])),
                     b.get("verified", False, bool), b.get("python_headers", False, bool))


def artifact_path(cache: Path, build: EngineBuild | PythonEnv, distro: profiles.DistroProfile) -> Path:
    return cache / "artifacts" / f"{build.engine}-{build.backend}-{build.key(distro)[:16]}{build.suffix}"


def fetch(build: EngineBuild | PythonEnv, distro: profiles.DistroProfile, downloads: Path) -> Path:
    """Runs on the host. What the build needs from the network, in the download cache: the source archive, or
    the lock's wheels."""
    if isinstance(build, PythonEnv):
        return fetch_wheels(build, distro, downloads)
    return fetch_source(build, downloads)


def pip_target(distro: profiles.DistroProfile) -> list[str]:
    """pip's options for wheels that run on the distribution's Python and C library, whatever the host has (the
    control node's Python may be older than the image's)."""
    major, minor = distro.python.split(".")
    glibc = int(distro.glibc.split(".")[1]) if distro.glibc else 17
    platforms = [f"manylinux_2_{v}_x86_64" for v in range(5, glibc + 1)]
    platforms += ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64", "linux_x86_64"]
    return ["--only-binary=:all:", "--python-version", distro.python, "--implementation", "cp",
            "--abi", f"cp{major}{minor}", "--abi", "abi3", "--abi", "none",
            *(arg for p in platforms for arg in ("--platform", p))]


def index_args(build: PythonEnv) -> list[str]:
    """pip's --extra-index-url for each of the backend's indexes that answers now."""
    return [arg for url in reachable_indexes(build) for arg in ("--extra-index-url", url)]


def reachable_indexes(build: PythonEnv) -> list[str]:
    """The backend's extra indexes that answer now. pip retries an unreachable index for every package (minutes
    for a lock of 150 wheels), so one that does not answer within seconds is left out, with a line saying so:
    pip's own settings (find-links, a local wheelhouse, as on these machines) still apply."""
    out = []
    for url in build.index_urls:
        try:
            requests.head(url, timeout=5, allow_redirects=True)
            out.append(url)
        except requests.RequestException as e:
            log.warning("%s: the index %s does not answer (%s): pip looks in its other sources", build.engine, url,
                        type(e).__name__)
    return out


def fetch_wheels(build: PythonEnv, distro: profiles.DistroProfile, downloads: Path) -> Path:
    """Runs on the host. Every wheel of the lock in <downloads>/wheels/<engine>-<backend>-py<version>/, each
    checked against its SHA-256 (pip keeps the ones already there)."""
    lock = build.lock(distro)
    dest = downloads / "wheels" / f"{build.engine}-{build.backend}-py{distro.python}"
    dest.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes", "--progress-bar", "off",
            "-r", str(lock), "-d", str(dest), *pip_target(distro),
            *index_args(build)]
    with step(f"{build.engine}: the {lock.read_text().count('--hash=')} wheels of "
              f"{lock.name}"):
        run_progress(argv, "pip download", phase=re.compile(r"^(?:Collecting|Saved|File was already) (\S+)"),
                     host="localhost")
    return dest


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


def build(build: EngineBuild | PythonEnv, distro: profiles.DistroProfile, rootfs: Path, source: Path, out: Path,
          jobs: int) -> None:
    """Runs in the chroot of rootfs (a base tree the caller prepared, with its mounts). In: what `fetch` gave.
    Out: the artefact at out."""
    if isinstance(build, PythonEnv):
        _build_venv(build, distro, rootfs, source, out)
    else:
        _build_cmake(build, distro, rootfs, source, out, jobs)


def _apt(rootfs: Path, engine: str, packages: tuple[str, ...]) -> None:
    with step(f"{engine}: build packages ({', '.join(packages)})"):
        chroot(rootfs, "apt-get", "update", "-q", title="apt-get update")
        chroot(rootfs, "apt-get", "install", "-y", "-q", "--no-install-recommends", *packages,
               title="apt-get install", phase=r"^(?:Unpacking|Setting up) (\S+)")


def _build_venv(build: PythonEnv, distro: profiles.DistroProfile, rootfs: Path, wheels: Path, out: Path) -> None:
    """The venv made at its final path in the chroot, pip offline from the fetched wheels (hashes required, no
    dependency resolution: the lock is the whole list), `import <engine>` tried, then packed."""
    work = rootfs / "build"
    shutil.rmtree(work, ignore_errors=True)
    (work / "wheels").mkdir(parents=True)
    _apt(rootfs, build.engine, distro.python_packages)
    for wheel in wheels.glob("*.whl"):  # hard links where the cache and the tree share a file system
        try:
            os.link(wheel, work / "wheels" / wheel.name)
        except OSError:
            shutil.copy2(wheel, work / "wheels" / wheel.name)
    lock = build.lock(distro)
    shutil.copy2(lock, work / "lock.txt")
    venv = build.install_dir()
    python = f"python{distro.python}"
    env = {"PIP_CONFIG_FILE": "/dev/null", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    with step(f"{build.engine} {build.version} ({build.backend}): a venv on Python {distro.python}, "
              f"{len(list((work / 'wheels').iterdir()))} wheels"):
        shutil.rmtree(rootfs / venv.lstrip("/"), ignore_errors=True)
        chroot(rootfs, python, "-m", "venv", venv, title="python -m venv")
        run_progress(["chroot", rootfs, f"{venv}/bin/python", "-m", "pip", "install", "--no-index", "--no-deps",
                      "--require-hashes", "--find-links", "/build/wheels", "-r", "/build/lock.txt"],
                     "pip install", phase=re.compile(r"^(?:Processing|Installing) (\S+)"),
                     env={**CHROOT_ENV, **env}, host=f"chroot {rootfs}")
        module = build.engine.replace("-", "_")
        check = subprocess.run(["chroot", rootfs, f"{venv}/bin/python", "-c",
                                f"import {module}, torch; print({module}.__version__, torch.__version__)"],
                               capture_output=True, text=True, env={**CHROOT_ENV, **dict(build.env)})
        if check.returncode != 0:
            tail = "\n".join(check.stderr.strip().splitlines()[-15:])
            raise UserError(f"{build.engine}: `import {module}` fails in the new venv (exit {check.returncode}):\n"
                            f"{tail}", f"fix the lock {lock.name} (python -m inference.lock)")
    root = rootfs / venv.lstrip("/")
    (root / "BUILD-INFO").write_text(json.dumps({
        "engine": build.engine, "version": build.version, "backend": build.backend, "distro": distro.name,
        "python": distro.python, "lock": lock.name, "lock_sha256": _sha256(lock),
        "env": dict(build.env), "reports": check.stdout.split(),
    }, indent=1) + "\n")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}")
    with step(f"{build.engine}: packing {venv}"):
        run_progress(["tar", "-I", "zstd -3 -T0", "-cf", tmp, "-C", rootfs, venv.lstrip("/")], "tar | zstd")
    os.rename(tmp, out)
    shutil.rmtree(work, ignore_errors=True)
    log.info("%s %s (%s): %s, %.1f MiB", build.engine, build.version, build.backend, out.name,
             out.stat().st_size / 2**20)


def _build_cmake(build: EngineBuild, distro: profiles.DistroProfile, rootfs: Path, source: Path, out: Path,
                 jobs: int) -> None:
    work = rootfs / "build"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    _apt(rootfs, build.engine, build.build_packages)
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
    out = {f"{engine_name}_artifact": str(artifact_path(cache, b, distro)), f"{engine_name}_version": b.version,
           f"{engine_name}_backend": backend, f"{engine_name}_install_dir": b.install_dir(),
           f"{engine_name}_runtime_packages": list(b.runtime(distro))}
    if isinstance(b, PythonEnv):
        out[f"{engine_name}_env"] = dict(b.env)
    return out


def needed(spec_roles: tuple[str, ...], variables: dict) -> list[tuple[EngineBuild | PythonEnv, Path]]:
    """The artefacts an image's roles install (engine roles carry <engine>_artifact and <engine>_backend)."""
    out = []
    for role in spec_roles:
        if f"{role}_artifact" in variables and (ENGINES_DIR / f"{role}.yml").is_file():
            out.append((engine(role, variables[f"{role}_backend"]), Path(variables[f"{role}_artifact"])))
    return out

