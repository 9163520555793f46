"""Preflight parsing and decisions without a network; the real checks run in test_control_node.py."""

from __future__ import annotations

from netboot import preflight
from onedotzero import inventory

SS = """\
udp   UNCONN 0      0      0.0.0.0%enx8cae4cf44e21:67       0.0.0.0:*    users:(("dnsmasq",pid=812,fd=4))
udp   UNCONN 0      0            0.0.0.0:69         0.0.0.0:*    users:(("in.tftpd",pid=900,fd=5))
tcp   LISTEN 0      511          0.0.0.0:80         0.0.0.0:*    users:(("apache2",pid=1234,fd=4))
tcp   LISTEN 0      511        127.0.0.1:8080       0.0.0.0:*    users:(("python3",pid=77,fd=3))
tcp   LISTEN 0      64           0.0.0.0:2049       0.0.0.0:*
tcp   LISTEN 0      128         10.0.0.5:111        0.0.0.0:*    users:(("portmap",pid=5,fd=3))
tcp   LISTEN 0      511             [::]:80            [::]:*    users:(("nginx",pid=99,fd=7))
"""


def test_parse_ss():
    ls = preflight.parse_ss(SS)
    assert ls[0] == preflight.Listener("udp", "*", "enx8cae4cf44e21", 67, "dnsmasq", 812)
    assert ls[2].process == "apache2" and ls[2].port == 80 and ls[2].address == "*"
    assert ls[4] == preflight.Listener("tcp", "*", "", 2049, "", None)
    assert ls[6].address == "*" and ls[6].process == "nginx"


def test_port_problems_name_the_process():
    inv = inventory.load(__import__("conftest").REPO / "tests/data/inventory.yml")
    problems = preflight.port_problems(inv, preflight.parse_ss(SS))
    assert problems == [
        "port 69/udp (TFTP) on enx8cae4cf44e21 is taken by in.tftpd (pid 900): stop it, or bind it to another "
        "interface",
        "port 80/tcp (HTTP) on enx8cae4cf44e21 is taken by apache2 (pid 1234): stop it, or bind it to another "
        "interface",
    ]  # dnsmasq, nginx and the kernel's nfsd are ours; 8080 and 10.0.0.5:111 are not in the way
