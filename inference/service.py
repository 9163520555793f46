"""`cluster.py inference up|down|status|logs` and `chat`: the engine across the nodes, driven from the control node.

  up      the plan (inference/plan.py) from the inventory and the model's manifest, applied by
          playbooks/inference.yml (workers, then the head), kept as <cache>/inference/plan.json; then wait until
          the head answers /health
  down    every engine unit of the serving nodes stopped
  status  each node's part, its unit, the layers it holds, the model and its checksum on the head, the head's
          /health, the last request's tokens/s; a dead worker is named with the reason
  logs    the engine units' journal on each serving node
  chat    a question to the control node's endpoint, the answer streamed as it comes
Runs on the control node (in the virtual cluster: in the testbed's namespace, which plays it).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import requests

from inference import artifacts
from inference import plan as plan_mod
from models.store import ModelRef, model_store
from onedotzero import ansible, compute, ssh
from onedotzero.errors import UserError
from onedotzero.inventory import Inventory, Node
from onedotzero.log import log, step

UNITS = {"llama_cpp": {"head": "onedotzero-llama-server", "worker": "onedotzero-rpc-server"},
         "vllm": {"head": "onedotzero-vllm", "worker": "onedotzero-vllm"}}
BUFFER_RE = re.compile(r"load_tensors:\s+(\S+?)(?:\[(\S+)\])? model buffer size =\s+([\d.]+) MiB")
PP_RANK_RE = re.compile(r"\bPP rank (\d+)")  # vLLM: "rank 1 in world size 2 is assigned as ... PP rank 1, ..."
EVAL_RE = re.compile(r"\beval time =\s+([\d.]+) ms /\s+(\d+) tokens .*?([\d.]+) tokens per second")


def settings(inv: Inventory):
    if inv.inference is None:
        raise UserError(f"{inv.path} has no inference: section", "name the engine, model, head and workers "
                                                                  "(see cluster.example.yml)")
    return inv.inference


def plan_file(inv: Inventory) -> Path:
    return inv.image.cache / "inference" / "plan.json"


def gguf_header(path: Path) -> dict:
    """The model facts a plan and a benchmark need, from its GGUF header: architecture, layers (block_count),
    hidden size (embedding_length), and the weights' type (general.file_type, llama.cpp's LLAMA_FTYPE_*)."""
    import gguf  # numpy-backed: imported only when a plan is made

    fields = gguf.GGUFReader(str(path)).fields
    arch = bytes(fields["general.architecture"].parts[-1]).decode()
    count = fields.get(f"{arch}.block_count")
    if count is None:
        raise UserError(f"{path.name}: no {arch}.block_count in its GGUF header", "is it a complete model file?")
    embd = fields.get(f"{arch}.embedding_length")
    ftype = fields.get("general.file_type")
    names = {t.value: t.name for t in gguf.LlamaFileType}
    return {"architecture": arch, "layers": int(count.parts[-1][0]),
            "embedding_length": int(embd.parts[-1][0]) if embd else None,
            "file_type": names.get(int(ftype.parts[-1][0]), "unknown") if ftype else "unknown"}


def gguf_layers(path: Path) -> int:
    """The model's layer count, read from its GGUF header (<architecture>.block_count)."""
    return gguf_header(path)["layers"]


def hf_layers(directory: Path) -> int:
    """The model's layer count, from a Hugging Face config.json (num_hidden_layers; multimodal models nest it)."""
    try:
        config = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{directory}/config.json cannot be read: {e}", "is it a complete model?") from None
    layers = config.get("num_hidden_layers") or config.get("text_config", {}).get("num_hidden_layers")
    if not isinstance(layers, int) or layers < 1:
        raise UserError(f"{directory}/config.json has no num_hidden_layers", "is it a decoder model?")
    return layers


def backend(head: Node, engine: str) -> str:
    """The backend the head's hardware profile names for the engine (cpu where it names none)."""
    return (head.profile.gpu.backend(engine) if head.profile.gpu else None) or "cpu"


def make_plan(inv: Inventory) -> plan_mod.Plan:
    s = settings(inv)
    model = model_store(inv).get(ModelRef.parse(s.model))
    m = model.manifest
    kind = backend(inv.node(s.head), s.engine)
    if s.engine == "llama_cpp":
        file, _ = plan_mod.model_file(m)
        return plan_mod.llama_cpp(inv, m, gguf_layers(model.path / "files" / file), kind, s.threads)
    plan_mod.hf_model(m)
    artifacts.engine(s.engine, kind)  # the backend exists in inference/engines/vllm.yml
    return plan_mod.vllm(inv, m, hf_layers(model.path / "files"), kind, s.threads)


def _holders(inv: Inventory, p: plan_mod.Plan) -> None:
    """Every node that loads the model must hold it first (`models push` puts it there): the head for llama.cpp,
    every rank for vLLM."""
    nodes = [n.node for n in p.nodes if n.loads_model]
    check = f"test -f {p.model['dir']}/{p.model['file']}"
    results = ssh.parallel(lambda node: ssh.run(inv, node, check), [inv.node(n) for n in nodes])
    for name, r in zip(nodes, results, strict=True):
        if r.unreachable:
            raise UserError(f"{name} is unreachable: {r.reason()}", "`compute up` it first")
    missing = [name for name, r in zip(nodes, results, strict=True) if not r.ok]
    if missing:
        ref = f"{p.model['name']}@{p.model['version']}"
        raise UserError(f"{ref} is not on the /models of {', '.join(missing)}",
                        f"push it: ./cluster.py models push {ref} {' '.join(missing)}")


def apply(inv: Inventory, p: plan_mod.Plan, nodes: list[str], netns: str | None = None) -> None:
    with step(f"inference: {p.engine} on {', '.join(nodes)}"):
        ansible.playbook(inv, "inference.yml", nodes, extra_vars={"inference_plan": p.to_vars()}, netns=netns)


def up(inv: Inventory, timeout: float = 600) -> plan_mod.Plan:
    s = settings(inv)
    p = make_plan(inv)
    _holders(inv, p)
    apply(inv, p, [s.head, *s.workers])
    plan_file(inv).parent.mkdir(parents=True, exist_ok=True)
    plan_file(inv).write_text(json.dumps(p.to_vars(), indent=1))
    url = health_url(p.head.address, p.head.port)
    wait_healthy(url, timeout, f"inference: waiting for {url}",
                 UserError(f"the head did not answer {url} within {timeout:.0f}s", "see `./cluster.py inference logs`"))
    return p


def health_url(address: str, port: int) -> str:
    return f"http://{address}:{port}/health"


def healthy(url: str) -> bool:
    """The head's server answers its /health with 200."""
    try:
        return requests.get(url, timeout=5).status_code == 200
    except requests.RequestException:
        return False


def wait_healthy(url: str, timeout: float, label: str, failure: UserError) -> None:
    """Until the head's server is healthy, or raise failure after timeout seconds (`inference up`, and `bench run`
    after a probe that paused the server)."""
    deadline = time.monotonic() + timeout
    with step(label):
        while not healthy(url):
            if time.monotonic() > deadline:
                raise failure
            time.sleep(1)


def down(inv: Inventory) -> None:
    s = settings(inv)
    apply(inv, plan_mod.stopped(inv), [s.head, *s.workers])
    plan_file(inv).unlink(missing_ok=True)


@dataclass
class NodeState:
    node: str
    part: str
    unit: str
    active: str = "-"
    layers: str = "-"
    detail: str = ""
    ok: bool = True


@dataclass
class Status:
    engine: str
    model: dict
    health: str
    nodes: list[NodeState] = field(default_factory=list)
    tokens_per_second: float | None = None
    problems: list[str] = field(default_factory=list)


def applied(inv: Inventory) -> dict:
    try:
        return json.loads(plan_file(inv).read_text())
    except FileNotFoundError:
        raise UserError("inference is not up", "start it: ./cluster.py inference up") from None


def status(inv: Inventory) -> Status:
    p = applied(inv)
    units = UNITS[p["engine"]]
    parts = {n: v for n, v in p["nodes"].items() if v["part"] in units}
    head = next(n for n, v in parts.items() if v["part"] == "head")
    hv = parts[head]
    try:
        r = requests.get(f"http://{hv['address']}:{hv['port']}/health", timeout=5)
        health = "ok" if r.status_code == 200 else f"HTTP {r.status_code}"
    except requests.RequestException as e:
        health = f"unreachable ({type(e).__name__})"
    st = Status(p["engine"], p["model"], health)
    if health != "ok":
        st.problems.append(f"{head}: the head's /health is {health}")

    def probe(node) -> ssh.Result:
        v = parts[node.name]
        unit = units[v["part"]]
        # The unit's memory: its cgroup's count, or (no memory accounting, as in container nodes) the sum of its
        # processes' resident sets.
        rss = f"ps -e -o unit=,rss= | awk '$1==\"{unit}.service\" {{s+=$2}} END {{printf \"%.0f\", s*1024}}'"
        extra = [f"m=$(sudo -n systemctl show -p MemoryCurrent --value {unit}); case $m in ''|*[!0-9]*) m=$({rss});; "
                 f"esac; echo \"### memory $m\""]
        if v["part"] == "head":  # the model on its disk, and can it reach each worker (those that listen)?
            m = p["model"]
            weights = f"{m['dir']}/{m['file']}" if "dir" in m else m["path"]  # plans before vLLM had no dir
            extra += [f"echo '### model'; sha256sum {weights} 2>&1 | cut -c1-64"]
            extra += [f"timeout 2 bash -c '</dev/tcp/{w['address']}/{w['port']}' 2>/dev/null && echo 'reach {n} ok' "
                      f"|| echo 'reach {n} FAILED'" for n, w in parts.items() if w["part"] == "worker" and w["port"]]
        return ssh.run(inv, node, f"sudo -n systemctl is-active {unit}; sudo -n journalctl -u {unit} -b --no-pager "
                                  f"-n 400 -o cat; " + "; ".join(extra), timeout=60)

    nodes = [inv.node(n) for n in parts]
    results = dict(zip(parts, ssh.parallel(probe, nodes), strict=True))
    head_log = results[head].stdout
    buffers = {m[2] or m[1]: float(m[3]) for m in BUFFER_RE.finditer(head_log)}
    evals = EVAL_RE.findall(head_log)
    if evals:
        st.tokens_per_second = float(evals[-1][2])
    for name, v in parts.items():
        r = results[name]
        unit = units[v["part"]]
        ns = NodeState(name, v["part"], unit)
        first, last = v["layers"]
        ns.layers = f"{first}-{last - 1} ({last - first})" if last > first else "none"
        if r.unreachable:
            ns.active, ns.ok, ns.detail = "unreachable", False, r.reason()
        else:
            ns.active = r.stdout.split("\n", 1)[0].strip()
            ns.ok = ns.active == "active"
            where = f"{v['address']}:{v['port']}"
            details = []
            if v["part"] == "worker" and where in buffers:
                details.append(f"{buffers[where]:.1f} MiB of weights")
            stage = PP_RANK_RE.findall(r.stdout)
            if stage:
                details.append(f"PP rank {stage[-1]}")  # the rank's own log: which pipeline stage it runs
            memory = re.search(r"^### memory (\d+)$", r.stdout, re.M)
            if memory:
                details.append(f"{int(memory[1]) / 2**20:.0f} MiB in use")
            ns.detail = ", ".join(details)
            if v["part"] == "worker" and f"reach {name} FAILED" in head_log:
                ns.ok = False
                ns.detail = f"the head cannot reach {where}"
            if v["part"] == "head":
                ns.detail = ", ".join(filter(None, [_head_detail(r.stdout, p["model"], buffers), ns.detail]))
                if "checksum" in ns.detail and "MISMATCH" in ns.detail:
                    ns.ok = False
            if not ns.ok and ns.active != "active":
                last_line = [ln for ln in r.stdout.split("### ", 1)[0].splitlines()[1:] if ln.strip()]
                ns.detail = f"{unit} is {ns.active}" + (f": {last_line[-1][:160]}" if last_line else "")
        if not ns.ok:
            st.problems.append(f"{name} ({v['part']}): {ns.detail or ns.active}")
        st.nodes.append(ns)
    return st


def _head_detail(out: str, model: dict, buffers: dict) -> str:
    m = re.search(r"^### model\n([0-9a-f]{64})", out, re.M)
    checksum = "checksum ok" if m and m[1] == model["sha256"] else "checksum MISMATCH" if m else "model missing"
    mine = [f"{dev} {mib:.1f} MiB" for dev, mib in buffers.items() if ":" not in dev]
    return ", ".join([checksum, *mine])


def status_rows(st: Status) -> list[tuple[str, ...]]:
    rows = [("NODE", "PART", "UNIT", "STATE", "LAYERS", "DETAIL")]
    rows += [(n.node, n.part, n.unit, n.active, n.layers, n.detail) for n in st.nodes]
    return rows


def logs(inv: Inventory, out: Callable[[str], None], lines: int = 50) -> dict[str, int]:
    p = applied(inv)
    units = UNITS[p["engine"]]
    parts = {n: v for n, v in p["nodes"].items() if v["part"] in units}
    results = {}
    for name, v in parts.items():
        for r in compute.run(inv, [inv.node(name)], f"sudo journalctl -u {units[v['part']]} -b --no-pager -n {lines}",
                             out):
            results[r.node] = r.code
    return results


def chat(inv: Inventory, question: str, write: Callable[[str], None], max_tokens: int = 256,
         api_key: str | None = None) -> dict:
    """Ask the control node's endpoint; write each piece of the answer as it arrives. Returns the timings."""
    s = settings(inv)
    url = f"http://{inv.control.address}:{s.port}/v1/chat/completions"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    body = {"messages": [{"role": "user", "content": question}], "stream": True, "max_tokens": max_tokens}
    start, first, pieces = time.monotonic(), None, 0
    try:
        with requests.post(url, json=body, headers=headers, stream=True, timeout=(5, 600)) as r:
            if r.status_code != 200:
                raise UserError(f"{url} answered HTTP {r.status_code}: {r.text[:200]}",
                                "check `./cluster.py inference status` (and the API key)")
            for line in r.iter_lines(decode_unicode=True):
                if not line or not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                delta = (json.loads(data).get("choices") or [{}])[0].get("delta", {})
                if delta.get("content"):
                    first = first or time.monotonic()
                    pieces += 1
                    write(delta["content"])
    except requests.ConnectionError as e:
        raise UserError(f"cannot reach {url}: {e}", "is the control node's nginx serving the endpoint?") from None
    log.debug("chat: %d pieces", pieces)
    return {"seconds": time.monotonic() - start, "first": (first - start) if first else None, "pieces": pieces}
