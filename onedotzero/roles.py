"""Which roles a node's image carries, and the one function that turns the inventory into role variables.

A node's image is (distribution, roles): the base roles, its hardware profile's roles, and the roles of
the cluster features it takes part in (the fabric when it has links). Nodes with equal pairs share one
image. `role_vars` is the only place the inventory becomes Ansible variables: the image build passes its
result into the chroot, and the dynamic inventory (`compute configure`) gives each node the same result
for its image, so a role sees the same variables in the chroot and on a running node.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass

import telemetry
from fabric import topology
from inference import artifacts
from onedotzero import profiles
from onedotzero.errors import UserError
from onedotzero.inventory import Inventory, Node

BASE_ROLES = ("base", "netroot", "wol", "node_exporter")  # every golden image, in this order
IMAGE_ONLY_ROLES = frozenset({"netroot"})  # image builds only: it deletes the tree's SSH host keys
SHARED_ROLES = ("packages",)  # included by other roles: part of every image, whatever its role list


@dataclass(frozen=True, order=True)
class ImageSpec:
    """What makes two golden images different."""

    distro: str
    roles: tuple[str, ...]

    @property
    def label(self) -> str:
        extra = [r for r in self.roles if r not in BASE_ROLES]
        return f"{self.distro}" + (f"+{'+'.join(extra)}" if extra else "")

    @property
    def key(self) -> str:
        return hashlib.sha256(json.dumps([self.distro, list(self.roles)]).encode()).hexdigest()[:12]

    @property
    def own_roles(self) -> tuple[str, ...]:
        """The roles beyond the base ones: what sets this image apart."""
        return tuple(r for r in self.roles if r not in BASE_ROLES)

    @property
    def runtime_roles(self) -> tuple[str, ...]:
        """The roles `compute configure` applies to a running node of this image."""
        return tuple(r for r in self.roles if r not in IMAGE_ONLY_ROLES)


def node_roles(inv: Inventory, node: Node) -> tuple[str, ...]:
    roles = [*BASE_ROLES, *node.profile.roles]
    if inv.fabric and inv.fabric.links_of(node.name):
        roles.append("fabric")
    s = inv.inference
    if s and node.name in (s.head, *s.workers):
        roles += list(s.engines)  # the serving nodes carry every engine they may be switched to
    return tuple(dict.fromkeys(roles))  # in order, once each


def image_spec(inv: Inventory, node: Node) -> ImageSpec:
    return ImageSpec(inv.distro_of(node), node_roles(inv, node))


def images(inv: Inventory) -> dict[ImageSpec, tuple[Node, ...]]:
    """Every image the inventory needs, with the nodes that boot it (in inventory order)."""
    out: dict[ImageSpec, list[Node]] = {}
    for node in inv.nodes:
        out.setdefault(image_spec(inv, node), []).append(node)
    return {spec: tuple(nodes) for spec, nodes in out.items()}


# --- role variables: one function per role, prefixed with the role's name ------------------------

def _base(inv: Inventory, nodes: tuple[Node, ...]) -> dict:
    return {"base_admin_user": inv.admin.user, "base_admin_ssh_key": inv.admin.ssh_public_key,
            "base_admin_password_hash": inv.admin.password_hash}


def _netroot(inv: Inventory, nodes: tuple[Node, ...]) -> dict:
    return {"netroot_models_label": inv.image.models_label}


def _wol(inv: Inventory, nodes: tuple[Node, ...]) -> dict:
    # Every node's MAC, whatever its image: the base roles' variables are then the same for every image
    # of the inventory, so their configured tree is built once and shared (a .link file matches only the
    # NICs that are present).
    return {"wol_macs": [n.mac for n in inv.nodes]}


def _node_exporter(inv: Inventory, nodes: tuple[Node, ...]) -> dict:
    return {"node_exporter_port": telemetry.NODE_EXPORTER_PORT}  # where the control node's Prometheus scrapes


def _fabric(inv: Inventory, nodes: tuple[Node, ...]) -> dict:
    return topology.role_vars(inv, nodes)


def _engine(engine: str) -> Callable[[Inventory, tuple[Node, ...]], dict]:
    """An engine role: its build for the image's distribution and its nodes' backend (one per image)."""
    def variables(inv: Inventory, nodes: tuple[Node, ...]) -> dict:
        backends = sorted({(n.profile.gpu.backend(engine) if n.profile.gpu else None) or "cpu" for n in nodes})
        if len(backends) > 1:
            raise UserError(f"nodes {', '.join(n.name for n in nodes)} share an image but want {engine} backends "
                            f"{', '.join(backends)}", "give their hardware profiles the same backend")
        distro = profiles.distro(inv.distro_of(nodes[0]))
        return artifacts.role_vars(inv.image.cache, engine, backends[0], distro)
    return variables


def _gpu_users(role: str) -> Callable[[Inventory, tuple[Node, ...]], dict]:
    """GPU roles put the admin in the device groups."""
    return lambda inv, nodes: {f"{role}_users": [inv.admin.user]}


ROLE_VARS: dict[str, Callable[[Inventory, tuple[Node, ...]], dict]] = {
    "base": _base, "netroot": _netroot, "wol": _wol, "node_exporter": _node_exporter, "fabric": _fabric,
    **{role: _gpu_users(role) for role in ("intel_arc", "amd_gpu", "soft_gpu")},
    "llama_cpp": _engine("llama_cpp"), "vllm": _engine("vllm"),
}


def vars_of(role: str, variables: dict) -> dict:
    """The variables of one role (they carry its name as prefix)."""
    return {k: v for k, v in variables.items() if k.startswith(f"{role}_")}


def role_vars(inv: Inventory, spec: ImageSpec, nodes: tuple[Node, ...] | None = None) -> dict:
    """Every variable the roles of spec's image read, and the role list itself (odz_roles)."""
    nodes = nodes if nodes is not None else images(inv).get(spec, ())
    out: dict = {"odz_roles": list(spec.roles), "odz_runtime_roles": list(spec.runtime_roles),
                 "odz_distro_family": profiles.distro(spec.distro).family}
    for role in spec.roles:
        if role in ROLE_VARS:
            out.update(ROLE_VARS[role](inv, nodes))
    return out
