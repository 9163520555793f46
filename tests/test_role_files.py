"""Golden files of what the roles write, rendered the way Ansible's template module renders them (trim_blocks,
trailing newline kept) from the variables onedotzero.roles.role_vars gives them:
  fabric     the 2-node link of the real cluster and a routed 4-node ring (every node's files)
  intel_arc  the apt source (deb822, signed-by its own keyring) and the packages, per distribution release
  amd_gpu    the ROCm sources and packages (noble)
The vendor repositories are out of reach here: these files, lint and the image gate are what can be checked.
"""

from __future__ import annotations

import pytest
import yaml
from conftest import REPO
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from test_render import check_golden

from onedotzero import inventory, roles

ROLES = REPO / "playbooks" / "roles"


def render(role: str, template: str, **variables) -> str:
    env = Environment(loader=FileSystemLoader(ROLES / role / "templates"), trim_blocks=True,
                      keep_trailing_newline=True, undefined=StrictUndefined)
    return env.get_template(template).render(**variables)


def role_data(role: str, release: str | None = None) -> dict:
    data = yaml.safe_load((ROLES / role / "defaults/main.yml").read_text())
    if release:
        data.update(yaml.safe_load((ROLES / role / "vars" / f"{release}.yml").read_text()))
    return data


def ring_inventory(tmp_path) -> inventory.Inventory:
    data = yaml.safe_load((REPO / "testbed/ring.yml").read_text())
    data["admin"]["ssh_public_key"] = str(REPO / "tests/data/test_key.pub")
    path = tmp_path / "ring.yml"
    path.write_text(yaml.safe_dump(data))
    return inventory.load(path)


def fabric_files(inv: inventory.Inventory) -> dict[str, str]:
    files = {}
    for spec, nodes in roles.images(inv).items():
        if "fabric" not in spec.roles:
            continue
        v = {**role_data("fabric"), **roles.role_vars(inv, spec, nodes)}
        for item in v["fabric_networks"]:
            files[item["file"]] = render("fabric", "fabric.network.j2", item=item, **v)
        for item in v["fabric_addresses"]:
            files[item["file"]] = render("fabric", "fabric-address.network.j2", item=item, **v)
    return files


@pytest.mark.parametrize("case", ["two-nodes", "ring"])
def test_fabric_files(case, tmp_path):
    inv = inventory.load(REPO / "tests/data/inventory.yml") if case == "two-nodes" else ring_inventory(tmp_path)
    files = fabric_files(inv)
    assert len(files) == 2 * len(inv.fabric.links) + len(inv.fabric.addresses), "one per link end, one per node"
    for name, text in files.items():
        check_golden(f"roles/fabric/{case}/{name}", text)


def test_ring_routes_go_round_the_ring(tmp_path):
    inv = ring_inventory(tmp_path)
    files = fabric_files(inv)
    # ring0 reaches ring2 (two hops) through ring1, the first of its two equal paths (links in inventory order)
    via_ring1 = files["60-onedotzero-fabric-ring0-ring0-ring1.network"]
    assert "# ring2-fabric\nDestination=10.20.0.252/32\nGateway=10.20.0.1\n" in via_ring1
    assert "# ring2-fabric" not in files["60-onedotzero-fabric-ring0-ring3-ring0.network"]


@pytest.mark.parametrize("role,release,repos", [
    ("intel_arc", "jammy", "intel_arc_repo"), ("intel_arc", "noble", "intel_arc_repo"),
    ("amd_gpu", "noble", "amd_gpu_rocm_repos"),
])
def test_vendor_sources_and_packages(role, release, repos):
    data = role_data(role, release)
    entries = data[repos] if isinstance(data[repos], list) else [data[repos]]
    pkg = role_data("packages")
    for repo in entries:
        text = render("packages", "repo.sources.j2", packages_repo=repo, packages_for=role,
                      packages_keyring_dir=pkg["packages_keyring_dir"])
        check_golden(f"roles/{role}/{release}/{repo['name']}.sources", text)
        assert f"Signed-By: /etc/apt/keyrings/{repo['name']}.asc" in text, "trusted through its own key only"
        assert all(len(fp) == 40 for fp in repo["key_fingerprints"]), "full fingerprints are pinned"
    lists = {k: v for k, v in data.items() if k.endswith("packages")}
    check_golden(f"roles/{role}/{release}/packages.yml", yaml.safe_dump(lists, sort_keys=True))


def test_every_release_a_gpu_profile_can_get_has_vars():
    """Distribution differences live in vars/<release>.yml: a profile's distribution must have one."""
    from onedotzero import profiles

    for name in profiles.names(REPO / "hardware"):
        hw = profiles.hardware(name)
        for role in hw.roles:
            if (ROLES / role / "vars").is_dir():
                distros = [hw.distro] if hw.distro else ["ubuntu-22.04", "ubuntu-24.04"]
                for d in distros:
                    release = profiles.distro(d).suite
                    if role == "amd_gpu" and release == "jammy":
                        continue  # gfx1151 needs a newer kernel than 22.04 has: the profile pins ubuntu-24.04
                    assert (ROLES / role / "vars" / f"{release}.yml").is_file(), (name, role, release)
