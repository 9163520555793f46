"""`cluster.py models push` and `models status`: a stored model onto the nodes' /models, and what each holds.

Runs on the control node; rsync over SSH does the moving, the nodes check every file against the manifest.
  check     each node's /models is a mounted disk with room for what it still lacks (else refused, with numbers)
  plan      every node fed by the control node over its 1 GbE link, or (with a fabric) one node fed by the control
            node and the others by it over the fabric: the faster estimate wins, and is said
  move      rsync into /models/.incoming/<name>/<version>/ (resumable: an interrupted push continues from what
            arrived), peers over the fabric with the control node's key forwarded for that one command
  verify    sha256sum -c on the node; a file that does not match is deleted and copied again, once
  publish   one rename to /models/<name>/<version>/: a partial copy is never visible under the model's name
A node that already holds the verified version moves no bytes (its files are checked where they are).
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from fabric.topology import fabric_name
from models.store import MANIFEST, Model, human_size
from onedotzero import profiles, ssh
from onedotzero.errors import UserError
from onedotzero.inventory import Inventory, Node
from onedotzero.log import log

ROOT = "/models"
INCOMING = f"{ROOT}/.incoming"
SUMS = ".onedotzero-sha256sums"  # beside the files on a node: what `sha256sum -c` checks
LAN_KIND = "gbe"  # the control node's link to the switch, for the plan's estimate
PROGRESS_RE = re.compile(r"^\s*([\d,]+)\s+\d+%")


def final_dir(model: Model) -> str:
    return f"{ROOT}/{model.name}/{model.version}"


def incoming_dir(model: Model) -> str:
    return f"{INCOMING}/{model.name}/{model.version}"


def sums_text(model: Model) -> str:
    return "".join(f"{f.sha256}  files/{f.path}\n" for f in model.manifest.files)


@dataclass
class NodeState:
    node: str
    present: str = ""  # "verified" when the final directory passes its checksums, else why not
    partial_bytes: int = 0
    free_bytes: int = 0
    mount: str = ""
    error: str = ""


def probe(inv: Inventory, node: Node, model: Model) -> NodeState:
    """On node: is /models a mounted disk, how much is free, what of this version is there (checked)."""
    final, incoming = final_dir(model), incoming_dir(model)
    script = (f"command -v rsync >/dev/null || echo NO-RSYNC; "
              f"findmnt -no SOURCE,FSTYPE {ROOT} || echo NOT-MOUNTED; df -B1 --output=avail {ROOT} | tail -1; "
              f"du -sb {incoming} 2>/dev/null | cut -f1 || true; echo '### present'; "
              # (no pipe into tail before the test: a pipeline's status is its last command's)
              f"if [ -d {final} ]; then cd {final} && if out=$(sudo -n sha256sum --quiet -c {SUMS} 2>&1); "
              f"then echo VERIFIED; else printf '%s\\n' \"$out\" | tail -5; fi; fi")
    r = ssh.run(inv, node, script, timeout=3600)
    st = NodeState(node.name)
    if not r.ok and not r.stdout:
        st.error = r.reason()
        return st
    head, _, present = r.stdout.partition("### present\n")
    lines = head.strip().splitlines()
    if lines and lines[0] == "NO-RSYNC":
        st.error = "rsync is not installed (the base role installs it: rebuild the image or `compute configure`)"
        return st
    st.mount = lines[0] if lines else ""
    st.free_bytes = int(lines[1]) if len(lines) > 1 and lines[1].strip().isdigit() else 0
    st.partial_bytes = int(lines[2]) if len(lines) > 2 and lines[2].strip().isdigit() else 0
    if "VERIFIED" in present:
        st.present = "verified"
    elif present.strip():
        st.present = f"damaged: {present.strip().splitlines()[0]}"
    return st


def refusals(states: list[NodeState], model: Model) -> list[str]:
    out = []
    total = model.manifest.total_size
    for st in states:
        if st.error:
            out.append(f"{st.node}: unreachable: {st.error}")
        elif st.mount == "NOT-MOUNTED" or not st.mount:
            out.append(f"{st.node}: {ROOT} is not a mounted disk (the weights would land in the RAM overlay): "
                       "give the node its models disk (inventory models_disk, `compute configure`)")
        elif st.present != "verified" and st.free_bytes + st.partial_bytes < total:
            out.append(f"{st.node}: {ROOT} has {human_size(st.free_bytes)} free, the model needs {human_size(total)}"
                       f" ({human_size(st.partial_bytes)} of it already there): free space (`models gc` there)")
    return out


@dataclass(frozen=True)
class Transfer:
    source: str  # "control" or a node that has the model
    target: str
    over: str  # "lan" or "fabric"


@dataclass(frozen=True)
class Plan:
    name: str  # "control-only" or "peer"
    transfers: tuple[Transfer, ...]
    seconds: float  # the estimate that chose it
    other_seconds: float | None = None  # the other plan's estimate

    def describe(self) -> str:
        steps = "; ".join(f"{t.source} -> {t.target} ({t.over})" for t in self.transfers) or "nothing to move"
        other = f" (control-only would take ~{self.other_seconds:.1f}s)" if self.other_seconds is not None else ""
        return f"plan {self.name}: {steps}; estimate ~{self.seconds:.1f}s{other}"


PLANS = ("auto", "control-only", "peer")


def choose(inv: Inventory, targets: list[str], size: int, want: str = "auto") -> Plan:
    """The faster of: every target fed by the control node over the LAN (which they share), or one fed over the
    LAN and the rest by it over the fabric (in turn, each at its link's rate). Nominal rates from hardware/links.
    want: "auto" (the faster), or the plan to use whatever the estimate (to compare them)."""
    if not targets:
        return Plan("none", (), 0.0)
    lan = profiles.link_kind(LAN_KIND).rate_gbit * 1e9 / 8
    control_only = Plan("control-only", tuple(Transfer("control", t, "lan") for t in targets),
                        size * len(targets) / lan)
    fab = inv.fabric
    if want == "control-only":
        return control_only
    if fab is None or len(targets) < 2 or any(fab.address(t) is None for t in targets):
        if want == "peer":
            raise UserError("models push --plan peer needs two or more targets on the fabric",
                            "name fabric nodes, or use --plan auto")
        return control_only
    seed, rest = targets[0], targets[1:]
    fabric_rate = min(profiles.link_kind(lk.kind).rate_gbit for lk in fab.links) * 1e9 / 8
    peer_seconds = size / lan + size * len(rest) / fabric_rate
    if peer_seconds >= control_only.seconds and want == "auto":
        return Plan("control-only", control_only.transfers, control_only.seconds, None)
    moves = (Transfer("control", seed, "lan"), *(Transfer(seed, t, "fabric") for t in rest))
    return Plan("peer", moves, peer_seconds, control_only.seconds)


@contextlib.contextmanager
def agent(inv: Inventory) -> Iterator[dict[str, str]]:
    """A private ssh-agent holding the inventory's key, for one push: nodes feeding peers authenticate with it
    (forwarded for those commands only); no key is ever copied to a node."""
    key = inv.admin.ssh_public_key_path.with_suffix("")
    with tempfile.TemporaryDirectory(prefix="odz-agent-") as tmp:
        sock = str(Path(tmp) / "agent.sock")
        proc = subprocess.Popen(["ssh-agent", "-D", "-a", sock], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            for _ in range(50):
                if Path(sock).exists():
                    break
                time.sleep(0.05)
            env = {**os.environ, "SSH_AUTH_SOCK": sock}
            if key.is_file():
                subprocess.run(["ssh-add", "-q", str(key)], env=env, check=True, capture_output=True)
            yield env
        finally:
            proc.terminate()
            proc.wait(10)


def _rsync(argv: list[str], bar: tqdm, env: dict | None = None) -> tuple[int, str, int]:
    """Run rsync with --info=progress2 and move the bar with it; (exit code, last lines of output, bytes moved)."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True,
                            errors="replace")
    tail: list[str] = []
    assert proc.stdout is not None
    buf, last = "", 0
    while chunk := proc.stdout.read(256):
        buf += chunk
        *parts, buf = re.split(r"[\r\n]", buf)
        for part in parts:
            m = PROGRESS_RE.match(part)
            if m:
                done = int(m[1].replace(",", ""))
                bar.update(max(0, done - last))
                last = max(last, done)
            elif part.strip():
                tail = (tail + [part.strip()])[-8:]
    return proc.wait(), "\n".join(tail), last


# --chmod: every engine reads the model as its own user, and a node feeds its peers as the admin; a store file
# hard-linked from a 0600 original (safetensors' writer makes them so) would otherwise be readable by root alone.
RSYNC = ["rsync", "-a", "--chmod=D755,F644", "--partial", "--info=progress2", "--no-inc-recursive",
         "--rsync-path=sudo -n rsync"]


def rsync_opts(inv: Inventory) -> list[str]:
    return [*RSYNC, "-e", shlex.join(ssh.options(inv))]


@dataclass
class Moved:
    node: str
    source: str
    seconds: float = 0.0
    bytes: int = 0
    verified: bool = False
    recopied: list[str] = field(default_factory=list)
    error: str = ""


def _verify_and_publish(inv: Inventory, node: Node, model: Model) -> tuple[bool, list[str], str]:
    """On node: check the incoming copy; good -> one rename into place. Returns (ok, bad files, detail)."""
    incoming, final = incoming_dir(model), final_dir(model)
    script = (f"cd {incoming} && sudo -n sha256sum --quiet -c {SUMS} 2>&1; rc=$?; "
              f"if [ $rc = 0 ]; then sudo -n mkdir -p {ROOT}/{model.name} && sudo -n rm -rf {final} "
              f"&& sudo -n mv {incoming} {final} && echo PUBLISHED; fi")
    r = ssh.run(inv, node, script, timeout=3600)
    if "PUBLISHED" in r.stdout:
        return True, [], ""
    bad = sorted({m[1] for m in re.finditer(r"^(\S+): FAILED", r.stdout, re.M)})
    return False, bad, (r.stdout + r.stderr).strip()[-300:]


def _stage(inv: Inventory, node: Node, model: Model) -> None:
    """On node: the incoming directory, seeded from a damaged final copy (its good files need not move again),
    with the checksum list."""
    incoming, final = incoming_dir(model), final_dir(model)
    r = ssh.run(inv, node, f"sudo -n mkdir -p {incoming} && if [ -d {final} ]; then sudo -n cp -al {final}/. "
                           f"{incoming}/ 2>/dev/null; sudo -n rm -rf {final}; fi; "
                           f"sudo -n tee {incoming}/{SUMS} >/dev/null", input=sums_text(model))
    if not r.ok:
        raise UserError(f"{node.name}: cannot prepare {incoming}: {r.reason()}")


def move(inv: Inventory, model: Model, t: Transfer, bar: tqdm, env: dict) -> Moved:
    node = inv.node(t.target)
    result = Moved(t.target, f"{t.source} ({t.over})")
    start = time.monotonic()
    _stage(inv, node, model)
    moved = 0
    for attempt in (1, 2):
        if t.source == "control":
            argv = [*rsync_opts(inv), f"{model.path}/files", f"{model.path}/{MANIFEST}",
                    f"{inv.admin.user}@{node.ip}:{incoming_dir(model)}/"]
            code, tail, sent = _rsync(argv, bar)
        else:  # the source node pushes to its peer's fabric address, with the control node's forwarded key
            peer_opts = ("ssh -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
                         "-o LogLevel=ERROR")
            inner = shlex.join([*RSYNC, "-e", peer_opts, f"{final_dir(model)}/files",
                                f"{final_dir(model)}/{MANIFEST}",
                                f"{inv.admin.user}@{fabric_name(t.target)}:{incoming_dir(model)}/"])
            src = inv.node(t.source)
            argv = [*ssh.options(inv), "-A", f"{inv.admin.user}@{src.ip}", inner]
            code, tail, sent = _rsync(argv, bar, env)
        moved += sent
        if code != 0:
            result.error = f"rsync from {t.source} exited {code}: {tail[-200:]}"
            return result
        ok, bad, detail = _verify_and_publish(inv, node, model)
        if ok:
            result.verified = True
            break
        if attempt == 2 or not bad:
            result.error = f"checksums do not match after copying: {detail}"
            return result
        # A file that arrived wrong (or was damaged on the disk): delete it, copy it again.
        result.recopied = bad
        log.warning("%s: %s did not match its checksum: copying it again", t.target, ", ".join(bad))
        ssh.run(inv, node, "sudo -n rm -f " + " ".join(shlex.quote(f"{incoming_dir(model)}/{b}") for b in bad))
    result.seconds = time.monotonic() - start
    result.bytes = moved
    return result


def push(inv: Inventory, model: Model, nodes: list[Node], say: Callable[[str], None],
         want: str = "auto") -> list[Moved]:
    """The model onto each node's /models: checked, planned, moved, verified, published. Nodes that hold the
    verified version move no bytes."""
    states = ssh.parallel(lambda n: probe(inv, n, model), nodes)
    problems = refusals(states, model)
    if problems:
        raise UserError("models push refused: " + "; ".join(problems))
    have = [st.node for st in states if st.present == "verified"]
    targets = [st.node for st in states if st.present != "verified"]
    for st in states:
        if st.present.startswith("damaged"):
            say(f"{st.node}: its copy is {st.present}: repairing it")
    plan = choose(inv, targets, model.manifest.total_size, want)
    say(plan.describe())
    results = [Moved(n, "already there", verified=True) for n in have]
    size = model.manifest.total_size
    bars = {t: tqdm(total=size, unit="B", unit_scale=True, desc=t, position=i, leave=False, disable=None)
            for i, t in enumerate(targets)}
    lock = threading.Lock()
    done: dict[str, Moved] = {}
    with agent(inv) as env:
        first = [t for t in plan.transfers if t.source == "control"]
        later = [t for t in plan.transfers if t.source != "control"]
        for moved in ssh.parallel(lambda t: move(inv, model, t, bars[t.target], env), first):
            with lock:
                done[moved.node] = moved
        ready = [t for t in later if done.get(t.source) and done[t.source].verified]
        for moved in ssh.parallel(lambda t: move(inv, model, t, bars[t.target], env), ready):
            done[moved.node] = moved
        for t in later:
            if t not in ready:
                done[t.target] = Moved(t.target, t.source, error=f"its source {t.source} failed")
    for b in bars.values():
        b.close()
    results += [done[t] for t in targets]
    return sorted(results, key=lambda m: m.node)


@dataclass(frozen=True)
class Held:
    node: str
    model: str
    state: str


def status(inv: Inventory, nodes: list[Node], verify: bool = False) -> list[Held]:
    """What each node's /models holds: every name@version, and whether its files pass their checksums (verify)
    or have the checksum list the push left (without verify: fast)."""
    script = (f"findmnt -no SOURCE {ROOT} >/dev/null || echo 'NOT-MOUNTED'; "
              f"for d in {ROOT}/*/*/; do [ -f \"$d{SUMS}\" ] || continue; "
              + ("(cd \"$d\" && sudo -n sha256sum --quiet -c " + SUMS + " >/dev/null 2>&1 && echo \"ok $d\" "
                 "|| echo \"BAD $d\"); " if verify else "echo \"listed $d\"; ")
              + f"done; ls -d {INCOMING}/*/*/ 2>/dev/null | sed 's/^/partial /'")

    def one(node: Node) -> list[Held]:
        r = ssh.run(inv, node, script, timeout=3600)
        if not r.ok and not r.stdout:
            return [Held(node.name, "-", f"unreachable: {r.reason()}")]
        out = []
        for line in r.stdout.splitlines():
            word, _, path = line.partition(" ")
            if word == "NOT-MOUNTED":
                out.append(Held(node.name, "-", f"{ROOT} not mounted"))
                continue
            parts = path.rstrip("/").split("/")
            ref = f"{parts[-2]}@{parts[-1]}" if len(parts) >= 2 else path
            state = {"ok": "verified", "BAD": "CHECKSUM MISMATCH", "listed": "present (not re-checked)",
                     "partial": "partial (push again to resume)"}.get(word, word)
            out.append(Held(node.name, ref, state))
        return out or [Held(node.name, "-", "no models")]

    return [h for held in ssh.parallel(one, nodes) for h in held]
