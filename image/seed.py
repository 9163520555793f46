"""cloud-init NoCloud seeds for live images, one directory per node, served over HTTP by nginx.

  <store>/seed/<node>/           live: the RAM-booted installer system gets the admin user and sshd;
                                 no `autoinstall` key and no `autoinstall` word on the command line,
                                 so nothing touches the disk
  <store>/seed/<node>/install/   install to disk (`boot --image install NODE`): autoinstall, no questions,
                                 onto the disk the inventory pins for that node (nodes without one get
                                 no install seed: the installer would otherwise pick the largest disk,
                                 which can be the models SSD)
`default` stands for machines the inventory does not know (live only). Passwords appear only as
crypt(3) hashes.
"""

from __future__ import annotations

import yaml

from onedotzero.inventory import Inventory, Node

DEFAULT = "default"


def _user_data(doc: dict) -> str:
    return "#cloud-config\n" + yaml.safe_dump(doc, sort_keys=False, width=1000)


def live_user_data(inv: Inventory) -> str:
    """Top-level cloud-config keys configure the live system itself (subiquity: only `autoinstall:` installs)."""
    a = inv.admin
    return _user_data({
        "users": [{
            "name": a.user, "gecos": "onedotzero admin", "groups": ["sudo"], "shell": "/bin/bash",
            "sudo": "ALL=(ALL) NOPASSWD:ALL", "lock_passwd": a.password_hash == "!",
            **({"passwd": a.password_hash} if a.password_hash != "!" else {}),
            "ssh_authorized_keys": [a.ssh_public_key],
        }],
        "ssh_pwauth": False,
        "runcmd": [["systemctl", "start", "ssh"]],
    })


def install_user_data(inv: Inventory, node: Node) -> str:
    """The autoinstall of node onto its pinned install disk (`direct` layout: the whole disk, nothing else)."""
    a = inv.admin
    if node.install_disk is None:
        raise ValueError(f"{node.name} has no install_disk")  # callers check; the inventory says which
    return _user_data({"autoinstall": {
        "version": 1,
        "interactive-sections": [],
        "storage": {"layout": {"name": "direct", "match": node.install_disk.match()}},
        "identity": {"hostname": node.name, "username": a.user, "realname": "onedotzero admin",
                     "password": a.password_hash},
        "ssh": {"install-server": True, "authorized-keys": [a.ssh_public_key], "allow-pw": False},
        "shutdown": "reboot",
    }})


def meta_data(instance: str) -> str:
    return yaml.safe_dump({"instance-id": instance, "local-hostname": instance}, sort_keys=False)


def seed_files(inv: Inventory) -> dict[str, str]:
    """Every node's seeds (and the default's), keyed by path relative to the store."""
    files = {}
    for name in [*inv.node_names, DEFAULT]:
        files[f"seed/{name}/user-data"] = live_user_data(inv)
        files[f"seed/{name}/meta-data"] = meta_data(name)
    for node in inv.nodes:
        if node.install_disk is not None:
            files[f"seed/{node.name}/install/user-data"] = install_user_data(inv, node)
            files[f"seed/{node.name}/install/meta-data"] = meta_data(node.name)
    return files
