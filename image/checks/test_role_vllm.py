"""vLLM on a built tree: the pinned environment runs on the image's own Python and imports, the launcher and the
rank's unit are in place, and nothing of the engine is in the system's site-packages."""

import json


def test_the_environment_imports_vllm_on_the_images_python(host, expect):
    venv = expect["vllm_install_dir"]
    current = host.file(f"{venv.rsplit('/', 1)[0]}/current")
    assert current.is_symlink and current.linked_to == venv
    env = " ".join(f"{k}={v}" for k, v in expect["vllm_env"].items())
    out = host.check_output(f"{env} {venv}/bin/python -c 'import json, sys, vllm, torch; "
                            f"print(json.dumps([vllm.__version__, torch.__version__, sys.base_prefix]))'")
    version, _torch, base = json.loads(out.splitlines()[-1])
    assert version == expect["vllm_version"]
    assert base == "/usr", "the venv runs on the distribution's Python"
    info = json.loads(host.file(f"{venv}/BUILD-INFO").content_string)
    assert info["backend"] == expect["vllm_backend"]


def test_the_launcher_and_the_rank_unit_are_installed(host, expect):
    launcher = host.file(f"{expect['vllm_install_dir']}/bin/onedotzero-vllm")
    assert launcher.is_file and launcher.mode & 0o111
    unit = host.file("/etc/systemd/system/onedotzero-vllm.service").content_string
    assert "EnvironmentFile=/etc/onedotzero/vllm.env" in unit and "--node-rank ${RANK}" in unit
    assert host.user("onedotzero-llm").shell == "/usr/sbin/nologin"


def test_the_system_python_has_no_engine(host):
    assert host.run("python3 -c 'import vllm'").rc != 0
    assert host.run("python3 -c 'import torch'").rc != 0
