"""Stdlib only: lets `./cluster.py` and `playbooks/inventory.py` run with the project's venv interpreter."""

import os
import sys
from pathlib import Path

VENV_PYTHON = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "python"


def use_project_venv() -> None:
    """Re-exec under .venv/bin/python when started by another interpreter and the venv exists (`make setup`)."""
    if VENV_PYTHON.exists() and Path(sys.prefix).resolve() != VENV_PYTHON.parent.parent.resolve():
        os.execv(str(VENV_PYTHON), [str(VENV_PYTHON), *sys.argv])
