#!/usr/bin/env python3
"""Ansible dynamic inventory: the same facts as cluster.py, from the one inventory file.

    ansible-inventory -i playbooks/inventory.py --list
The inventory file is $ONEDOTZERO_INVENTORY, else cluster.yml at the repository root.
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from onedotzero.venv import use_project_venv  # noqa: E402

use_project_venv()

from onedotzero import ansible, inventory  # noqa: E402
from onedotzero.errors import UserError  # noqa: E402

if __name__ == "__main__":
    try:
        data = ansible.to_ansible(inventory.load())
    except UserError as e:
        print(f"onedotzero inventory: {e.line()}", file=sys.stderr)
        sys.exit(1)
    if "--host" in sys.argv:
        print(json.dumps({}))
    else:
        print(json.dumps(data, indent=2))
