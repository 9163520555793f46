"""The inventory: every cluster fact in one YAML file, parsed once into frozen, validated objects.

`load` reads the files (the inventory, strictly: UTF-8, no duplicate keys, YAML's implicit typing made
visible; the admin's public key); `parse` is pure and validates one section at a time. Errors name the
field, the value and the fix. Validation is linear in the number of nodes and links.
"""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
import math
import os
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from onedotzero import paths, profiles, yamlfile
from onedotzero.errors import UserError
from onedotzero.schema import Fields

IPv4 = ipaddress.IPv4Address
MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
HOSTNAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
IFNAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")  # Linux IFNAMSIZ is 16 including the NUL
USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
CRYPT_RE = re.compile(r"^\$(1|5|6|y|2[aby])\$[^\s:]+$")
PUBKEY_RE = re.compile(r"^(ssh-(ed25519|rsa|dss)|ecdsa-sha2-nistp\d+|sk-\S+) [A-Za-z0-9+/=]+( .*)?$")
# Key text pasted where a path goes: "<type> <base64> [comment]", or the base64 alone (an SSH key blob starts
# with the 4-byte length of its type name: "AAAA").
KEY_TEXT_RE = re.compile(r"^\s*((ssh-|ecdsa-|sk-)\S*\s+[A-Za-z0-9+/=]{16,}|AAAA[A-Za-z0-9+/]{40,})")
LABEL_RE = re.compile(r"^[A-Za-z0-9_-]{1,16}$")  # an ext4 label
SERIAL_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
# udev names by-id links <bus>-<ID_SERIAL> (60-persistent-storage.rules) and by-path links after ID_PATH.
BY_ID_RE = re.compile(r"^/dev/disk/by-id/(ata|nvme|scsi|usb|mmc)-([^/]+)$")
BY_PATH_RE = re.compile(r"^/dev/disk/by-path/([^/]+)$")
# Paths that nginx, NFS exports, ganesha and dnsmasq configs all carry as written, unquoted.
SAFE_PATH_RE = re.compile(r"^/[A-Za-z0-9._+/-]*$")
ROOT_MODES = ("nfs", "http")
# Names the toolkit uses for its own files beside the nodes' (seed/default/ is for unknown machines).
RESERVED_NODE_NAMES = frozenset({"default", "menu", "local", "live", "golden", "install", "localhost"})
FABRIC_SUFFIX = "-fabric"  # every node resolves <node>-fabric to that node's fabric address
MTU_RANGE = (1280, 65522)  # thunderbolt-net allows up to 65522; 65520 is what both ends usually use
DEFAULT_MTU = 65520
NODE_FIELDS = frozenset({"name", "mac", "ip", "hardware", "models_disk", "install_disk"})
LINK_FIELDS = frozenset({"nodes", "subnet", "mtu", "kind", "ports"})


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
class InstallDisk:
    """The disk an autoinstall may erase, pinned as subiquity matches disks (udev ID_SERIAL or ID_PATH)."""

    given: str  # as the inventory says it
    key: str  # subiquity's match key: "serial" or "id_path"
    value: str

    def match(self) -> dict:
        """subiquity's storage layout `match:` for this disk."""
        return {self.key: self.value}

    def __str__(self) -> str:
        return self.given


@dataclass(frozen=True)
class Node:
    name: str
    mac: str  # lower case, colon separated
    ip: ipaddress.IPv4Address
    hardware: str
    models_disk: str = ""  # the local SSD that holds /models
    install_disk: InstallDisk | None = None  # required for the install-to-disk entry

    @property
    def mac_hyphen(self) -> str:
        """The form pxelinux and iPXE (${mac:hexhyp}) use in file names."""
        return self.mac.replace(":", "-")

    @property
    def profile(self) -> profiles.HardwareProfile:
        return profiles.hardware(self.hardware)


@dataclass(frozen=True)
class Admin:
    user: str
    ssh_public_key_path: Path
    ssh_public_key: str  # the key text, read by `load` (parse leaves it empty)
    password_hash: str  # crypt(3) hash, never a plain password


@dataclass(frozen=True)
class ImageSettings:
    store: Path  # versioned images, boot files and per-node selections live here
    cache: Path  # download and build caches (outside any clone)
    distro: str  # the default distribution; a hardware profile may name its own
    root: str  # how golden images are served: "nfs" (default) or "http" (fetched into RAM)
    models_label: str  # filesystem label of the local disk mounted at /models


@dataclass(frozen=True)
class LinkEnd:
    node: str
    address: ipaddress.IPv4Address  # this end's address on the link's /31
    port: str = ""  # the port's [Match] value (profile fabric.port_key), when the node has several links


@dataclass(frozen=True)
class Link:
    ends: tuple[LinkEnd, LinkEnd]
    subnet: ipaddress.IPv4Network
    mtu: int
    kind: str  # what the cable is (hardware/links/<kind>.yml); the virtual cluster emulates it

    @property
    def name(self) -> str:
        return f"{self.ends[0].node}-{self.ends[1].node}"

    def end(self, node: str) -> LinkEnd:
        return self.ends[0] if self.ends[0].node == node else self.ends[1]

    def peer(self, node: str) -> LinkEnd:
        return self.ends[1] if self.ends[0].node == node else self.ends[0]


@dataclass(frozen=True)
class Fabric:
    """The clustering links (USB4 host-to-host on the real nodes): point-to-point, a /31 each, and a /32
    fabric address per node that every other node reaches over the links (routed where not adjacent)."""

    prefix: ipaddress.IPv4Network
    links: tuple[Link, ...]
    addresses: tuple[tuple[str, ipaddress.IPv4Address], ...]  # node -> fabric address, inventory order
    min_gbits: float  # `fabric test` fails a link slower than this

    def address(self, node: str) -> ipaddress.IPv4Address | None:
        return self._address_of.get(node)

    def links_of(self, node: str) -> list[Link]:
        return list(self._links_of.get(node, ()))

    # Indexes built on first use: callers ask once per node, which must not cost a scan of every link.
    @cached_property
    def _address_of(self) -> dict[str, ipaddress.IPv4Address]:
        return dict(self.addresses)

    @cached_property
    def _links_of(self) -> dict[str, list[Link]]:
        index: dict[str, list[Link]] = {}
        for lk in self.links:
            for end in lk.ends:
                index.setdefault(end.node, []).append(lk)
        return index


@dataclass(frozen=True)
class InferenceSettings:
    """The engine across the nodes (`cluster.py inference`): which engine and model, which node leads."""

    engine: str  # the one `inference up` starts: llama_cpp or vllm
    engines: tuple[str, ...]  # what the serving nodes' images carry (the engine, and any to switch to)
    model: str  # a models-store reference: name or name@version
    head: str  # the node that serves the API (llama-server / vLLM rank 0)
    workers: tuple[str, ...]  # nodes that compute for it over the fabric (RPC workers / vLLM ranks)
    context: int  # tokens of context per request
    port: int  # the control node's endpoint: /v1/ and /chat/
    engine_port: int  # the head's server, on the cluster network (nginx is its client)
    rpc_port: int  # the workers' RPC, on their fabric addresses only
    threads: int  # CPU threads per engine process
    api_key_file: Path | None = None  # on the control node: a key clients must send (Bearer)
    debug: bool = False  # workers log every computation (evidence of the split; noisy)


@dataclass(frozen=True)
class Inventory:
    path: Path
    cluster: str
    control: Control
    nodes: tuple[Node, ...]
    admin: Admin
    image: ImageSettings
    fabric: Fabric | None = None
    inference: InferenceSettings | None = None
    extra: dict = field(default_factory=dict, compare=False)

    def node(self, name: str) -> Node:
        found = self._by_name.get(name)
        if found is None:
            raise UserError(f"unknown node {name!r}", f"the inventory {self.path} has: {_some(self.node_names)}")
        return found

    @cached_property
    def _by_name(self) -> dict[str, Node]:
        return {n.name: n for n in self.nodes}

    @property
    def node_names(self) -> list[str]:
        return [n.name for n in self.nodes]

    def select(self, names: tuple[str, ...] | list[str]) -> list[Node]:
        """The named nodes (validated), or all nodes when none are named."""
        return [self.node(n) for n in names] if names else list(self.nodes)

    def distro_of(self, node: Node) -> str:
        """The distribution a node's image is built from: its hardware's own, else the inventory's."""
        return node.profile.distro or self.image.distro


# --- parsing, one section at a time --------------------------------------------------------------

def _some(names: list[str] | tuple[str, ...] | dict, limit: int = 8) -> str:
    """A list of names for a message, cut short when an inventory has thousands."""
    names = list(names)
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown}, ... ({len(names)} in all)"


def _name(f: Fields, key: str, what: str = "host name") -> str:
    value = f.get(key)
    if not HOSTNAME_RE.match(value):
        f.fail(f"{value!r} is not a valid {what}", "use lower-case letters, digits and '-'", key)
    return value


def _control(top: Fields) -> Control:
    c = top.mapping("control", {"name", "compute_interface", "address", "subnet", "dhcp_range", "ansible_host",
                                "ansible_user", "dns_servers"})
    name = _name(c, "name")
    iface = c.get("compute_interface")
    if not IFNAME_RE.match(iface):
        c.fail(f"{iface!r} is not a Linux interface name", "at most 15 characters, e.g. enp3s0", "compute_interface")
    subnet = c.network("subnet")
    address = c.ip("address")
    if address not in subnet:
        c.fail(f"{address} is outside the subnet {subnet}", "pick an address inside it", "address")
    if address in (subnet.network_address, subnet.broadcast_address):
        c.fail(f"{address} is the subnet's {'network' if address == subnet.network_address else 'broadcast'} "
               "address", f"pick a host address, e.g. {subnet.network_address + 1}", "address")
    rng = c.get("dhcp_range", kind=list)
    if len(rng) != 2:
        c.fail(f"{rng!r} must be [first, last]", "e.g. [192.168.1.100, 192.168.1.199]", "dhcp_range")
    first, last = (c.ip(f"dhcp_range[{i}]", v) for i, v in enumerate(rng))
    hosts = f"{subnet.network_address + 1}..{subnet.broadcast_address - 1}"
    if first not in subnet or last not in subnet or first > last:
        c.fail(f"{first}..{last} must be an ascending range inside {subnet}", f"give [first, last] within {hosts}",
               "dhcp_range")
    for end, special in ((first, subnet.network_address), (last, subnet.broadcast_address)):
        if end == special:
            what = "network" if special == subnet.network_address else "broadcast"
            c.fail(f"{first}..{last} includes {end}, the subnet's {what} address", f"keep it within {hosts}",
                   "dhcp_range")
    if first <= address <= last:
        c.fail(f"{first}..{last} includes the control address {address}", "move the range or the address",
               "dhcp_range")
    dns = tuple(c.ip(f"dns_servers[{i}]", v) for i, v in enumerate(c.get("dns_servers", [], list)))
    return Control(name, iface, address, subnet, (first, last), c.get("ansible_host", "localhost"), dns,
                   c.get("ansible_user", ""))


def _image(top: Fields, base: Path) -> ImageSettings:
    i = top.mapping("image", {"store", "cache", "distro", "root", "models_label"}, None)
    i = i or Fields(top.source, "image", {}, set())
    distro = i.get("distro", "ubuntu-22.04")
    known = profiles.names(paths.DISTRO_DIR)
    if distro not in known:
        i.fail(f"unknown distro profile {distro!r}", f"choose one of: {', '.join(known)}", "distro")
    root = i.get("root", "nfs")
    if root not in ROOT_MODES:
        i.fail(f"{root!r} is not a root mode", f"choose one of: {', '.join(ROOT_MODES)}", "root")
    label = i.get("models_label", "models")
    if not LABEL_RE.match(label):
        i.fail(f"{label!r} is not a usable filesystem label", "1-16 letters, digits, '-' or '_'", "models_label")
    store = _expand(i.get("store", "/srv/onedotzero"), base)
    if not SAFE_PATH_RE.match(str(store)):
        bad = sorted(set(re.sub(r"[A-Za-z0-9._+/-]", "", str(store))))
        shown = ", ".join(repr(ch) for ch in bad) or "a relative part"
        i.fail(f"{str(store)!r} contains {shown}, which the rendered nginx, NFS and dnsmasq configs cannot carry",
               "use a path of letters, digits and . _ + - /", "store")
    return ImageSettings(store=store, cache=_expand(i.get("cache", "/var/cache/onedotzero"), base),
                         distro=distro, root=root, models_label=label)


def _admin(top: Fields, base: Path) -> Admin:
    a = top.mapping("admin", {"user", "ssh_public_key", "password_hash"})
    user = a.get("user", "admin")
    if not USER_RE.match(user) or user == "root":
        a.fail(f"{user!r} is not a valid non-root user name", "e.g. admin", "user")
    pw = a.get("password_hash", "!")  # "!" = locked password: SSH keys only
    if pw != "!" and not CRYPT_RE.match(pw):
        a.fail("is not a crypt(3) hash", "generate one with `openssl passwd -6` (never store a plain password)",
               "password_hash")
    key = a.get("ssh_public_key")
    if KEY_TEXT_RE.match(key):
        a.fail("holds the text of a public key, not a path to one",
               "save the key in a file, e.g. ~/.ssh/id_ed25519.pub, and give that file's path", "ssh_public_key")
    path = _expand(key, base)
    if "\0" in key or len(os.fsencode(path)) >= 4096 or any(len(os.fsencode(p)) > 255 for p in path.parts):
        a.fail("is too long to be a path (a file name has at most 255 bytes, a path 4095)",
               "give the path of the .pub file, e.g. ~/.ssh/id_ed25519.pub", "ssh_public_key")
    return Admin(user, path, "", pw)


def _install_disk(n: Fields, models_disk: str) -> InstallDisk | None:
    """{serial: S}, /dev/disk/by-id/<bus>-<serial> or /dev/disk/by-path/<path>: names that never swap."""
    raw = n.data.get("install_disk")
    if raw is None:
        return None
    hint = "pin the disk an install may erase: {serial: <ID_SERIAL>}, /dev/disk/by-id/<bus>-<serial> or by-path"
    if isinstance(raw, dict):
        d = n.mapping("install_disk", {"serial"})
        serial = d.get("serial")
        if not SERIAL_RE.match(serial):
            d.fail(f"{serial!r} is not a disk serial number", "as `udevadm info -q property` shows ID_SERIAL", "serial")
        return InstallDisk(f"serial {serial}", "serial", serial)
    path = n.get("install_disk")
    if path == models_disk:
        n.fail(f"{path} is also the models disk", "the install would erase /models: pick the other disk",
               "install_disk")
    if m := BY_ID_RE.match(path):
        if not m[2].startswith(("eui.", "nvme.")):
            return InstallDisk(path, "serial", m[2])
    if m := BY_PATH_RE.match(path):
        return InstallDisk(path, "id_path", m[1])
    n.fail(f"{path!r} is not a stable disk name the installer can match (kernel names like /dev/nvme0n1 can "
           "swap between boots; wwn-/eui. links name no serial)", hint, "install_disk")


def _nodes(top: Fields, control: Control) -> tuple[Node, ...]:
    raw_nodes = top.get("nodes", kind=list)
    if not raw_nodes:
        top.fail("must list at least one compute node", "e.g. - {name: node0, mac: \"8c:ae:4c:f4:4e:21\", "
                 "ip: 192.168.1.10, hardware: intel-arc}", "nodes")
    subnet, (first, last) = control.subnet, control.dhcp_range
    known_hw = set(profiles.names(paths.HARDWARE_DIR))
    taken: dict[tuple[str, Any], int] = {("name", control.name): -1, ("ip", control.address): -1}  # -> node index
    nodes = []
    for idx, raw in enumerate(raw_nodes):
        n = Fields(top.source, f"nodes[{idx}]", raw, NODE_FIELDS)
        name = _name(n, "name")
        if name in RESERVED_NODE_NAMES or name.endswith(FABRIC_SUFFIX):
            n.fail(f"{name!r} is a name the toolkit uses for its own files",
                   f"rename the node; reserved: {', '.join(sorted(RESERVED_NODE_NAMES))} and *{FABRIC_SUFFIX}", "name")
        mac = n.get("mac").strip().lower().replace("-", ":")
        if not MAC_RE.match(mac):
            n.fail(f"{n.get('mac')!r} is not a MAC address", "write six hex pairs, e.g. 8c:ae:4c:f4:4e:21", "mac")
        if mac in ("00:00:00:00:00:00", "ff:ff:ff:ff:ff:ff"):
            n.fail(f"{mac} is a placeholder, not a NIC's address", "copy the MAC from `ip link` on the node", "mac")
        if int(mac[:2], 16) & 1:
            n.fail(f"{mac} is a multicast address, not a NIC's", "copy the MAC from `ip link` on the node", "mac")
        ip = n.ip("ip")
        if ip not in subnet:
            n.fail(f"{ip} is outside the cluster subnet {subnet}", "pick an address inside it", "ip")
        if ip in (subnet.network_address, subnet.broadcast_address):
            what = "network" if ip == subnet.network_address else "broadcast"
            n.fail(f"{ip} is the subnet's {what} address", "pick a free host address", "ip")
        if first <= ip <= last:
            n.fail(f"{ip} lies inside the dynamic DHCP range {first}..{last}", "give nodes addresses outside it", "ip")
        hw = n.get("hardware")
        if hw not in known_hw:
            n.fail(f"unknown hardware profile {hw!r}", f"choose one of: {', '.join(sorted(known_hw))}", "hardware")
        disk = n.get("models_disk", "")
        if disk and not disk.startswith("/dev/"):
            n.fail(f"{disk!r} is not a device path", "e.g. /dev/nvme0n1 or /dev/disk/by-id/...", "models_disk")
        for attr, value in (("name", name), ("mac", mac), ("ip", ip)):
            owner = taken.setdefault((attr, value), idx)
            if owner != idx:
                label = "the control node" if owner < 0 else f"node {nodes[owner].name!r}"
                n.fail(f"{value} is already used by {label}", "every node needs its own", attr)
        nodes.append(Node(name, mac, ip, hw, disk, _install_disk(n, disk)))
    return tuple(nodes)


def _check_kernels(top: Fields, nodes: tuple[Node, ...], image: ImageSettings) -> None:
    """Every node's distribution must ship a kernel its hardware can run on (one check per profile)."""
    for hw in sorted({n.hardware for n in nodes}):
        profile = profiles.hardware(hw)
        if profile.distro is None:
            d = profiles.distro(image.distro)
            if profiles.kernel_tuple(d.kernel) < profiles.kernel_tuple(profile.min_kernel):
                top.fail(f"hardware {hw} needs Linux >= {profile.min_kernel}, but {d.name} ships {d.kernel}",
                         f"choose a newer image.distro, or give {profile.source} a distro: that ships one",
                         "image.distro")


def _fabric(top: Fields, nodes: tuple[Node, ...], control: Control) -> Fabric | None:
    f = top.mapping("fabric", {"prefix", "links", "mtu", "min_gbits"}, None)
    if f is None:
        return None
    prefix = f.network("prefix")
    mtu_default = _mtu(f, DEFAULT_MTU)
    by_name = {n.name: n for n in nodes}
    kinds = profiles.names(paths.HARDWARE_DIR / "links")
    raw_links = f.get("links", kind=list)
    if not raw_links:
        f.fail("must list at least one link", "e.g. - {nodes: [node0, node1], kind: usb4}", "links")
    ends_of: dict[str, list[LinkEnd]] = {}  # node -> its ends of links, in link order
    first_auto = int(prefix.network_address)
    pairs: dict[frozenset, int] = {}
    links = []
    for idx, raw in enumerate(raw_links):
        lf = Fields(f.source, f"fabric.links[{idx}]", raw, LINK_FIELDS)
        ends = lf.strings("nodes")
        if len(ends) != 2 or ends[0] == ends[1]:
            lf.fail(f"{ends!r} must name two different nodes", "a link is one cable between two nodes", "nodes")
        for end in ends:
            if end not in by_name:
                lf.fail(f"unknown node {end!r}", f"link nodes listed under nodes: {_some(by_name)}", "nodes")
        pair = frozenset(ends)
        if pair in pairs:
            lf.fail(f"{ends[0]} and {ends[1]} are already linked by fabric.links[{pairs[pair]}]",
                    "remove one of the two links", "nodes")
        pairs[pair] = idx
        mtu = _mtu(lf, mtu_default)
        kind = lf.get("kind", "usb4")
        if kind not in kinds:
            lf.fail(f"unknown link kind {kind!r}", f"choose one of: {', '.join(kinds)}", "kind")
        ports = lf.strings("ports", ["", ""])
        if len(ports) != 2:
            lf.fail(f"{ports!r} must give one port per end", "e.g. [\"pci-0000:00:0d.2\", \"pci-0000:00:0d.3\"]",
                    "ports")
        if lf.has("subnet"):
            subnet = lf.network("subnet")
            if subnet.num_addresses < 2:
                lf.fail(f"{subnet} has no room for two ends", "use a /31", "subnet")
        else:  # the idx-th /31 of the prefix
            subnet = ipaddress.IPv4Network((first_auto + 2 * idx, 31))
        a = int(subnet.network_address) + (subnet.prefixlen != 31)  # a /31's two addresses, else the first hosts
        link = Link((LinkEnd(ends[0], IPv4(a), ports[0]), LinkEnd(ends[1], IPv4(a + 1), ports[1])), subnet, mtu,
                    kind)
        links.append(link)
        for end in link.ends:
            ends_of.setdefault(end.node, []).append(end)
    for name, node_ends in ends_of.items():
        count, hw = len(node_ends), by_name[name].hardware
        fab = by_name[name].profile.fabric
        if fab is None:
            f.fail(f"node {name} has {count} link(s), but its hardware {hw} has no fabric ports",
                   "add a fabric: section to the hardware profile, or remove the link", "links")
        if count > fab.ports:
            f.fail(f"node {name} has {count} links, but its hardware {hw} has {fab.ports} port(s)",
                   f"remove {count - fab.ports} of its links; a ring needs 2 ports per node, a 4-node full mesh 3",
                   "links")
        if count > 1 and not any("{peer}" in v for _, v in fab.match) and not all(e.port for e in node_ends):
            f.fail(f"node {name} has {count} links: each end needs its port ({fab.port_key})",
                   "add ports: [<end 0>, <end 1>] to its links", "links")
    members = [n.name for n in nodes if n.name in ends_of]
    needed = 2 * len(links) + len(members) + 2
    if needed > prefix.num_addresses:
        f.fail(f"{prefix} is too small for {len(links)} links and {len(members)} node addresses",
               f"use a /{32 - math.ceil(math.log2(needed))} or larger", "prefix")
    top_addr = int(prefix.broadcast_address) - 1
    addresses = tuple((name, IPv4(top_addr - i)) for i, name in enumerate(members))
    _check_fabric_space(f, prefix, links, addresses, control)
    return Fabric(prefix, tuple(links), addresses, f.get("min_gbits", 1.0, float))


def _check_fabric_space(f: Fields, prefix, links: list[Link], addresses, control: Control) -> None:
    """No two link subnets, node addresses or the cluster subnet overlap (a sorted sweep: n log n).

    Spans are (first, last, what, index) as plain ints; the words for a message are made only for a failure."""
    def span(net: ipaddress.IPv4Network, what: int, index: int) -> tuple[int, int, int, int]:
        first = int(net.network_address)
        return first, first + (1 << (32 - net.prefixlen)) - 1, what, index

    spans = [span(lk.subnet, 0, i) for i, lk in enumerate(links)]
    spans += [(int(a), int(a), 1, i) for i, (_, a) in enumerate(addresses)]
    spans.append(span(control.subnet, 2, 0))
    spans.sort()

    def label(what: int, index: int) -> str:
        if what == 0:
            return f"links[{index}] {links[index].subnet}"
        return f"{addresses[index][0]}'s fabric address {addresses[index][1]}" if what == 1 else \
            f"the cluster subnet {control.subnet}"

    for (_, e0, what0, i0), (s1, _, what1, i1) in zip(spans, spans[1:], strict=False):
        if s1 <= e0:
            f.fail(f"{label(what1, i1)} overlaps {label(what0, i0)}",
                   f"give each link a subnet of its own, or leave subnet: out to take the next /31 of {prefix}",
                   "links")


def _mtu(f: Fields, default: int) -> int:
    mtu = f.get("mtu", default, int)
    if not MTU_RANGE[0] <= mtu <= MTU_RANGE[1]:
        f.fail(f"{mtu} is out of range", f"use {MTU_RANGE[0]}..{MTU_RANGE[1]}; thunderbolt-net links use {DEFAULT_MTU}",
               "mtu")
    return mtu


ENGINE_NAMES = ("llama_cpp", "vllm")


def _inference(top: Fields, nodes: tuple[Node, ...], fabric: Fabric | None, base: Path) -> InferenceSettings | None:
    f = top.mapping("inference", {"engine", "engines", "model", "head", "workers", "context", "port", "engine_port",
                                  "rpc_port", "threads", "api_key_file", "debug"}, None)
    if f is None:
        return None
    engine = f.choice("engine", ENGINE_NAMES, "llama_cpp")
    engines = tuple(f.strings("engines", [engine]))
    for i, e in enumerate(engines):
        if e not in ENGINE_NAMES:
            f.fail(f"{e!r} is not an engine", f"choose from: {', '.join(ENGINE_NAMES)}", f"engines[{i}]")
    if engine not in engines:
        f.fail(f"the engine {engine} is not among engines {list(engines)}", "add it: the images must carry it",
               "engines")
    model = f.get("model")
    if not re.match(r"^[a-z0-9][a-z0-9._-]{0,63}(@\d{8}T\d{6}Z-[0-9a-f]{8})?$", model):
        f.fail(f"{model!r} is not a model reference", "a models-store name, e.g. tiny-chat or tiny-chat@<version> "
               "(`cluster.py models list`)", "model")
    names = {n.name for n in nodes}
    head = f.get("head")
    if head not in names:
        f.fail(f"unknown node {head!r}", f"nodes are: {', '.join(sorted(names))}", "head")
    workers = tuple(f.strings("workers", []))
    seen = {head}
    for i, w in enumerate(workers):
        if w not in names:
            f.fail(f"unknown node {w!r}", f"nodes are: {', '.join(sorted(names))}", f"workers[{i}]")
        if w in seen:
            f.fail(f"{w} is listed twice (the head and the workers are different nodes)", None, f"workers[{i}]")
        seen.add(w)
    if workers and (fabric is None or any(fabric.address(n) is None for n in (head, *workers))):
        f.fail("workers compute over the fabric, but not every serving node has a fabric link",
               "add fabric: links between the head and the workers", "workers")
    ports = {}
    for key, default in (("port", 8000), ("engine_port", 8080), ("rpc_port", 50052)):
        value = f.get(key, default, int)
        if not 1 <= value <= 65535:
            f.fail(f"{value} is not a port", "1..65535", key)
        if value in ports.values():
            f.fail(f"{value} is also {next(k for k, v in ports.items() if v == value)}", "give each its own", key)
        ports[key] = value
    context = f.get("context", 4096, int)
    if context < 128:
        f.fail(f"{context} tokens of context", "at least 128", "context")
    threads = f.get("threads", 4, int)
    if threads < 1:
        f.fail(f"{threads} threads", "at least 1", "threads")
    key_file = _expand(f.get("api_key_file"), base) if f.has("api_key_file") else None
    return InferenceSettings(engine, engines, model, head, workers, context, ports["port"], ports["engine_port"],
                             ports["rpc_port"], threads, key_file, f.get("debug", False, bool))


def parse(data: Any, source: Path) -> Inventory:
    """Validate the YAML data of an inventory (pure: reads no file); source names the file in messages."""
    base = source.parent
    top = Fields(source, "", data, {"cluster", "control", "nodes", "admin", "image", "fabric", "inference", "extra"})
    cluster = top.get("cluster", "onedotzero")
    if not HOSTNAME_RE.match(cluster):
        top.fail(f"{cluster!r} is not a valid cluster name", "lower-case letters, digits and '-'", "cluster")
    control = _control(top)
    image = _image(top, base)
    admin = _admin(top, base)
    nodes = _nodes(top, control)
    _check_kernels(top, nodes, image)
    fabric = _fabric(top, nodes, control)
    inference = _inference(top, nodes, fabric, base)
    return Inventory(source, cluster, control, nodes, admin, image, fabric, inference,
                     yamlfile.plain(top.get("extra", {}, dict)))


def _expand(path: str, base: Path) -> Path:
    p = Path(os.path.expanduser(path))
    return p if p.is_absolute() else (base / p)


def read_public_key(path: Path, src: Path) -> str:
    """The admin's public key text, or one line saying why not (never an OS error)."""
    hint = f"create one with `ssh-keygen -t ed25519` or set admin.ssh_public_key in {src}"
    try:
        data = path.read_bytes()
    except OSError as e:
        why = {errno.ENOENT: "does not exist", errno.ENOTDIR: "does not exist (a part of it is a file)",
               errno.EISDIR: "is a directory, not a key file", errno.EACCES: "is not readable by you",
               errno.ENAMETOOLONG: "is too long to be a path"}.get(e.errno, f"cannot be read ({e.strerror})")
        raise UserError(f"{src}: admin.ssh_public_key: {path} {why}", hint) from None
    text = data.decode("utf-8", errors="replace").strip()
    if not PUBKEY_RE.match(text):
        private = "PRIVATE KEY" in text
        raise UserError(f"{src}: admin.ssh_public_key: {path} is {'a private' if private else 'not an OpenSSH public'}"
                        " key", "give the .pub file" if private else hint)
    return text


def resolve_path(path: str | Path | None) -> Path:
    """Explicit path, else $ONEDOTZERO_INVENTORY, else ./cluster.yml in the repository."""
    if path:
        return Path(path)
    if os.environ.get(paths.ENV_INVENTORY):
        return Path(os.environ[paths.ENV_INVENTORY])
    return paths.DEFAULT_INVENTORY


def load(path: str | Path | None = None) -> Inventory:
    """Read and validate the inventory file and the admin's public key it names."""
    src = resolve_path(path).expanduser().absolute()
    try:
        found = src.is_file()
    except OSError as e:  # e.g. a name longer than the file system allows
        raise UserError(f"inventory {str(src)[:200]!r}: {e.strerror}", "pass the path of a cluster.yml") from None
    if not found:
        raise UserError(f"inventory {src} not found",
                        "copy cluster.example.yml to cluster.yml and edit it, or pass --inventory PATH")
    with yamlfile.paused_gc():  # tens of thousands of objects, no cycles: linear without the collector's passes
        inv = parse(yamlfile.load(src), src)
    key = read_public_key(inv.admin.ssh_public_key_path, src)
    return dataclasses.replace(inv, admin=dataclasses.replace(inv.admin, ssh_public_key=key))


def to_dict(inv: Inventory) -> dict:
    """The resolved inventory as plain data (for `config show` and templates)."""
    out: dict = {
        "cluster": inv.cluster,
        "control": {
            "name": inv.control.name, "compute_interface": inv.control.compute_interface,
            "address": str(inv.control.address), "subnet": str(inv.control.subnet),
            "netmask": str(inv.control.subnet.netmask), "broadcast": str(inv.control.broadcast),
            "dhcp_range": [str(a) for a in inv.control.dhcp_range], "ansible_host": inv.control.ansible_host,
            "dns_servers": [str(a) for a in inv.control.dns_servers],
        },
        "nodes": [
            {"name": n.name, "mac": n.mac, "ip": str(n.ip), "hardware": n.hardware, "distro": inv.distro_of(n),
             "models_disk": n.models_disk, **({"install_disk": str(n.install_disk)} if n.install_disk else {})}
            for n in inv.nodes
        ],
        "admin": {"user": inv.admin.user, "ssh_public_key": str(inv.admin.ssh_public_key_path)},
        "image": {"store": str(inv.image.store), "cache": str(inv.image.cache), "distro": inv.image.distro,
                  "root": inv.image.root, "models_label": inv.image.models_label},
    }
    if inv.fabric:
        fab = inv.fabric
        out["fabric"] = {
            "prefix": str(fab.prefix), "min_gbits": fab.min_gbits,
            "addresses": {name: str(a) for name, a in fab.addresses},
            "links": [{"nodes": [e.node for e in lk.ends], "subnet": str(lk.subnet), "mtu": lk.mtu, "kind": lk.kind,
                       "addresses": [str(e.address) for e in lk.ends]} for lk in fab.links],
        }
    if inv.inference:
        s = inv.inference
        out["inference"] = {
            "engine": s.engine, "engines": list(s.engines), "model": s.model, "head": s.head,
            "workers": list(s.workers), "context": s.context, "port": s.port, "engine_port": s.engine_port,
            "rpc_port": s.rpc_port, "threads": s.threads, "debug": s.debug,
            **({"api_key_file": str(s.api_key_file)} if s.api_key_file else {}),
        }
    return out


def dump(inv: Inventory) -> str:
    return yaml.safe_dump(to_dict(inv), sort_keys=False)
