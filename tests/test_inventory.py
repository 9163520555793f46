"""The inventory: examples validate, and bad input gets one clear line, a non-zero exit, no traceback."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml
from conftest import REPO, run_cli, write_inventory

from onedotzero import inventory


@pytest.mark.parametrize("example", ["cluster.example.yml", "cluster.ryzen.example.yml"])
def test_examples_validate(example, tmp_path, keypair, monkeypatch):
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    shutil.copy(str(keypair) + ".pub", home / ".ssh" / "id_ed25519.pub")
    monkeypatch.setenv("HOME", str(home))
    inv = inventory.load(REPO / example)
    assert inv.admin.ssh_public_key.startswith("ssh-ed25519 ")
    assert all(n.ip in inv.control.subnet for n in inv.nodes)


def test_current_cluster_example_facts(tmp_path, keypair, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".ssh").mkdir()
    shutil.copy(str(keypair) + ".pub", tmp_path / ".ssh" / "id_ed25519.pub")
    inv = inventory.load(REPO / "cluster.example.yml")
    assert inv.control.name == "nuc" and inv.control.compute_interface == "enx8cae4cf44e21"
    assert inv.node_names == ["node0", "node1"] and {n.hardware for n in inv.nodes} == {"intel-arc"}
    assert inv.image.distro == "ubuntu-22.04"
    ryzen = inventory.load(REPO / "cluster.ryzen.example.yml")
    assert len(ryzen.nodes) == 4 and {n.hardware for n in ryzen.nodes} == {"amd-ryzen-ai-max"}
    assert ryzen.image.distro == "ubuntu-24.04" and ryzen.control.name != inv.control.name


def test_testbed_inventory_is_an_ordinary_inventory():
    data = yaml.safe_load((REPO / "testbed/cluster.yml").read_text())
    data["admin"]["ssh_public_key"] = str(REPO / "tests/data/test_key.pub")
    inv = inventory.parse(data, REPO / "testbed/cluster.yml")
    assert {n.hardware for n in inv.nodes} >= {"virtual-bios", "virtual-uefi"}


def _node(**kw):
    base = {"name": "node0", "mac": "52:54:00:aa:00:10", "ip": "192.168.1.10", "hardware": "virtual-bios"}
    return {**base, **kw}


def _control(**kw):
    base = {"name": "ctl", "compute_interface": "eth9", "address": "192.168.1.1", "subnet": "192.168.1.0/24",
            "dhcp_range": ["192.168.1.100", "192.168.1.199"]}
    return {**base, **kw}


# (case id, mutation of the valid data, fragment the one-line error must contain)
BAD = [
    ("mac-not-mac", lambda d: d["nodes"][0].update(mac="zz:00"), "nodes[0].mac: 'zz:00' is not a MAC address"),
    ("mac-multicast", lambda d: d["nodes"][0].update(mac="01:00:5e:00:00:01"), "is a multicast address"),
    ("ip-outside-subnet", lambda d: d["nodes"][0].update(ip="10.0.0.5"), "nodes[0].ip: 10.0.0.5 is outside"),
    ("ip-not-ip", lambda d: d["nodes"][0].update(ip="node0.lan"), "'node0.lan' is not an IPv4 address"),
    ("ip-in-dhcp-range", lambda d: d["nodes"][0].update(ip="192.168.1.150"), "inside the dynamic DHCP range"),
    ("ip-is-control", lambda d: d["nodes"][0].update(ip="192.168.1.1"),
     "192.168.1.1 is already used by the control node"),
    ("duplicate-mac", lambda d: d["nodes"][1].update(mac=d["nodes"][0]["mac"]),
     "nodes[1].mac: 52:54:00:aa:00:10 is already used by node 'node0'"),
    ("duplicate-name", lambda d: d["nodes"][1].update(name="node0"), "nodes[1].name: node0 is already used"),
    ("duplicate-ip", lambda d: d["nodes"][1].update(ip="192.168.1.10"), "nodes[1].ip: 192.168.1.10 is already"),
    ("unknown-hardware", lambda d: d["nodes"][0].update(hardware="nvidia-h100"),
     "unknown hardware profile 'nvidia-h100' (choose one of:"),
    ("bad-node-name", lambda d: d["nodes"][0].update(name="Node_0"), "'Node_0' is not a valid host name"),
    ("no-nodes", lambda d: d.update(nodes=[]), "nodes: must list at least one compute node"),
    ("unknown-field", lambda d: d["nodes"][0].update(macaddr="x"), "nodes[0]: unknown field 'macaddr'"),
    ("missing-mac", lambda d: d["nodes"][0].pop("mac"), "nodes[0].mac: is missing"),
    ("control-outside", lambda d: d.update(control=_control(address="10.1.1.1")),
     "control.address: 10.1.1.1 is outside the subnet"),
    ("bad-subnet", lambda d: d.update(control=_control(subnet="192.168.1.1/24")), "is not a network"),
    ("long-ifname", lambda d: d.update(control=_control(compute_interface="enx8cae4cf44e21xyz")),
     "is not a Linux interface name"),
    ("dhcp-range-reversed", lambda d: d.update(control=_control(dhcp_range=["192.168.1.199", "192.168.1.100"])),
     "must be an ascending range"),
    ("unknown-distro", lambda d: d["image"].update(distro="fedora-40"), "unknown distro profile 'fedora-40'"),
    ("bad-root-mode", lambda d: d["image"].update(root="iscsi"), "'iscsi' is not a root mode"),
    ("plain-password", lambda d: d["admin"].update(password_hash="admin"), "openssl passwd -6"),
    ("root-admin", lambda d: d["admin"].update(user="root"), "is not a valid non-root user name"),
    ("missing-key-file", lambda d: d["admin"].update(ssh_public_key="/nonexistent/id.pub"),
     "/nonexistent/id.pub does not exist (create one with `ssh-keygen -t ed25519`"),
    ("models-disk-not-dev", lambda d: d["nodes"][0].update(models_disk="nvme0n1"), "is not a device path"),
    ("not-a-mapping", lambda d: d["nodes"].__setitem__(0, "node0"), "nodes[0]: must be a mapping"),
]


@pytest.mark.parametrize("case,mutate,fragment", BAD, ids=[b[0] for b in BAD])
def test_bad_inventory_one_line_error(case, mutate, fragment, tmp_path, keypair):
    path = write_inventory(tmp_path, keypair)
    data = yaml.safe_load(path.read_text())
    mutate(data)
    path.write_text(yaml.safe_dump(data))
    # In-process: the message names field, value and fix.
    with pytest.raises(inventory.UserError) as err:
        inventory.load(path)
    assert fragment in err.value.line()
    # As a user sees it: one line on stderr, exit 1, no traceback, nothing on stdout.
    proc = run_cli("-i", str(path), "config", "show")
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: "), proc.stderr
    assert fragment in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("content,fragment", [
    ("nodes: [", "not valid YAML at line"),
    ("- just\n- a list\n", ": must be a mapping"),
])
def test_unparseable_inventory(tmp_path, content, fragment):
    path = tmp_path / "cluster.yml"
    path.write_text(content)
    proc = run_cli("-i", str(path), "config", "show")
    assert proc.returncode == 1 and fragment in proc.stderr and "Traceback" not in proc.stderr


def test_missing_inventory_names_the_fix(tmp_path):
    proc = run_cli("-i", str(tmp_path / "nope.yml"), "config", "show")
    assert proc.returncode == 1
    assert "not found (copy cluster.example.yml to cluster.yml" in proc.stderr


def test_inventory_from_env(inventory_file):
    proc = run_cli("config", "show", env={"ONEDOTZERO_INVENTORY": str(inventory_file)})
    assert proc.returncode == 0, proc.stderr
    shown = yaml.safe_load(proc.stdout)
    assert shown["nodes"][1]["mac"] == "52:54:00:aa:00:11" and shown["control"]["broadcast"] == "192.168.1.255"


def test_mac_normalised(tmp_path, keypair):
    nodes = [_node(mac="52-54-00-AA-00-10")]
    inv = inventory.load(write_inventory(tmp_path, keypair, nodes=nodes))
    assert inv.nodes[0].mac == "52:54:00:aa:00:10" and inv.nodes[0].mac_hyphen == "52-54-00-aa-00-10"


def test_ansible_reads_the_same_facts(inventory_file):
    env = {**os.environ, "ONEDOTZERO_INVENTORY": str(inventory_file)}
    out = subprocess.run([sys.executable, str(REPO / "playbooks/inventory.py"), "--list"], env=env,
                         capture_output=True, text=True, check=True).stdout
    data = json.loads(out)
    assert data["compute"]["hosts"] == ["node0", "node1"]
    assert data["_meta"]["hostvars"]["node1"]["ansible_host"] == "192.168.1.11"
    assert data["all"]["vars"]["odz"]["control"]["compute_interface"] == "eth9"
    ansible_inventory = shutil.which("ansible-inventory", path=os.path.dirname(sys.executable))
    listed = subprocess.run([ansible_inventory, "-i", str(REPO / "playbooks/inventory.py"), "--list"], env=env,
                            capture_output=True, text=True, check=True).stdout
    assert json.loads(listed)["_meta"]["hostvars"]["node0"]["odz_node_mac"] == "52:54:00:aa:00:10"


def test_bad_inventory_for_ansible(tmp_path):
    env = {**os.environ, "ONEDOTZERO_INVENTORY": str(tmp_path / "missing.yml")}
    proc = subprocess.run([sys.executable, str(REPO / "playbooks/inventory.py"), "--list"], env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 1 and "not found" in proc.stderr and "Traceback" not in proc.stderr


def test_parsed_objects_are_frozen(inventory_file):
    inv = inventory.load(inventory_file)
    with pytest.raises(AttributeError):
        inv.nodes[0].ip = "x"  # type: ignore[misc]
    assert copy.deepcopy(inv) == inv
