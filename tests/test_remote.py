"""remote.py against a real sshd the test starts on loopback (own host key, port and user key)."""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
pytestmark = pytest.mark.skipif(not Path(SSHD).exists() or not shutil.which("rsync"), reason="needs sshd and rsync")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    d = tmp_path_factory.mktemp("sshd")
    for name in ("host_key", "user_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True)
    shutil.copy(d / "user_key.pub", d / "authorized_keys")
    port = _free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nAuthorizedKeysFile {d}/authorized_keys\n"
        f"PidFile {d}/sshd.pid\nUsePAM no\nStrictModes no\nPasswordAuthentication no\n"
        "PermitRootLogin prohibit-password\nLogLevel ERROR\n")
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation directory
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail(f"sshd did not start: {proc.stderr.read().decode()}")
    client = d / "ssh_config"
    client.write_text(
        f"Host control\n  HostName 127.0.0.1\n  Port {port}\n  User {getpass.getuser()}\n"
        f"  IdentityFile {d}/user_key\n  IdentitiesOnly yes\n  StrictHostKeyChecking no\n"
        "  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n"
        f"Host closed\n  HostName 127.0.0.1\n  Port {_free_port()}\n  User {getpass.getuser()}\n")
    yield client
    proc.terminate()  # ended by PID: the one process this fixture started
    proc.wait(10)


@pytest.fixture
def project(tmp_path):
    p = tmp_path / f"proj-{os.getpid()}-{time.monotonic_ns()}"
    (p / "src").mkdir(parents=True)
    (p / "src" / "a.txt").write_text("one\n")
    (p / "keep.txt").write_text("keep\n")
    (p / ".gitignore").write_text("build/\n*.log\n")
    (p / "build").mkdir()
    (p / "build" / "out.bin").write_text("artifact\n")
    (p / "debug.log").write_text("noise\n")
    yield p
    shutil.rmtree(Path.home() / "remote" / p.name, ignore_errors=True)


def remote(project: Path, ssh_config: Path, *cmd: str, host: str = "control", env=None):
    return subprocess.run([sys.executable, str(REPO / "remote.py"), "--host", host, "--ssh-config", str(ssh_config),
                           "--connect-timeout", "3", *cmd], cwd=project, capture_output=True, text=True,
                          timeout=60, env=env)


def test_mirror_add_change_delete(sshd, project):
    r = remote(project, sshd, "ls", "-A", ".", "src")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ".:\n.gitignore\nkeep.txt\nsrc\n\nsrc:\na.txt".split()  # ignored files not sent
    (project / "src" / "a.txt").write_text("two\n")
    (project / "src" / "b.txt").write_text("new\n")
    (project / "keep.txt").unlink()
    r = remote(project, sshd, "sh", "-c", "cat src/a.txt src/b.txt; ls")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["two", "new", "src"]
    local = subprocess.run(["ls", "-A", "-R", "--ignore=build", "--ignore=*.log"], cwd=project,
                           capture_output=True, text=True).stdout
    assert remote(project, sshd, "ls", "-A", "-R").stdout == local


def test_remote_only_ignored_files_survive(sshd, project):
    assert remote(project, sshd, "sh", "-c", "mkdir -p build && echo remote > build/cache").returncode == 0
    r = remote(project, sshd, "cat", "build/cache")
    assert r.stdout == "remote\n", "ignored paths on the remote are neither replaced nor deleted"


def test_runs_in_synced_dir_in_a_login_shell(sshd, project):
    r = remote(project, sshd, "bash", "-c", "pwd")
    assert r.stdout.strip() == str(Path.home() / "remote" / project.name)
    r = remote(project, sshd, "shopt", "login_shell")  # a bash builtin: reports the shell CMD runs in
    assert r.stdout.split() == ["login_shell", "on"]
    r = remote(project, sshd, "echo", "it's", "quoted; not split")
    assert r.stdout == "it's quoted; not split\n"


@pytest.mark.parametrize("code", [0, 3, 42])
def test_exit_code_propagates(sshd, project, code):
    assert remote(project, sshd, "sh", "-c", f"echo out; exit {code}").returncode == code


def test_unreachable_host_is_one_clear_line(sshd, project):
    r = remote(project, sshd, "true", host="closed")
    assert r.returncode == 2
    assert "cannot reach 'closed' over ssh" in r.stderr and "Traceback" not in r.stderr


def test_missing_rsync_is_named(sshd, project, tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("ssh", "git"):
        os.symlink(shutil.which(tool), bindir / tool)
    r = remote(project, sshd, "true", env={**os.environ, "PATH": str(bindir)})
    assert r.returncode == 2 and "rsync is not installed" in r.stderr


def test_no_command_is_a_usage_error(sshd, project):
    r = remote(project, sshd)
    assert r.returncode == 2 and "give a command to run" in r.stderr
