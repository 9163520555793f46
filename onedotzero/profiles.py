"""Data profiles: hardware (hardware/*.yml) and distributions (image/distros/*.yml).

Everything hardware- or distro-specific is data here; code elsewhere never branches on their names.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import yaml

from onedotzero import paths
from onedotzero.errors import UserError


@dataclass(frozen=True)
class HardwareProfile:
    name: str
    description: str
    roles: tuple[str, ...]  # Ansible roles switched on for nodes of this profile
    kernel_args: tuple[str, ...]  # appended to every boot entry of such nodes
    firmware: str  # "uefi" or "bios": what the board PXE-boots with
    min_kernel: str  # documentation and preflight: the oldest kernel that drives the hardware


@dataclass(frozen=True)
class DistroProfile:
    name: str
    family: str  # "debian" or "ubuntu": selects vars/<family>.yml in roles
    suite: str
    mirror: str
    components: tuple[str, ...]
    keyring: str
    kernel_package: str
    packages: tuple[str, ...]
    squashfs_compression: str
    squashfs_level: int
    boot_args: tuple[str, ...]
    live: dict  # live ISO facts (release URL, ISO name, key) or {} when the distro has none


def _load_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise UserError(f"{path}: cannot read profile: {e}") from e
    if not isinstance(data, dict):
        raise UserError(f"{path}: a profile must be a YAML mapping")
    return data


def names(directory: Path) -> list[str]:
    return sorted(p.stem for p in directory.glob("*.yml"))


@functools.cache  # profiles are files of the checkout: read each once
def hardware(name: str) -> HardwareProfile:
    path = paths.HARDWARE_DIR / f"{name}.yml"
    if not path.is_file():
        raise UserError(f"unknown hardware profile {name!r}", f"choose one of: {', '.join(names(paths.HARDWARE_DIR))}")
    d = _load_yaml(path)
    return HardwareProfile(
        name=name,
        description=d.get("description", ""),
        roles=tuple(d.get("roles", [])),
        kernel_args=tuple(d.get("kernel_args", [])),
        firmware=d.get("firmware", "uefi"),
        min_kernel=str(d.get("min_kernel", "")),
    )


@functools.cache
def distro(name: str) -> DistroProfile:
    path = paths.DISTRO_DIR / f"{name}.yml"
    if not path.is_file():
        raise UserError(f"unknown distro profile {name!r}", f"choose one of: {', '.join(names(paths.DISTRO_DIR))}")
    d = _load_yaml(path)
    try:
        return DistroProfile(
            name=name,
            family=d["family"],
            suite=d["suite"],
            mirror=d["mirror"],
            components=tuple(d["components"]),
            keyring=d["keyring"],
            kernel_package=d["kernel_package"],
            packages=tuple(d.get("packages", [])),
            squashfs_compression=d.get("squashfs_compression", "zstd"),
            squashfs_level=int(d.get("squashfs_level", 3)),
            boot_args=tuple(d.get("boot_args", [])),
            live=dict(d.get("live") or {}),
        )
    except KeyError as e:
        raise UserError(f"{path}: missing field {e.args[0]!r}") from e
