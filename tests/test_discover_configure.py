"""`compute discover` and the status gate of `compute configure`, without nodes."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

import cluster
from onedotzero import discover, inventory, power
from onedotzero.errors import UserError


def test_discover_lists_only_unknown_machines(inventory_file, tmp_path, monkeypatch):
    inv = inventory.load(inventory_file)
    lease_file = tmp_path / "dnsmasq.leases"
    lease_file.write_text(
        "1798000000 52:54:00:aa:00:10 192.168.1.10 node0 *\n"      # known (node0)
        "1798000000 aa:bb:cc:00:00:01 192.168.1.150 strange *\n"   # unknown, with a DHCP hostname
        "garbage line\n")
    monkeypatch.setattr(discover, "neighbours", lambda iface: [
        discover.Seen("aa:bb:cc:00:00:02", "192.168.1.151", "arp"),
        discover.Seen("aa:bb:cc:00:00:01", "192.168.1.150", "arp"),  # same machine, seen twice
        discover.Seen("aa:bb:cc:00:00:03", "10.0.0.9", "arp"),       # not on the cluster subnet
    ])
    found = discover.unknown_machines(inv, lease_file)
    assert [s.mac for s in found] == ["aa:bb:cc:00:00:01", "aa:bb:cc:00:00:02"]
    entries = [discover.inventory_entry(inv, s, i) for i, s in enumerate(found)]
    assert entries[0] == '  - {name: strange, mac: "aa:bb:cc:00:00:01", ip: 192.168.1.2, hardware: CHOOSE}' \
                         "  # seen by lease at 192.168.1.150"
    assert 'name: node3, mac: "aa:bb:cc:00:00:02", ip: 192.168.1.3' in entries[1]  # a unique suggestion


def test_configure_refuses_while_a_node_is_down(inventory_file, monkeypatch):
    def fake_status(inv, nodes):
        return [power.NodeStatus("node0", True, "golden", "V"),
                power.NodeStatus("node1", False, error="Connection timed out")]

    ran = []
    monkeypatch.setattr(power, "status", fake_status)
    monkeypatch.setattr("onedotzero.ansible.playbook", lambda *a, **k: ran.append(a) or [])
    result = CliRunner().invoke(cluster.cli, ["-i", str(inventory_file), "compute", "configure"])
    assert isinstance(result.exception, UserError)
    assert "not configuring: not OK: node1 (Connection timed out)" in str(result.exception)
    assert ran == [], "no playbook runs while a node is not OK"


@pytest.mark.parametrize("names", [(), ("node0",)])
def test_configure_runs_the_playbook_on_the_selected_nodes_then_their_checks(inventory_file, monkeypatch, names):
    from onedotzero import acceptance, ansible, compute

    monkeypatch.setattr(power, "status", lambda inv, nodes: [power.NodeStatus(n.name, True) for n in nodes])
    calls, checked = [], []
    monkeypatch.setattr(ansible, "playbook", lambda inv, name, limit, netns=None: calls.append((name, limit)) or
                        [ansible.HostRecap(h, 9, 0, 0, 0) for h in limit])
    monkeypatch.setattr(compute, "check", lambda inv, nodes: checked.append([n.name for n in nodes]) or [
        acceptance.NodeCheck(n.name, [acceptance.Item("kernel", True, "6.1.0", ">= 5.10")]) for n in nodes])
    result = CliRunner().invoke(cluster.cli, ["-i", str(inventory_file), "compute", "configure", *names])
    assert result.exit_code == 0, result.output
    expected = list(names) or ["node0", "node1"]
    assert calls == [("compute.yml", expected)] and checked == [expected], "the playbook, then the checks"
    assert result.output.splitlines()[:len(expected)] == [f"{h}: ok=9 changed=0" for h in expected]
    assert result.output.splitlines()[len(expected)].split() == ["NODE", "KERNEL", "OPENCL", "VULKAN", "RENDER",
                                                                 "RESULT"]
