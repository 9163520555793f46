"""Ansible lookup: the files the toolkit renders for the control node, from the one inventory.

    lookup('onedotzero_files', 'services', proxy_dhcp=false)  -> [{path, content, service, mode}, ...]
    lookup('onedotzero_files', 'menus')                        -> [{path, content, service}, ...]

The inventory is the one cluster.py and playbooks/inventory.py read ($ONEDOTZERO_INVENTORY, else
cluster.yml), so the playbook and `cluster.py netboot render` can never disagree.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ansible.errors import AnsibleError
from ansible.plugins.lookup import LookupBase

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))

from image.store import Store  # noqa: E402
from netboot import render  # noqa: E402
from onedotzero import inventory  # noqa: E402
from onedotzero.errors import UserError  # noqa: E402

SERVICE_OF = {v: k for k, v in render.SERVICE_FILES.items()}


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        try:
            inv = inventory.load(None)
        except UserError as e:
            raise AnsibleError(f"onedotzero inventory: {e.line()}") from e
        files = []
        for term in terms:
            if term == "services":
                opts = render.RenderOptions(proxy_dhcp=bool(kwargs.get("proxy_dhcp", False)))
                for rel, text in render.service_files(inv, opts).items():
                    files.append({"path": f"/{rel}", "content": text, "service": SERVICE_OF[rel],
                                  "mode": f"{render.file_mode(rel):04o}"})
            elif term == "menus":
                for rel, text in render.boot_files(inv, Store(inv.image.store)).items():
                    files.append({"path": str(inv.image.store / rel), "content": text, "service": "menus"})
            else:
                raise AnsibleError(f"onedotzero_files: unknown term {term!r} (services or menus)")
        return [files]
