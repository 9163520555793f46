"""Where the project's own data lives (profiles, playbooks, templates), independent of the cwd."""

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HARDWARE_DIR = REPO / "hardware"
DISTRO_DIR = REPO / "image" / "distros"
PLAYBOOKS_DIR = REPO / "playbooks"
TEMPLATES_DIR = REPO / "netboot" / "templates"
DEFAULT_INVENTORY = REPO / "cluster.yml"
ENV_INVENTORY = "ONEDOTZERO_INVENTORY"
