"""The virtual cluster (product code; the tests' fixtures live under tests/fixtures)."""

from __future__ import annotations

from onedotzero.inventory import Inventory


def open_testbed(inv: Inventory, name: str = "default", full: bool | None = None, lan: str | None = "gbe"):
    """The testbed called name, in full mode if asked (None: the mode the running one was started in)."""
    from testbed.bed import Testbed
    from testbed.full import FullTestbed

    bed = Testbed(inv, name, lan=lan)
    if full is None:
        try:
            full = bed.path("mode").read_text().strip() == FullTestbed.mode
        except FileNotFoundError:
            full = False
    return FullTestbed(inv, name) if full else bed
