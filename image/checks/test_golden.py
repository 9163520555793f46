"""What a golden image promises, checked on the built tree before it is published.

Run by image/golden.py: pytest --connection=chroot --hosts=<rootfs> image/checks
"""

import re


def test_admin_user_can_sudo(host, expect):
    user = host.user(expect["base_admin_user"])
    assert user.exists
    assert user.home == f"/home/{expect['base_admin_user']}"
    assert "sudo" in user.groups
    assert host.file("/etc/sudoers.d/onedotzero").contains(f"^{expect['base_admin_user']} ALL=")


def test_admin_password_is_hashed_or_locked(host, expect):
    shadow = host.file("/etc/shadow").content_string
    field = next(line.split(":")[1] for line in shadow.splitlines() if line.startswith(expect["base_admin_user"] + ":"))
    assert field == "!" or field.startswith("$"), "password must be a crypt hash or locked"


def test_admin_key_authorized(host, expect):
    keys = host.file(f"/home/{expect['base_admin_user']}/.ssh/authorized_keys")
    assert keys.exists and keys.mode == 0o600 and keys.user == expect["base_admin_user"]
    assert expect["base_admin_ssh_key"] in keys.content_string


def test_sshd_enabled_with_keys_only(host):
    assert host.file("/etc/systemd/system/multi-user.target.wants/ssh.service").exists
    conf = host.file("/etc/ssh/sshd_config.d/onedotzero.conf")
    assert conf.contains("^PasswordAuthentication no")
    assert conf.contains("^PermitRootLogin no")


def test_host_keys_made_at_boot_not_baked_in(host):
    assert not host.run("ls /etc/ssh/ | grep ssh_host_").stdout.strip()
    assert host.file("/etc/systemd/system/ssh.service.requires/onedotzero-ssh-hostkeys.service").exists


def test_no_private_keys_or_build_secrets(host):
    found = host.run(
        "grep -rlE 'BEGIN (OPENSSH|RSA|EC|DSA)? ?PRIVATE KEY' /etc /root /home /var 2>/dev/null || true"
    ).stdout.split()
    assert found == []
    assert not host.file("/usr/sbin/policy-rc.d").exists
    assert not host.file("/etc/resolv.conf.onedotzero-build").exists
    assert not host.file("/root/.ansible").exists


def test_kernel_and_initrd_present(host):
    kernels = host.run("ls /boot/vmlinuz-*").stdout.split()
    assert kernels
    for k in kernels:
        assert host.file(k.replace("vmlinuz-", "initrd.img-")).exists


def test_initramfs_netboots_with_live_boot(host):
    initrd = host.run("ls /boot/initrd.img-* | tail -1").stdout.strip()
    listing = host.run(f"lsinitramfs {initrd}")
    assert listing.rc == 0
    assert re.search(r"lib/live/boot/9990-mount-nfs.sh", listing.stdout)
    assert re.search(r"/(virtio_net|e1000e?)\.ko", listing.stdout), "NIC drivers missing: MODULES=netboot?"
    assert host.file("/etc/initramfs-tools/conf.d/onedotzero.conf").contains("^MODULES=netboot")


def test_machine_id_empty(host):
    assert host.file("/etc/machine-id").size == 0
    assert not host.file("/var/lib/dbus/machine-id").exists


def test_hostname_comes_from_dhcp(host):
    assert host.file("/etc/hostname").content_string.strip() == ""


def test_models_in_fstab(host, expect):
    fstab = host.file("/etc/fstab").content_string
    line = next(ln for ln in fstab.splitlines() if " /models " in ln)
    assert line.startswith(f"LABEL={expect['netroot_models_label']} ")
    assert "nofail" in line
    assert host.file("/models").is_directory


def test_wake_on_lan_link(host, expect):
    link = host.file("/etc/systemd/network/50-onedotzero-wol.link")
    assert link.contains("^WakeOnLan=magic")
    for mac in expect["wol_macs"]:
        assert mac in link.content_string


def test_release_stamp(host, expect):
    stamp = host.file("/etc/onedotzero-release")
    assert stamp.contains(f"^ONEDOTZERO_VERSION={expect['version']}$")
    assert stamp.contains("^ONEDOTZERO_IMAGE=golden$")


def test_no_second_dhcp_client_on_the_boot_nic(host):
    # live-boot configures the boot NIC (ifupdown); a second DHCP client would fight over it. systemd-networkd
    # may run for the fabric's links, matched by their own files, and never does DHCP.
    assert host.package("ifupdown").is_installed
    for path in host.run("ls /etc/systemd/network/*.network 2>/dev/null").stdout.split():
        assert "onedotzero-fabric" in path, f"{path}: networkd would manage an interface besides the fabric's"
        assert not host.file(path).contains("^DHCP=")


def test_shutdown_leaves_the_boot_nic_up(host):
    """The root is on NFS over the boot NIC: ifdown at shutdown would hang every reboot (role netroot)."""
    for unit in ("ifup@.service", "networking.service"):
        drop_in = host.file(f"/etc/systemd/system/{unit}.d/onedotzero-netroot.conf")
        assert drop_in.contains("^ExecStop=$"), f"{unit} would run ifdown on the boot NIC at shutdown"


def test_emptied_package_lists_do_not_look_fresh(host):
    """Ansible's apt cache_valid_time trusts the update stamp, else the lists directory's mtime: either
    looking recent makes a booted node skip `apt update` and find no packages at all."""
    assert not host.file("/var/lib/apt/periodic/update-success-stamp").exists
    assert host.check_output("stat -c %Y /var/lib/apt/lists") == "0"
