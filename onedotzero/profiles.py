"""Data profiles: hardware (hardware/*.yml) and distributions (image/distros/*.yml), read against a schema.

Everything hardware- or distro-specific is data here; code elsewhere never branches on their names. A
profile with an unknown key, a role that does not exist or a kernel its distribution cannot provide is
refused with one line naming the file and the field.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from pathlib import Path

from onedotzero import paths, yamlfile
from onedotzero.errors import UserError
from onedotzero.schema import Fields

FIRMWARES = ("uefi", "bios", "none")  # none: container nodes of the virtual cluster
GPU_VENDORS = ("intel", "amd", "cpu")  # cpu: the virtual cluster's stand-in (OpenCL on pocl, Vulkan on lavapipe)
VIRTUAL_DRIVERS = ("qemu", "container")  # how the virtual cluster runs nodes of a virtual profile
ENGINES = ("llama_cpp", "vllm")
KERNEL_RE = re.compile(r"^\d+\.\d+$")


def kernel_tuple(version: str) -> tuple[int, ...]:
    """'6.8.0-40-generic' -> (6, 8): the series, enough to compare with a profile's minimum."""
    return tuple(int(x) for x in re.findall(r"\d+", version)[:2])


@dataclass(frozen=True)
class GpuFacts:
    """What the GPU roles install for and what `compute check` expects to find on a node."""

    vendor: str
    opencl_device: str  # a regex one line of `clinfo -l` must match (e.g. the A770's device name)
    vulkan_device: str  # a regex a `deviceName` of `vulkaninfo --summary` must match
    render_node: bool  # the admin user must be able to open /dev/dri/renderD*
    backends: tuple[tuple[str, str], ...]  # engine -> backend, e.g. (("llama_cpp", "vulkan"), ("vllm", "xpu"))
    memory_gbs: float | None = None  # the GPU memory's bandwidth by spec, GB/s: `bench` compares decode with it

    def backend(self, engine: str) -> str | None:
        return dict(self.backends).get(engine)


@dataclass(frozen=True)
class FabricPorts:
    """How a node of this profile finds its clustering-link interfaces (systemd.network [Match] keys)."""

    ports: int  # how many links a node can have
    match: tuple[tuple[str, str], ...]  # e.g. (("Driver", "thunderbolt-net"),); "{peer}" is the node at the other end
    port_key: str  # the [Match] key that tells one port from another when a node has several links (e.g. Path)


@dataclass(frozen=True)
class HardwareProfile:
    name: str
    description: str
    firmware: str  # "uefi" or "bios": what the board PXE-boots with
    min_kernel: str  # the oldest kernel series that drives the hardware, e.g. "6.2"
    distro: str | None  # a distribution this hardware needs, overriding the inventory's image.distro
    roles: tuple[str, ...]  # Ansible roles (playbooks/roles) switched on for nodes of this profile
    kernel_args: tuple[str, ...]  # appended to every boot entry of such nodes
    gpu: GpuFacts | None = None
    fabric: FabricPorts | None = None
    virtual: str | None = None  # the virtual cluster's node driver for this (virtual) hardware
    memory_mb: int | None = None  # container nodes: the memory limit of each node
    source: Path = field(default=Path(), compare=False)


@dataclass(frozen=True)
class DistroProfile:
    name: str
    family: str  # "debian" or "ubuntu": selects vars/<family>.yml in roles
    suite: str
    mirror: str
    components: tuple[str, ...]
    keyring: str
    kernel_package: str
    kernel: str  # the kernel series kernel_package provides, e.g. "6.1": checked against hardware min_kernel
    packages: tuple[str, ...]
    squashfs_compression: str
    squashfs_level: int
    boot_args: tuple[str, ...]
    live: dict  # live ISO facts (release URL, ISO name, key) or {} when the distro has none
    python: str = ""  # the interpreter version Python engines run on, e.g. "3.11" ("" when it has none)
    python_packages: tuple[str, ...] = ()  # the packages that give it, with its venv module
    python_headers: tuple[str, ...] = ()  # its C headers (Python.h), for engines that compile at run time
    glibc: str = ""  # its C library's version: the newest manylinux wheels that run there


def names(directory: Path) -> list[str]:
    return sorted(p.stem for p in directory.glob("*.yml"))


def role_exists(role: str) -> bool:
    return (paths.PLAYBOOKS_DIR / "roles" / role / "tasks" / "main.yml").is_file()


def _series(f: Fields, key: str, what: str = "kernel series", example: str = "6.2") -> str:
    """A dotted major.minor version (a kernel series, Python's, glibc's), quoted so YAML keeps it a string."""
    value = f.get(key)
    if not KERNEL_RE.match(value):
        f.fail(f"{value!r} is not a {what}", f"write it like \"{example}\", in quotes", key)
    return value


@functools.cache  # profiles are files of the checkout: read each once
def hardware(name: str) -> HardwareProfile:
    path = paths.HARDWARE_DIR / f"{name}.yml"
    if not path.is_file():
        raise UserError(f"unknown hardware profile {name!r}", f"choose one of: {', '.join(names(paths.HARDWARE_DIR))}")
    f = Fields(path, "", yamlfile.load(path), {"description", "firmware", "min_kernel", "distro", "roles",
                                              "kernel_args", "gpu", "fabric", "virtual", "memory_mb"},
               "hardware/README.md")
    roles = f.strings("roles", [])
    for i, role in enumerate(roles):
        if not role_exists(role):
            known = sorted(p.parent.name for p in (paths.PLAYBOOKS_DIR / "roles").glob("*/tasks/main.yml"))
            f.fail(f"role {role!r} does not exist in {paths.PLAYBOOKS_DIR / 'roles'}",
                   f"remove it or write the role; roles there: {', '.join(known)}", f"roles[{i}]")
    distro_name = f.get("distro", None)
    if distro_name is not None and distro_name not in names(paths.DISTRO_DIR):
        f.fail(f"unknown distro profile {distro_name!r}", f"choose one of: {', '.join(names(paths.DISTRO_DIR))}",
               "distro")
    profile = HardwareProfile(
        name=name, description=f.get("description"), firmware=f.choice("firmware", FIRMWARES),
        min_kernel=_series(f, "min_kernel"), distro=distro_name, roles=tuple(roles),
        kernel_args=tuple(f.strings("kernel_args", [])), gpu=_gpu(f), fabric=_fabric(f),
        virtual=f.choice("virtual", VIRTUAL_DRIVERS, None) if f.has("virtual") else None,
        memory_mb=f.get("memory_mb", None, int), source=path,
    )
    if distro_name is not None:
        check_kernel(profile, distro(distro_name), f)
    return profile


def check_kernel(profile: HardwareProfile, d: DistroProfile, f: Fields | None = None) -> None:
    """Refuse a distribution whose kernel is older than what the hardware needs."""
    if kernel_tuple(d.kernel) < kernel_tuple(profile.min_kernel):
        message = (f"needs Linux >= {profile.min_kernel}, but {d.name} ships {d.kernel} ({d.kernel_package})")
        hint = "give the profile a newer distro: (e.g. ubuntu-24.04) or lower min_kernel if it was wrong"
        if f is not None:
            f.fail(message, hint, "min_kernel")
        raise UserError(f"{profile.source}: min_kernel: {message}", hint)


def _gpu(f: Fields) -> GpuFacts | None:
    g = f.mapping("gpu", {"vendor", "opencl_device", "vulkan_device", "render_node", "backends", "memory_gbs"},
                  None)
    if g is None:
        return None
    for key in ("opencl_device", "vulkan_device"):
        try:
            re.compile(g.get(key))
        except re.error as e:
            g.fail(f"not a regular expression: {e}", None, key)
    backends = g.mapping("backends", set(ENGINES), None)
    pairs = tuple((k, backends.get(k)) for k in ENGINES if backends is not None and backends.has(k))
    return GpuFacts(g.choice("vendor", GPU_VENDORS), g.get("opencl_device"), g.get("vulkan_device"),
                    g.get("render_node", True, bool), pairs, _bandwidth(g))


def _bandwidth(g: Fields) -> float | None:
    if not g.has("memory_gbs"):
        return None
    value = g.get("memory_gbs", kind=float)
    if value <= 0:
        g.fail(f"{value!r} is not a bandwidth", "GB/s as a positive number, e.g. 560", "memory_gbs")
    return float(value)


def _fabric(f: Fields) -> FabricPorts | None:
    fab = f.mapping("fabric", {"ports", "match", "port_key"}, None)
    if fab is None:
        return None
    ports = fab.get("ports", kind=int)
    if ports < 1:
        fab.fail(f"{ports} ports: a profile with fabric ports has at least one", None, "ports")
    match = fab.mapping("match", {"Name", "Driver", "Path", "MACAddress", "Type", "Kind", "Property"})
    pairs = tuple((k, match.get(k)) for k in sorted(match.data))
    if not pairs:
        fab.fail("is empty", "e.g. {Driver: thunderbolt-net}", "match")
    return FabricPorts(ports, pairs, fab.choice("port_key", ("Path", "Name", "MACAddress"), "Path"))


@functools.cache
def distro(name: str) -> DistroProfile:
    path = paths.DISTRO_DIR / f"{name}.yml"
    if not path.is_file():
        raise UserError(f"unknown distro profile {name!r}", f"choose one of: {', '.join(names(paths.DISTRO_DIR))}")
    f = Fields(path, "", yamlfile.load(path), {"family", "suite", "mirror", "components", "keyring", "kernel_package",
                                              "kernel", "packages", "squashfs_compression", "squashfs_level",
                                              "boot_args", "live", "python", "glibc"}, "image/distros/debian-12.yml")
    py = f.mapping("python", {"version", "packages", "headers"}, None)
    glibc = _series(f, "glibc", "glibc version", "2.36") if f.has("glibc") else ""
    return DistroProfile(
        name=name, family=f.choice("family", ("debian", "ubuntu")), suite=f.get("suite"), mirror=f.get("mirror"),
        components=tuple(f.strings("components")), keyring=f.get("keyring"), kernel_package=f.get("kernel_package"),
        kernel=_series(f, "kernel"), packages=tuple(f.strings("packages", [])),
        squashfs_compression=f.choice("squashfs_compression", ("zstd", "xz", "gzip", "lz4"), "zstd"),
        squashfs_level=f.get("squashfs_level", 3, int), boot_args=tuple(f.strings("boot_args", [])),
        live=yamlfile.plain(f.get("live", {}, dict)),
        python=_series(py, "version", "Python version", "3.11") if py else "",
        python_packages=tuple(py.strings("packages")) if py else (),
        python_headers=tuple(py.strings("headers", [])) if py else (), glibc=glibc,
    )


@dataclass(frozen=True)
class LinkKind:
    """What a fabric cable is (hardware/links/*.yml): nominal figures, emulated by the virtual cluster."""

    name: str
    description: str
    rate_gbit: float
    latency_us: float


LINKS_DIR = paths.HARDWARE_DIR / "links"


@functools.cache
def link_kind(name: str) -> LinkKind:
    path = LINKS_DIR / f"{name}.yml"
    if not path.is_file():
        raise UserError(f"unknown link kind {name!r}", f"choose one of: {', '.join(names(LINKS_DIR))}")
    f = Fields(path, "", yamlfile.load(path), {"description", "rate_gbit", "latency_us"}, "hardware/links/usb4.yml")
    return LinkKind(name, f.get("description"), f.get("rate_gbit", kind=float), f.get("latency_us", kind=float))
