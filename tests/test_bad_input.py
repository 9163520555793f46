"""Bad input, one file per case (tests/data/bad/<case>.yml): the CLI prints one line naming the field, what is
wrong and the fix; exit 1, no traceback, nothing on stdout, nothing written.

Each case file is a copy of tests/data/bad/_valid.yml (or _valid-fabric.yml) with one defect; it names
the key `../test_key.pub`, so nothing else is wrong with it. The files start `# yamllint disable-file`:
they are wrong on purpose. The encoding cases are written by the test (ENCODED: _valid.yml in another
encoding) into a copy of that layout, as yamllint cannot even read a Latin-1 file. Hardware profiles cannot
be added to the checkout's hardware/, so their cases are temp files read through a patched
paths.HARDWARE_DIR.
"""

from __future__ import annotations

import codecs
import difflib
import re
from pathlib import Path

import pytest
import yaml
from conftest import REPO, run_cli

from onedotzero import inventory, paths, profiles
from onedotzero.errors import UserError

BAD = REPO / "tests/data/bad"
STORE, CACHE = Path("/srv/onedotzero-bad-input"), Path("/var/cache/onedotzero-bad-input")  # as the files say
# case -> the bytes of _valid.yml in another encoding (Latin-1: a comment with an 'é' on line 4)
ENCODED = {
    "latin1": lambda text: text.replace("  name: ctl\n", "  name: ctl  # in the café\n", 1).encode("latin-1"),
    "utf16-bom": lambda text: codecs.BOM_UTF16_LE + ("# Bad input: UTF-16 with a BOM.\n" + text).encode("utf-16-le"),
    "utf16-no-bom": lambda text: ("# Bad input: UTF-16, no BOM.\n" + text).encode("utf-16-le"),
}

# case -> the fragment its one-line error must contain
EXPECTED = {
    # not UTF-8: what it is instead, and where
    "latin1": "line 4, column 26: byte 0xe9 is not UTF-8: the file is Latin-1 or another legacy encoding "
              "(save the file as UTF-8, e.g. `iconv -f LATIN1 -t UTF-8`)",
    "utf16-bom": "is UTF-16 (it starts with a byte order mark), not UTF-8 (save it as UTF-8, e.g. `iconv -f UTF-16",
    "utf16-no-bom": "is UTF-16LE without a byte order mark, not UTF-8 (save it as UTF-8",
    "tab-indent": "not valid YAML at line 16, column 1: found character that cannot start any token "
                  "(indent with spaces: YAML does not allow tabs)",
    # duplicate keys: the field and both lines
    "duplicate-nodes-key": "line 27: duplicate key nodes (first at line 18) (YAML keeps only the last one",
    "duplicate-node-ip": "line 22: duplicate key nodes[0].ip (first at line 21) (YAML keeps only the last one",
    # key text where the key's path goes: never an OS error such as "File name too long"
    "key-text-ed25519": "admin.ssh_public_key: holds the text of a public key, not a path to one (save the key in a "
                        "file, e.g. ~/.ssh/id_ed25519.pub, and give that file's path)",
    "key-text-rsa4096": "admin.ssh_public_key: holds the text of a public key, not a path to one (save the key",
    "key-text-ecdsa": "admin.ssh_public_key: holds the text of a public key, not a path to one (save the key",
    "key-text-base64-only": "admin.ssh_public_key: holds the text of a public key, not a path to one (save the key",
    "key-path-directory": "is a directory, not a key file (create one with `ssh-keygen -t ed25519`",
    # YAML 1.1 implicit typing: "quote it"
    "mac-sexagesimal": "nodes[0].mac: 52:54:00:12:34:56 is read by YAML as a number (quote it: '52:54:00:12:34:56')",
    "name-no": "nodes[0].name: no is read by YAML as a boolean (quote it: 'no')",
    "name-yes": "nodes[1].name: yes is read by YAML as a boolean (quote it: 'yes')",
    "name-on": "control.name: on is read by YAML as a boolean (quote it: 'on')",
    "name-off": "cluster: off is read by YAML as a boolean (quote it: 'off')",
    "key-on": "line 8: control.on: the key 'on' is read by YAML as a boolean (quote it: 'on')",
    "nodes-not-a-list": "nodes: 2 must be a list (e.g. [a, b] or one `- item` per line)",
    # the control node's subnet, its DHCP range, the nodes' MACs
    "control-network-address": "control.address: 192.168.1.0 is the subnet's network address (pick a host address",
    "control-broadcast-address": "control.address: 192.168.1.255 is the subnet's broadcast address (pick a host",
    "dhcp-range-network": "control.dhcp_range: 192.168.1.0..192.168.1.199 includes 192.168.1.0, the subnet's network "
                          "address (keep it within 192.168.1.1..192.168.1.254)",
    "dhcp-range-broadcast": "control.dhcp_range: 192.168.1.100..192.168.1.255 includes 192.168.1.255, the subnet's "
                            "broadcast address (keep it within 192.168.1.1..192.168.1.254)",
    "dhcp-range-control": "control.dhcp_range: 192.168.1.100..192.168.1.199 includes the control address "
                          "192.168.1.150 (move the range or the address)",
    "dhcp-range-node": "nodes[0].ip: 192.168.1.10 lies inside the dynamic DHCP range 192.168.1.2..192.168.1.199 "
                       "(give nodes addresses outside it)",
    "mac-zero": "nodes[1].mac: 00:00:00:00:00:00 is a placeholder, not a NIC's address (copy the MAC from `ip link`",
    "mac-broadcast": "nodes[1].mac: ff:ff:ff:ff:ff:ff is a placeholder, not a NIC's address (copy the MAC",
    "mac-multicast": "nodes[1].mac: 01:00:5e:00:00:01 is a multicast address, not a NIC's (copy the MAC",
    # names the toolkit uses for its own files
    "name-default": "nodes[1].name: 'default' is a name the toolkit uses for its own files (rename the node; reserved:",
    "name-fabric-suffix": "nodes[1].name: 'node0-fabric' is a name the toolkit uses for its own files (rename the",
    # paths the rendered nginx, NFS and dnsmasq configs cannot carry
    "store-space": "image.store: '/srv/my store' contains ' ', which the rendered nginx, NFS and dnsmasq configs "
                   "cannot carry (use a path of letters, digits and . _ + - /)",
    "store-quote": "image.store: \"/srv/alice's-store\" contains \"'\", which the rendered",
    "store-semicolon": "image.store: '/srv/a;b' contains ';', which the rendered",
    "store-dollar": "image.store: '/srv/$USER/store' contains '$', which the rendered",
    # hardware the distribution's kernel cannot drive
    "kernel-too-old-for-hardware": "image.distro: hardware intel-arc needs Linux >= 6.2, but debian-12 ships 6.1 "
                                   "(choose a newer image.distro, or give",
    # the fabric
    "fabric-unknown-node": "fabric.links[1].nodes: unknown node 'node7' (link nodes listed under nodes: node0, node1",
    "fabric-same-subnet": "fabric.links: links[1] 10.10.0.8/31 overlaps links[0] 10.10.0.8/31 (give each link a "
                          "subnet of its own",
    "fabric-too-many-links": "fabric.links: node node0 has 2 links, but its hardware intel-arc has 1 port(s) "
                             "(remove 1 of its links",
    "fabric-mtu": "fabric.mtu: 70000 is out of range (use 1280..65522",
    "fabric-link-mtu": "fabric.links[1].mtu: 576 is out of range (use 1280..65522",
    "fabric-mtu-quoted": "fabric.mtu: '9000' must be a whole number (write it without quotes)",
    "fabric-prefix-small": "fabric.prefix: 10.10.0.0/29 is too small for 2 links and 4 node addresses "
                           "(use a /28 or larger)",
}


def _snapshot(data: Path) -> dict:
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in data.rglob("*")}


@pytest.fixture
def case_file(request, tmp_path) -> Path:
    """tests/data/bad/<case>.yml as the CLI is given it: the file itself (relative to the repository), or for an
    encoding case a written copy beside a copy of the key (tmp/data/bad/<case>.yml, tmp/data/test_key.pub)."""
    case = request.param
    if case not in ENCODED:
        return Path(f"tests/data/bad/{case}.yml")
    (tmp_path / "data/bad").mkdir(parents=True)
    (tmp_path / "data/test_key.pub").write_bytes((REPO / "tests/data/test_key.pub").read_bytes())
    path = tmp_path / f"data/bad/{case}.yml"
    path.write_bytes(ENCODED[case]((BAD / "_valid.yml").read_text()))
    return path


def test_every_case_file_is_in_the_table():
    files = {p.stem for p in BAD.glob("*.yml") if not p.name.startswith("_")}
    assert files | set(ENCODED) == set(EXPECTED) and not files & set(ENCODED)


@pytest.mark.parametrize("valid", ["_valid.yml", "_valid-fabric.yml"])
def test_the_cases_bases_are_valid(valid):
    proc = run_cli("-i", f"tests/data/bad/{valid}", "config", "show")
    assert proc.returncode == 0, proc.stderr
    key = Path(yaml.safe_load(proc.stdout)["admin"]["ssh_public_key"])
    assert key.resolve() == (REPO / "tests/data/test_key.pub").resolve()


@pytest.mark.parametrize("case", sorted(set(EXPECTED) - set(ENCODED)))
def test_case_is_its_base_with_one_defect(case):
    """Each file differs from its base in a few lines, so the message is about that defect alone."""
    text = (BAD / f"{case}.yml").read_text()
    assert text.startswith("# yamllint disable-file\n# Bad input: ")
    base = (BAD / ("_valid-fabric.yml" if re.search(r"^fabric:", text, re.M) else "_valid.yml")).read_text()
    body = [line for line in text.splitlines() if not line.startswith("#")]
    changed = [d for d in difflib.ndiff([ln for ln in base.splitlines() if not ln.startswith("#")], body)
               if d[0] in "+-"]
    assert 1 <= len(changed) <= 10, changed


def test_long_key_text_is_long():
    key = (BAD / "key-text-rsa4096.yml").read_text().split("ssh_public_key: ")[1].split("\n")[0]
    assert key.startswith("ssh-rsa AAAA") and len(key) > 700  # longer than a file name may be (255)


@pytest.mark.parametrize("case_file", sorted(EXPECTED), indirect=True)
def test_bad_input_one_line(case_file):
    case = case_file.stem
    fragment, data = EXPECTED[case], (REPO / case_file).parent.parent
    # In-process: the same message.
    with pytest.raises(UserError) as err:
        inventory.load(REPO / case_file)
    assert fragment in err.value.line()
    # As a user sees it: one line on stderr naming the file, exit 1, no traceback, nothing on stdout or disk.
    before = _snapshot(data)
    proc = run_cli("-i", str(case_file), "config", "show")
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: "), proc.stderr
    assert f"data/bad/{case}.yml: " in proc.stderr
    assert fragment in proc.stderr and "Traceback" not in proc.stderr
    assert _snapshot(data) == before and not STORE.exists() and not CACHE.exists()


# --- hardware profiles (hardware/*.yml): temp files, read through a patched paths.HARDWARE_DIR ---------------

GOOD_PROFILE = """\
description: a test board
firmware: uefi
min_kernel: "6.1"
roles: []
kernel_args: []
"""

GPU = "gpu:\n  vendor: cpu\n  opencl_device: x\n  vulkan_device: x\n"

# case -> (the profile's text, the fragment its one-line error must contain)
PROFILES = {
    "unknown-key": (GOOD_PROFILE + "gpus: 2\n", ": unknown field 'gpus' (known fields: description, distro,"),
    "unknown-role": (GOOD_PROFILE.replace("roles: []", "roles: [base, nvidia_gpu]"),
                     "roles[1]: role 'nvidia_gpu' does not exist in"),
    "kernel-newer-than-distro": (GOOD_PROFILE.replace('"6.1"', '"6.11"') + "distro: debian-12\n",
                                 "min_kernel: needs Linux >= 6.11, but debian-12 ships 6.1 (linux-image-amd64) "
                                 "(give the profile a newer distro:"),
    "min-kernel-unquoted": (GOOD_PROFILE.replace('"6.1"', "6.10"),
                            "min_kernel: 6.10 is read by YAML as a number (quote it: '6.10')"),
    "min-kernel-not-a-series": (GOOD_PROFILE.replace('"6.1"', '"six"'),
                                "min_kernel: 'six' is not a kernel series (write it like \"6.2\", in quotes)"),
    "unknown-firmware": (GOOD_PROFILE.replace("uefi", "pxe"),
                         "firmware: 'pxe' is not a known value (choose one of: uefi, bios, none)"),
    "unknown-distro": (GOOD_PROFILE + "distro: fedora-40\n", "distro: unknown distro profile 'fedora-40' (choose"),
    "fabric-no-ports": (GOOD_PROFILE + "fabric: {ports: 0, match: {Driver: thunderbolt-net}}\n",
                        "fabric.ports: 0 ports: a profile with fabric ports has at least one"),
    "duplicate-key": (GOOD_PROFILE + "firmware: bios\n", "line 6: duplicate key firmware (first at line 2)"),
    "gpu-bandwidth-negative": (GOOD_PROFILE + GPU + "  memory_gbs: -5\n",
                               "gpu.memory_gbs: -5.0 is not a bandwidth (GB/s as a positive number, e.g. 560)"),
    "gpu-bandwidth-text": (GOOD_PROFILE + GPU + "  memory_gbs: fast\n", "gpu.memory_gbs: 'fast' must be"),
}


@pytest.fixture
def hardware_dir(tmp_path, monkeypatch) -> Path:
    d = tmp_path / "hardware"
    d.mkdir()
    monkeypatch.setattr(paths, "HARDWARE_DIR", d)
    profiles.hardware.cache_clear()
    yield d
    profiles.hardware.cache_clear()  # before monkeypatch restores HARDWARE_DIR: no temp profile stays cached


def test_good_profile_reads(hardware_dir):
    (hardware_dir / "board.yml").write_text(GOOD_PROFILE)
    assert profiles.hardware("board").min_kernel == "6.1"


@pytest.mark.parametrize("case", sorted(PROFILES))
def test_bad_hardware_profile(case, hardware_dir):
    text, fragment = PROFILES[case]
    (hardware_dir / "board.yml").write_text(text)
    with pytest.raises(UserError) as err:
        profiles.hardware("board")
    line = err.value.line()
    assert fragment in line and "\n" not in line
    assert line.startswith(f"{hardware_dir / 'board.yml'}: ")


def test_inventory_names_the_bad_profile(hardware_dir):
    """A node of a broken profile: the inventory's one line is the profile's (file and field)."""
    (hardware_dir / "board.yml").write_text(PROFILES["unknown-role"][0])
    data = yaml.safe_load((BAD / "_valid.yml").read_text())
    for node in data["nodes"]:
        node["hardware"] = "board"
    with pytest.raises(UserError) as err:
        inventory.parse(data, BAD / "_valid.yml")
    assert f"{hardware_dir / 'board.yml'}: roles[1]: role 'nvidia_gpu' does not exist" in err.value.line()
