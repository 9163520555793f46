"""Ansible test `onedotzero_edited`: is a deployed drop-in (base64, as slurp returns it) an operator's edit?

    slurp results | selectattr('content', 'defined') | select('onedotzero_edited')

The same check as netboot.render.edited, which `cluster.py netboot render` uses: the file's checksum line
is missing or does not match its content.
"""

from __future__ import annotations

import base64
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))

from netboot import render  # noqa: E402


def edited(slurped: dict) -> bool:
    return render.edited(base64.b64decode(slurped["content"]).decode(errors="replace"))


class TestModule:
    def tests(self):
        return {"onedotzero_edited": edited}
