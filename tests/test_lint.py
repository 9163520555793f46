"""Linters run as tests: ruff (Python), yamllint (YAML), ansible-lint (playbooks, production profile)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

BIN = Path(sys.executable).parent


@pytest.mark.parametrize("argv,cwd", [
    ([str(BIN / "ruff"), "check", "."], REPO),
    ([str(BIN / "yamllint"), "-s", "."], REPO),
    ([str(BIN / "ansible-lint"), "--offline", "-q", "--profile", "production", "."], REPO / "playbooks"),
], ids=["ruff", "yamllint", "ansible-lint"])
def test_lint_clean(argv, cwd):
    env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
           "ANSIBLE_CONFIG": str(REPO / "playbooks/ansible.cfg")}
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
