"""The inventory: every cluster fact in one YAML file, parsed once into frozen, validated objects.

Errors name the field, the value and the fix. Ansible reads the same facts through `to_ansible()`
(see playbooks/inventory.py), so there is never a second hand-kept copy.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from onedotzero import paths, profiles
from onedotzero.errors import UserError

MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
HOSTNAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
IFNAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")  # Linux IFNAMSIZ is 16 including the NUL
USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
CRYPT_RE = re.compile(r"^\$(1|5|6|y|2[aby])\$[^\s:]+$")
PUBKEY_RE = re.compile(r"^(ssh-(ed25519|rsa|dss)|ecdsa-sha2-nistp\d+|sk-\S+) [A-Za-z0-9+/=]+( .*)?$")
ROOT_MODES = ("nfs", "http")


@dataclass(frozen=True)
class Control:
    name: str
    compute_interface: str
    address: ipaddress.IPv4Address
    subnet: ipaddress.IPv4Network
    dhcp_range: tuple[ipaddress.IPv4Address, ipaddress.IPv4Address]
    ansible_host: str  # how Ansible reaches the control node; "localhost" when the toolkit runs on it
    dns_servers: tuple[ipaddress.IPv4Address, ...] = ()  # handed to nodes by DHCP; none if empty
    ansible_user: str = ""  # the SSH user when Ansible reaches it over SSH; "" = the invoking user

    @property
    def broadcast(self) -> ipaddress.IPv4Address:
        return self.subnet.broadcast_address


@dataclass(frozen=True)
class Node:
    name: str
    mac: str  # lower case, colon separated
    ip: ipaddress.IPv4Address
    hardware: str
    models_disk: str  # the local SSD that holds /models

    @property
    def mac_hyphen(self) -> str:
        """The form pxelinux and iPXE (${mac:hexhyp}) use in file names."""
        return self.mac.replace(":", "-")


@dataclass(frozen=True)
class Admin:
    user: str
    ssh_public_key_path: Path
    ssh_public_key: str  # the key text, read once at load
    password_hash: str  # crypt(3) hash, never a plain password


@dataclass(frozen=True)
class ImageSettings:
    store: Path  # versioned images, boot files and per-node selections live here
    cache: Path  # download and build caches (outside any clone)
    distro: str
    root: str  # how golden images are served: "nfs" (default) or "http" (fetched into RAM)
    models_label: str  # filesystem label of the local disk mounted at /models


@dataclass(frozen=True)
class Inventory:
    path: Path
    cluster: str
    control: Control
    nodes: tuple[Node, ...]
    admin: Admin
    image: ImageSettings
    extra: dict = field(default_factory=dict, compare=False)

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise UserError(f"unknown node {name!r}", f"the inventory {self.path} has: {', '.join(self.node_names)}")

    @property
    def node_names(self) -> list[str]:
        return [n.name for n in self.nodes]

    def select(self, names: tuple[str, ...] | list[str]) -> list[Node]:
        """The named nodes (validated), or all nodes when none are named."""
        return [self.node(n) for n in names] if names else list(self.nodes)

    def hardware_profiles(self) -> list[profiles.HardwareProfile]:
        return [profiles.hardware(h) for h in sorted({n.hardware for n in self.nodes})]


class _Fields:
    """Reads one mapping of the YAML file and reports errors as `file: section.field: ...`."""

    def __init__(self, source: Path, where: str, data: Any, known: set[str]):
        self.source, self.where = source, where
        if not isinstance(data, dict):
            self.fail(f"must be a mapping, got {type(data).__name__}")
        unknown = sorted(set(data) - known)
        if unknown:
            self.fail(f"unknown field {unknown[0]!r}", f"known fields: {', '.join(sorted(known))}")
        self.data = data

    def fail(self, message: str, hint: str | None = None, key: str | None = None) -> None:
        where = f"{self.where}.{key}" if key and self.where else (key or self.where)
        raise UserError(f"{self.source}: {where}: {message}", hint)

    def get(self, key: str, default: Any = ..., kind: type = str) -> Any:
        if key not in self.data or self.data[key] is None:
            if default is ...:
                self.fail("is missing", "add it (see cluster.example.yml)", key)
            return default
        value = self.data[key]
        if kind is str and isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, kind):
            self.fail(f"{value!r} must be a {kind.__name__}", None, key)
        return value

    def ip(self, key: str) -> ipaddress.IPv4Address:
        value = self.get(key)
        try:
            return ipaddress.IPv4Address(value)
        except ValueError:
            self.fail(f"{value!r} is not an IPv4 address", "write it like 192.168.1.10", key)
            raise  # unreachable, keeps type checkers quiet


def _expand(path: str, base: Path) -> Path:
    p = Path(os.path.expanduser(path))
    return p if p.is_absolute() else (base / p)


def _read_key(path: Path, src: Path) -> str:
    hint = f"create one with `ssh-keygen -t ed25519` or set admin.ssh_public_key in {src}"
    if not path.is_file():
        raise UserError(f"{src}: admin.ssh_public_key: {path} does not exist", hint)
    text = path.read_text().strip()
    if not PUBKEY_RE.match(text):
        raise UserError(f"{src}: admin.ssh_public_key: {path} is not an OpenSSH public key", hint)
    return text


def parse(data: Any, source: Path) -> Inventory:
    """Validate the YAML data of an inventory; source names the file in messages."""
    base = source.parent
    top = _Fields(source, "", data, {"cluster", "control", "nodes", "admin", "image", "extra"})

    c = _Fields(source, "control", top.get("control", kind=dict),
                {"name", "compute_interface", "address", "subnet", "dhcp_range", "ansible_host", "ansible_user",
                 "dns_servers"})
    name = c.get("name")
    if not HOSTNAME_RE.match(name):
        c.fail(f"{name!r} is not a valid host name", "use lower-case letters, digits and '-'", "name")
    iface = c.get("compute_interface")
    if not IFNAME_RE.match(iface):
        c.fail(f"{iface!r} is not a Linux interface name", "at most 15 characters, e.g. enp3s0", "compute_interface")
    try:
        subnet = ipaddress.IPv4Network(c.get("subnet"), strict=True)
    except ValueError:
        c.fail(f"{c.get('subnet')!r} is not a network", "write it like 192.168.1.0/24", "subnet")
    address = c.ip("address")
    if address not in subnet:
        c.fail(f"{address} is outside the subnet {subnet}", "pick an address inside it", "address")
    rng = c.get("dhcp_range", kind=list)
    if len(rng) != 2:
        c.fail(f"{rng!r} must be [first, last]", "e.g. [192.168.1.100, 192.168.1.199]", "dhcp_range")
    try:
        first, last = (ipaddress.IPv4Address(str(a)) for a in rng)
    except ValueError:
        c.fail(f"{rng!r} holds something that is not an IPv4 address", None, "dhcp_range")
    if first not in subnet or last not in subnet or first > last:
        c.fail(f"{first}..{last} must be an ascending range inside {subnet}", None, "dhcp_range")
    if first <= address <= last:
        c.fail(f"the control address {address} lies inside it", "move the range or the address", "dhcp_range")
    try:
        dns = tuple(ipaddress.IPv4Address(str(a)) for a in c.get("dns_servers", [], list))
    except ValueError:
        c.fail(f"{c.get('dns_servers')!r} holds something that is not an IPv4 address", None, "dns_servers")
    control = Control(name, iface, address, subnet, (first, last), c.get("ansible_host", "localhost"), dns,
                      c.get("ansible_user", ""))

    i = _Fields(source, "image", top.get("image", {}, dict), {"store", "cache", "distro", "root", "models_label"})
    distro = i.get("distro", "ubuntu-22.04")
    if distro not in profiles.names(paths.DISTRO_DIR):
        i.fail(f"unknown distro profile {distro!r}", f"choose one of: {', '.join(profiles.names(paths.DISTRO_DIR))}",
               "distro")
    root = i.get("root", "nfs")
    if root not in ROOT_MODES:
        i.fail(f"{root!r} is not a root mode", f"choose one of: {', '.join(ROOT_MODES)}", "root")
    label = i.get("models_label", "models")
    if not re.match(r"^[A-Za-z0-9_-]{1,16}$", label):
        i.fail(f"{label!r} is not a usable filesystem label", "1-16 letters, digits, '-' or '_'", "models_label")
    image = ImageSettings(
        store=_expand(i.get("store", "/srv/onedotzero"), base),
        cache=_expand(i.get("cache", "/var/cache/onedotzero"), base),
        distro=distro, root=root, models_label=label,
    )

    a = _Fields(source, "admin", top.get("admin", kind=dict), {"user", "ssh_public_key", "password_hash"})
    user = a.get("user", "admin")
    if not USER_RE.match(user) or user == "root":
        a.fail(f"{user!r} is not a valid non-root user name", "e.g. admin", "user")
    pw = a.get("password_hash", "!")  # "!" = locked password: SSH keys only
    if pw != "!" and not CRYPT_RE.match(pw):
        a.fail("is not a crypt(3) hash", "generate one with `openssl passwd -6` (never store a plain password)",
               "password_hash")
    key_path = _expand(a.get("ssh_public_key"), base)
    admin = Admin(user, key_path, _read_key(key_path, source), pw)

    raw_nodes = top.get("nodes", kind=list)
    if not raw_nodes:
        top.fail("must list at least one compute node", None, "nodes")
    nodes: list[Node] = []
    known_hw = profiles.names(paths.HARDWARE_DIR)
    for idx, raw in enumerate(raw_nodes):
        n = _Fields(source, f"nodes[{idx}]", raw, {"name", "mac", "ip", "hardware", "models_disk"})
        nname = n.get("name")
        if not HOSTNAME_RE.match(nname):
            n.fail(f"{nname!r} is not a valid host name", "use lower-case letters, digits and '-'", "name")
        mac = n.get("mac").strip().lower().replace("-", ":")
        if not MAC_RE.match(mac):
            n.fail(f"{n.get('mac')!r} is not a MAC address", "write six hex pairs, e.g. 8c:ae:4c:f4:4e:21", "mac")
        if int(mac[:2], 16) & 1:
            n.fail(f"{mac} is a multicast address, not a NIC's", "copy the MAC from `ip link` on the node", "mac")
        ip = n.ip("ip")
        if ip not in subnet:
            n.fail(f"{ip} is outside the cluster subnet {subnet}", "pick an address inside it", "ip")
        if ip == address or ip in (subnet.network_address, subnet.broadcast_address):
            n.fail(f"{ip} is the control node's, network or broadcast address", "pick a free address", "ip")
        if first <= ip <= last:
            n.fail(f"{ip} lies inside the dynamic DHCP range {first}..{last}", "give nodes addresses outside it",
                   "ip")
        hw = n.get("hardware")
        if hw not in known_hw:
            n.fail(f"unknown hardware profile {hw!r}", f"choose one of: {', '.join(known_hw)}", "hardware")
        disk = n.get("models_disk", "")
        if disk and not disk.startswith("/dev/"):
            n.fail(f"{disk!r} is not a device path", "e.g. /dev/nvme0n1 or /dev/disk/by-id/...", "models_disk")
        for other in nodes:
            for attr, value in (("name", nname), ("mac", mac), ("ip", ip)):
                if getattr(other, attr) == value:
                    n.fail(f"{value} is already used by node {other.name!r}", "every node needs its own", attr)
        nodes.append(Node(nname, mac, ip, hw, disk))
    if control.name in {n.name for n in nodes}:
        c.fail(f"{control.name!r} is also a compute node's name", "give the control node its own name", "name")

    cluster = top.get("cluster", "onedotzero")
    if not HOSTNAME_RE.match(cluster):
        top.fail(f"{cluster!r} is not a valid cluster name", "lower-case letters, digits and '-'", "cluster")
    return Inventory(source, cluster, control, tuple(nodes), admin, image, top.get("extra", {}, dict))


def resolve_path(path: str | Path | None) -> Path:
    """Explicit path, else $ONEDOTZERO_INVENTORY, else ./cluster.yml in the repository."""
    if path:
        return Path(path)
    if os.environ.get(paths.ENV_INVENTORY):
        return Path(os.environ[paths.ENV_INVENTORY])
    return paths.DEFAULT_INVENTORY


def load(path: str | Path | None = None) -> Inventory:
    src = resolve_path(path).expanduser().absolute()
    if not src.is_file():
        raise UserError(f"inventory {src} not found",
                        "copy cluster.example.yml to cluster.yml and edit it, or pass --inventory PATH")
    try:
        data = yaml.safe_load(src.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"{src}: not valid YAML{where}: {getattr(e, 'problem', e)}") from e
    return parse(data, src)


def to_dict(inv: Inventory) -> dict:
    """The resolved inventory as plain data (for `config show` and templates)."""
    return {
        "cluster": inv.cluster,
        "control": {
            "name": inv.control.name, "compute_interface": inv.control.compute_interface,
            "address": str(inv.control.address), "subnet": str(inv.control.subnet),
            "netmask": str(inv.control.subnet.netmask), "broadcast": str(inv.control.broadcast),
            "dhcp_range": [str(a) for a in inv.control.dhcp_range], "ansible_host": inv.control.ansible_host,
            "dns_servers": [str(a) for a in inv.control.dns_servers],
        },
        "nodes": [
            {"name": n.name, "mac": n.mac, "ip": str(n.ip), "hardware": n.hardware, "models_disk": n.models_disk}
            for n in inv.nodes
        ],
        "admin": {"user": inv.admin.user, "ssh_public_key": str(inv.admin.ssh_public_key_path)},
        "image": {"store": str(inv.image.store), "cache": str(inv.image.cache), "distro": inv.image.distro,
                  "root": inv.image.root, "models_label": inv.image.models_label},
    }


def dump(inv: Inventory) -> str:
    return yaml.safe_dump(to_dict(inv), sort_keys=False)


def to_ansible(inv: Inventory) -> dict:
    """An Ansible dynamic inventory (`--list` format) built from the same facts."""
    facts = to_dict(inv)
    local = inv.control.ansible_host in ("localhost", "127.0.0.1")
    return {
        "_meta": {
            "hostvars": {
                inv.control.name: {"ansible_host": inv.control.ansible_host,
                                   **({"ansible_connection": "local"} if local else {}),
                                   **({"ansible_user": inv.control.ansible_user} if inv.control.ansible_user else {})},
                **{
                    n.name: {"ansible_host": str(n.ip), "ansible_user": inv.admin.user, "odz_node_mac": n.mac,
                             "odz_node_hardware": n.hardware, "odz_node_models_disk": n.models_disk,
                             "odz_hardware_roles": list(profiles.hardware(n.hardware).roles)}
                    for n in inv.nodes
                },
            }
        },
        "all": {"children": ["control", "compute"],
                "vars": {"odz": facts, "odz_admin_password_hash": inv.admin.password_hash}},
        "control": {"hosts": [inv.control.name]},
        "compute": {"hosts": inv.node_names},
    }
