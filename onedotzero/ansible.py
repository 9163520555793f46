"""Ansible and the inventory: the dynamic inventory's data, and running the project's playbooks."""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from onedotzero import paths, roles
from onedotzero.inventory import Inventory, to_dict
from onedotzero.proc import run_progress

RECAP = re.compile(r"(\S+)\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)


@dataclass(frozen=True)
class HostRecap:
    host: str
    ok: int
    changed: int
    unreachable: int
    failed: int


def to_ansible(inv: Inventory) -> dict:
    """The dynamic inventory (`--list` format): hosts, and each compute node's role variables from
    onedotzero.roles.role_vars for its image, exactly what the image build gave its chroot."""
    local = inv.control.ansible_host in ("localhost", "127.0.0.1")
    hostvars = {inv.control.name: {"ansible_host": inv.control.ansible_host,
                                   **({"ansible_connection": "local"} if local else {}),
                                   **({"ansible_user": inv.control.ansible_user} if inv.control.ansible_user else {})}}
    for spec, nodes in roles.images(inv).items():
        variables = roles.role_vars(inv, spec, nodes)
        for n in nodes:
            hostvars[n.name] = {"ansible_host": str(n.ip), "ansible_user": inv.admin.user, "odz_node_mac": n.mac,
                                "odz_node_hardware": n.hardware, **variables,
                                # per node, not per image: the disk only this node's entry names
                                "models_disk_device": n.models_disk, "models_disk_label": inv.image.models_label}
    return {
        "_meta": {"hostvars": hostvars},
        "all": {"children": ["control", "compute"], "vars": {"odz": to_dict(inv)}},
        "control": {"hosts": [inv.control.name]},
        "compute": {"hosts": inv.node_names},
    }


def playbook(inv: Inventory, name: str, limit: list[str] | None = None, extra_vars: dict | None = None,
             netns: str | None = None) -> list[HostRecap]:
    """Runs playbooks/<name> with the inventory script; returns the PLAY RECAP per host.

    extra_vars go in as JSON (typed: `-e k=v` would make every value a string); netns runs Ansible in
    that network namespace (the virtual cluster's segment)."""
    log_file = inv.image.cache / "ansible" / f"{Path(name).stem}.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    log_file.unlink(missing_ok=True)
    exe = Path(sys.executable).with_name("ansible-playbook")
    argv = [exe if exe.exists() else "ansible-playbook", "-i", paths.PLAYBOOKS_DIR / "inventory.py",
            paths.PLAYBOOKS_DIR / name]
    key = inv.admin.ssh_public_key_path.with_suffix("")
    if key.is_file():
        argv += ["--private-key", key]
    if limit:
        argv += ["--limit", ",".join(limit)]
    if extra_vars:
        argv += ["-e", json.dumps(extra_vars)]
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    run_progress(argv, "ansible", phase=re.compile(r"^TASK \[(.*)\]"), host=", ".join(limit or ["all"]), env={
        "ONEDOTZERO_INVENTORY": str(inv.path), "ANSIBLE_CONFIG": str(paths.PLAYBOOKS_DIR / "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1", "ANSIBLE_LOG_PATH": str(log_file),
    })
    return [HostRecap(m[0], *map(int, m[1:])) for m in RECAP.findall(log_file.read_text())]
