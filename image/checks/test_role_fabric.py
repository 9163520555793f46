"""The fabric role's promises on a built tree (images whose nodes have clustering links)."""


def test_every_node_of_the_image_has_its_link_files(host, expect):
    for net in expect["fabric_networks"]:
        f = host.file(f"/etc/systemd/network/{net['file']}")
        assert f.exists, net["file"]
        assert f.contains(f"^Host={net['host']}$") and f.contains(f"^Address={net['address']}$")
        assert f.contains("^RequiredForOnline=no$"), "a peer that is down never holds up boot"
        for key, value in net["match"].items():
            assert f.contains(f"^{key}={value}$")
    for addr in expect["fabric_addresses"]:
        assert host.file(f"/etc/systemd/network/{addr['file']}").contains(f"^Address={addr['address']}/32$")


def test_fabric_names_resolve_everywhere(host, expect):
    hosts = host.file("/etc/hosts").content_string
    for h in expect["fabric_hosts"]:
        assert f"{h['address']} {h['name']}" in hosts


def test_networkd_runs_and_never_waits(host):
    wants = "/etc/systemd/system/multi-user.target.wants"
    assert host.file(f"{wants}/systemd-networkd.service").exists
    assert not host.file("/etc/systemd/system/network-online.target.wants/systemd-networkd-wait-online.service").exists


def test_usb4_modules_and_tools(host):
    conf = host.file("/etc/modules-load.d/onedotzero-fabric.conf")
    assert conf.contains("^thunderbolt$") and conf.contains("^thunderbolt_net$")
    assert host.package("iperf3").is_installed and host.exists("ping")
