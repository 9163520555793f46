"""Hardware acceptance: has each node what its hardware profile promises?

Runs on the control node; the checks run on each node over SSH as the admin user, with the node's own
tools, and compare what they print with the profile's data (hardware/<profile>.yml):
  kernel  `uname -r` is at least the profile's min_kernel
  opencl  a `clinfo -l` device matches gpu.opencl_device (the A770: "Intel(R) Arc(TM) A770 Graphics")
  vulkan  a `vulkaninfo --summary` deviceName matches gpu.vulkan_device
  render  the admin user can open a /dev/dri/renderD* node for reading and writing (gpu.render_node)
Nothing is simulated: in the virtual cluster the CPU stand-in's real devices (pocl, lavapipe) are checked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from onedotzero import profiles, ssh
from onedotzero.inventory import Inventory, Node

# One SSH round trip: every section prints a marker, then its tool's output and exit code.
SECTIONS = {
    "kernel": "uname -r",
    "opencl": "clinfo -l",
    "vulkan": "vulkaninfo --summary",
    # A real open: EACCES means not in the render group, ENXIO a node without a driver behind it.
    "render": "python3 -c 'import glob, os, sys\n"
              "nodes = sorted(glob.glob(\"/dev/dri/renderD*\"))\n"
              "if not nodes: sys.exit(\"no /dev/dri/renderD* node\")\n"
              "os.close(os.open(nodes[0], os.O_RDWR)); print(\"opened\", nodes[0])'",
}


@dataclass(frozen=True)
class Item:
    name: str
    ok: bool
    found: str  # what the node has (a device name, a kernel version) or why not
    expected: str
    output: str = ""  # the command's output, kept for the failure report


@dataclass
class NodeCheck:
    node: str
    items: list[Item] = field(default_factory=list)
    error: str = ""  # the node could not be reached

    @property
    def ok(self) -> bool:
        return not self.error and all(i.ok for i in self.items)

    def item(self, name: str) -> Item | None:
        return next((i for i in self.items if i.name == name), None)

    def problems(self) -> list[str]:
        if self.error:
            return [f"{self.node}: unreachable: {self.error}"]
        out = []
        for i in self.items:
            if not i.ok:
                tail = " | ".join(i.output.strip().splitlines()[-6:]) or "no output"
                out.append(f"{self.node}: {i.name}: expected {i.expected}, found {i.found} (output: {tail})")
        return out


def script(wanted: list[str]) -> str:
    return "; ".join(f"echo '### {name}'; {SECTIONS[name]} 2>&1; echo \"### exit $?\"" for name in wanted)


def split_sections(text: str) -> dict[str, tuple[str, int]]:
    """`### name` ... `### exit N` blocks -> name: (output, exit code)."""
    out = {}
    for m in re.finditer(r"^### (\w+)\n(.*?)^### exit (\d+)$", text, re.M | re.S):
        out[m[1]] = (m[2], int(m[3]))
    return out


def _match(kind: str, pattern: str, names: list[str], output: str, code: int, tool: str) -> Item:
    if code == 127:
        return Item(kind, False, f"no {tool} (not installed)", f"a device matching {pattern!r}", output)
    hit = next((n for n in names if re.search(pattern, n)), None)
    found = hit or (f"only {', '.join(names)}" if names else "no device")
    return Item(kind, hit is not None, found, f"a device matching {pattern!r}", output)


def evaluate(profile: profiles.HardwareProfile, sections: dict[str, tuple[str, int]]) -> list[Item]:
    """Compare the nodes' outputs with the profile (pure: the tests feed it real tool outputs)."""
    items = []
    out, code = sections.get("kernel", ("", 1))
    version = out.strip().splitlines()[-1] if out.strip() else "unknown"
    ok = code == 0 and profiles.kernel_tuple(version) >= profiles.kernel_tuple(profile.min_kernel)
    items.append(Item("kernel", ok, version, f">= {profile.min_kernel}", out))
    gpu = profile.gpu
    if gpu is None:
        return items
    out, code = sections.get("opencl", ("", 1))
    devices = [m[1].strip() for m in re.finditer(r"Device #\d+: (.*)$", out, re.M)]
    items.append(_match("opencl", gpu.opencl_device, devices, out, code, "clinfo"))
    out, code = sections.get("vulkan", ("", 1))
    devices = [m[1].strip() for m in re.finditer(r"deviceName\s*=\s*(.*)$", out, re.M)]
    items.append(_match("vulkan", gpu.vulkan_device, devices, out, code, "vulkaninfo"))
    if gpu.render_node:
        out, code = sections.get("render", ("", 1))
        found = out.strip().splitlines()[-1] if out.strip() else f"exit code {code}"
        items.append(Item("render", code == 0, found, "the admin user opens a render node", out))
    return items


def wanted(profile: profiles.HardwareProfile) -> list[str]:
    if profile.gpu is None:
        return ["kernel"]
    return ["kernel", "opencl", "vulkan", *(["render"] if profile.gpu.render_node else [])]


def check_node(inv: Inventory, node: Node) -> NodeCheck:
    profile = node.profile
    r = ssh.run(inv, node, script(wanted(profile)), timeout=120)
    if r.unreachable:
        return NodeCheck(node.name, error=r.reason())
    return NodeCheck(node.name, evaluate(profile, split_sections(r.stdout)))


def _cell(c: NodeCheck, name: str) -> str:
    i = c.item(name)
    return "-" if i is None else (i.found if i.ok else f"MISSING ({i.found})")


def rows(checks: list[NodeCheck]) -> list[tuple[str, ...]]:
    table = [("NODE", "KERNEL", "OPENCL", "VULKAN", "RENDER", "RESULT")]
    for c in checks:
        if c.error:
            table.append((c.node, "-", "-", "-", "-", "UNREACHABLE"))
        else:
            table.append((c.node, *(_cell(c, n) for n in ("kernel", "opencl", "vulkan", "render")),
                          "ok" if c.ok else "FAILED"))
    return table
