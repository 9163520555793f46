"""What `cluster.py compute` does beyond power: configuring nodes with Ansible once they are all up."""

from __future__ import annotations

from onedotzero import ansible, power
from onedotzero.errors import UserError
from onedotzero.inventory import Inventory, Node


def configure(inv: Inventory, nodes: list[Node], netns: str | None = None) -> list[ansible.HostRecap]:
    """Run playbooks/compute.yml on nodes, but only when every one of them is up on an onedotzero image:
    a half-configured cluster is worse than an unconfigured one."""
    bad = [s for s in power.status(inv, nodes) if not s.ok]
    if bad:
        raise UserError("not configuring: not OK: " + ", ".join(f"{s.name} ({s.error})" for s in bad),
                        "bring them up (`compute up`) or name only the nodes to configure")
    return ansible.playbook(inv, "compute.yml", [n.name for n in nodes], netns=netns)
