"""The live-image pipeline against a local HTTP server (loopback) with fixture files the test makes:
an ISO with the live-server layout, SHA256SUMS signed by a test key, and every way a download goes wrong."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shutil
import subprocess

import pytest
import yaml

from image import live, seed
from image.store import Store
from onedotzero import inventory
from onedotzero.errors import UserError
from tests.fixtures.fixture_http import make_keys, serve, sign

pytestmark = pytest.mark.skipif(not shutil.which("xorriso") or not shutil.which("gpgv"), reason="needs xorriso, gpgv")
ISO = "ubuntu-22.04.5-live-server-amd64.iso"


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    return make_keys(tmp_path_factory.mktemp("gnupg"))


@pytest.fixture(scope="module")
def iso(tmp_path_factory) -> bytes:
    d = tmp_path_factory.mktemp("isotree")
    (d / "casper").mkdir()
    (d / "casper/vmlinuz").write_bytes(b"KERNEL" + os.urandom(200_000))
    (d / "casper/initrd").write_bytes(b"INITRD" + os.urandom(600_000))
    (d / "casper/hwe-vmlinuz").write_bytes(b"HWEKERNEL" + os.urandom(1000))
    (d / "casper/hwe-initrd").write_bytes(b"HWEINITRD" + os.urandom(1000))
    (d / ".disk").mkdir()
    (d / ".disk/info").write_text("Ubuntu-Server 22.04.5 LTS (fixture)\n")
    out = d.parent / "fixture.iso"
    subprocess.run(["xorriso", "-as", "mkisofs", "-quiet", "-R", "-J", "-V", "FIXTURE", "-o", str(out), str(d)],
                   check=True, capture_output=True)
    return out.read_bytes()


@pytest.fixture
def server(keys, iso):
    sums = f"{hashlib.sha256(iso).hexdigest()} *{ISO}\n{'0' * 64} *other.iso\n".encode()
    srv = serve({ISO: iso, "SHA256SUMS": sums, "SHA256SUMS.gpg": sign(keys, sums, keys["pinned"])})
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def cfg(server, keys, inventory_file) -> live.LiveConfig:
    ubuntu = live.LiveConfig.from_inventory(inventory.load(inventory_file), "ubuntu-22.04")
    return dataclasses.replace(ubuntu, release_url=f"http://127.0.0.1:{server.server_address[1]}",
                               keyring=keys["keyring"], fingerprint=keys["pinned"])


def published(cfg) -> list:
    return Store(cfg.store).versions("live")


def test_fetch_verify_extract_publish(cfg, server, iso):
    v = live.build_live(cfg)
    m = v.manifest
    assert m.iso_sha256 == hashlib.sha256(iso).hexdigest() and m.iso == ISO
    assert (v.path / ISO).read_bytes() == iso
    assert (v.path / "vmlinuz").read_bytes().startswith(b"KERNEL")
    assert (v.path / "initrd").read_bytes().startswith(b"INITRD")
    assert m.boot.kernel == "hwe-vmlinuz" and m.boot.initrd == "hwe-initrd", "HWE pair preferred"
    assert "url={iso_url}" in m.boot.args and "autoinstall" not in m.boot.args
    assert published(cfg) == [v]
    # Again, with the ISO cached: only the small signed sums are fetched, and nothing new is published.
    server.requests.clear()
    again = live.build_live(cfg)
    assert again == v
    assert [p for p, _ in server.requests] == ["SHA256SUMS", "SHA256SUMS.gpg"]


def test_resumes_after_the_server_drops(cfg, server, iso):
    server.faults[ISO] = "drop-once"
    v = live.build_live(cfg)
    ranges = [r for p, r in server.requests if p == ISO]
    assert ranges[0] == "", ranges
    resumed_at = int(re.fullmatch(r"bytes=(\d+)-", ranges[1])[1])
    assert 0 < resumed_at <= len(iso) // 2, "resumed where the dropped transfer stopped"
    assert (v.path / ISO).read_bytes() == iso


def test_truncated_transfer_is_refused_and_kept_for_resume(cfg, server, iso):
    server.faults[ISO] = "truncate"
    with pytest.raises(UserError, match="kept failing .*re-run to resume"):
        live.build_live(cfg)
    assert published(cfg) == []
    part = cfg.downloads / f"{ISO}.part"
    assert 0 < part.stat().st_size < len(iso)
    server.faults.clear()
    v = live.build_live(cfg)  # the next run resumes from the part
    assert (v.path / ISO).read_bytes() == iso
    assert any(r.startswith("bytes=") for p, r in server.requests[-3:] if p == ISO)


def test_tampered_sum_is_refused(cfg, server, keys):
    sums = f"{'ab' * 32} *{ISO}\n".encode()
    server.files.update({"SHA256SUMS": sums, "SHA256SUMS.gpg": sign(keys, sums, keys["pinned"])})
    with pytest.raises(UserError, match="does not match SHA256SUMS"):
        live.build_live(cfg)
    assert published(cfg) == [] and not (cfg.downloads / ISO).exists()
    assert not (cfg.downloads / f"{ISO}.part").exists(), "a corrupt download is not kept"


def test_bad_signature_is_refused_before_the_download(cfg, server, keys):
    server.files["SHA256SUMS.gpg"] = sign(keys, b"something else\n", keys["pinned"])
    with pytest.raises(UserError, match="signature check failed"):
        live.build_live(cfg)
    assert ISO not in [p for p, _ in server.requests]
    assert published(cfg) == []


def test_signature_by_another_key_is_refused(cfg, server, keys):
    server.files["SHA256SUMS.gpg"] = sign(keys, server.files["SHA256SUMS"], keys["other"])
    with pytest.raises(UserError, match=f"signed by {keys['other']}, not by the pinned key"):
        live.build_live(cfg)


def test_http_error_is_one_clear_line(cfg, server):
    del server.files[ISO]
    with pytest.raises(UserError, match="failed: HTTP 404"):
        live.build_live(cfg)
    assert published(cfg) == []


def test_iso_without_casper_is_refused(cfg, server, keys, tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "README").write_text("not a live ISO\n")
    subprocess.run(["xorriso", "-as", "mkisofs", "-quiet", "-o", str(tmp_path / "p.iso"), str(plain)], check=True,
                   capture_output=True)
    data = (tmp_path / "p.iso").read_bytes()
    sums = f"{hashlib.sha256(data).hexdigest()} *{ISO}\n".encode()
    server.files.update({ISO: data, "SHA256SUMS": sums, "SHA256SUMS.gpg": sign(keys, sums, keys["pinned"])})
    with pytest.raises(UserError, match="has no casper/vmlinuz"):
        live.build_live(cfg)
    assert published(cfg) == []


def test_missing_keyring_names_the_package(cfg, tmp_path):
    with pytest.raises(UserError, match="apt-get install ubuntu-keyring"):
        live.build_live(dataclasses.replace(cfg, keyring=tmp_path / "nope.gpg"))


# --- seeds --------------------------------------------------------------------------------------

def test_live_seed_gives_admin_and_ssh_without_touching_the_disk(inventory_file):
    inv = inventory.load(inventory_file)
    text = seed.live_user_data(inv)
    assert text.startswith("#cloud-config\n")
    doc = yaml.safe_load(text)
    assert "autoinstall" not in doc, "top-level keys only: the live system, never the target disk"
    user = doc["users"][0]
    assert user["name"] == "admin" and user["passwd"] == inv.admin.password_hash
    assert user["ssh_authorized_keys"] == [inv.admin.ssh_public_key]
    assert doc["ssh_pwauth"] is False
    assert "admin\n" not in text.split("passwd:")[1].split("\n")[0], "no plain password"


def test_install_seed_is_a_complete_autoinstall_onto_the_pinned_disk(tmp_path, keypair):
    from conftest import write_inventory

    nodes = [{"name": "node0", "mac": "52:54:00:aa:00:10", "ip": "192.168.1.10", "hardware": "virtual-bios",
              "install_disk": {"serial": "WD-WX12345678"}},
             {"name": "node1", "mac": "52:54:00:aa:00:11", "ip": "192.168.1.11", "hardware": "virtual-uefi"}]
    inv = inventory.load(write_inventory(tmp_path, keypair, nodes=nodes))
    doc = yaml.safe_load(seed.install_user_data(inv, inv.node("node0")))
    ai = doc["autoinstall"]
    assert ai["version"] == 1 and ai["interactive-sections"] == []
    assert ai["storage"] == {"layout": {"name": "direct", "match": {"serial": "WD-WX12345678"}}}, \
        "the installer would otherwise take the largest disk: maybe the models SSD"
    assert ai["identity"] == {"hostname": "node0", "username": "admin", "realname": "onedotzero admin",
                              "password": inv.admin.password_hash}
    assert ai["ssh"] == {"install-server": True, "authorized-keys": [inv.admin.ssh_public_key], "allow-pw": False}
    files = seed.seed_files(inv)
    assert set(files) >= {"seed/node0/user-data", "seed/node0/meta-data", "seed/node0/install/user-data",
                          "seed/default/user-data"}
    assert "seed/node1/install/user-data" not in files and "seed/default/install/user-data" not in files


def test_missing_key_stops_with_ssh_keygen_hint(tmp_path, keypair):
    from conftest import write_inventory

    path = write_inventory(tmp_path, keypair)
    (tmp_path / "id_ed25519.pub").unlink()
    with pytest.raises(UserError, match=r"ssh-keygen -t ed25519"):
        inventory.load(path)
