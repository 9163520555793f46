"""`python -m inference.lock ENGINE BACKEND --distro NAME`: pin a Python engine's wheels for an image's Python.

Runs where PyPI and the backend's indexes are reachable (the control node, or a machine like it). pip resolves
the backend's requirements for the distribution's Python and C library (not the host's), downloads every wheel,
and the lock lists each one, except those the engine's file excludes, with its SHA-256:
inference/engines/<engine>-<backend>-py<version>.lock. The image build installs exactly that list, offline,
with --no-deps --require-hashes (inference/artifacts.py).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from packaging.utils import canonicalize_name, parse_wheel_filename

from inference import artifacts
from onedotzero import profiles
from onedotzero.errors import UserError


def lock_text(engine: artifacts.PythonEnv, distro: profiles.DistroProfile, wheels: list[Path]) -> str:
    """The lock file: a header saying where it came from, then name==version --hash=sha256:… per wheel, sorted."""
    skip = {canonicalize_name(n) for n in engine.exclude}
    lines = []
    for wheel in wheels:
        name, version, _, _ = parse_wheel_filename(wheel.name)
        if name not in skip:
            lines.append(f"{name}=={version} --hash=sha256:{artifacts._sha256(wheel)}")
    head = [f"# {engine.engine} {engine.version} ({engine.backend}) for Python {distro.python}, glibc {distro.glibc} "
            f"({distro.name}): every wheel, pinned.",
            f"# Made by `python -m inference.lock {engine.engine} {engine.backend} --distro {distro.name}` from "
            f"{', '.join(engine.requirements)}; left out: {', '.join(engine.exclude) or 'nothing'}."]
    return "\n".join([*head, *sorted(lines)]) + "\n"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("engine")
    p.add_argument("backend")
    p.add_argument("--distro", default="debian-12", help="the image's distribution profile (its Python, its glibc)")
    a = p.parse_args(argv)
    try:
        engine = artifacts.engine(a.engine, a.backend)
        if not isinstance(engine, artifacts.PythonEnv):
            raise UserError(f"{a.engine} is not a Python engine", "only kind: python engines have lock files")
        distro = profiles.distro(a.distro)
        with tempfile.TemporaryDirectory() as tmp:
            argv = [sys.executable, "-m", "pip", "download", "-d", tmp, *artifacts.pip_target(distro),
                    *artifacts.index_args(engine), *engine.requirements]
            if subprocess.run(argv).returncode != 0:
                raise UserError("pip could not resolve or download the requirements (above)",
                                f"check the network and the indexes in {artifacts.ENGINES_DIR / a.engine}.yml")
            text = lock_text(engine, distro, sorted(Path(tmp).glob("*.whl")))
        out = engine.lock_path(distro)
        out.write_text(text)
        print(f"{out}: {text.count('--hash=')} wheels")
        return 0
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
