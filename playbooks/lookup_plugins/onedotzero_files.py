"""Ansible lookup: the files the toolkit deploys on the control node, from the one inventory.

    lookup('onedotzero_files', 'services', proxy_dhcp=false)  -> [{path, content, service, mode, backup}, ...]
    lookup('onedotzero_files', 'menus')                        -> [{path, content, service}, ...]
    lookup('onedotzero_files', 'loaders')                      -> [{name, src}, ...]

netboot.render.ansible_files gives the same files `netboot.render.deploy` writes (the inventory is the one
cluster.py and playbooks/inventory.py read: $ONEDOTZERO_INVENTORY, else cluster.yml), so the playbook and
`cluster.py netboot render` can never disagree.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ansible.errors import AnsibleError
from ansible.plugins.lookup import LookupBase

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))

from netboot import render  # noqa: E402
from onedotzero import inventory  # noqa: E402
from onedotzero.errors import UserError  # noqa: E402


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        try:
            inv = inventory.load(None)
            opts = render.RenderOptions(proxy_dhcp=bool(kwargs.get("proxy_dhcp", False)))
            return [[f for term in terms for f in render.ansible_files(inv, term, opts)]]
        except UserError as e:
            raise AnsibleError(f"onedotzero: {e.line()}") from e
