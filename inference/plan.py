"""What each node runs for inference: the one plan `inference up` applies and `inference status` reads.

Pure (runs anywhere): from the inventory's `inference:` section and the model's manifest (models store), it
decides each node's part (head, worker, none), the model the engine loads, where every process listens and
how the layers are split.
  llama.cpp: the head loads the GGUF and serves the API on its cluster address; RPC workers listen on their
    fabric addresses only (RPC has no authentication).
    - GPU backends: every layer offloaded (-ngl all), split over the head's GPU and the workers' devices
    - cpu: the head's CPU is not an offload device for llama.cpp, so the last N layers go to the workers over
      RPC and the rest stay on the head, N = layers x workers / (workers + 1): an even split by node
  vLLM: one rank per node, pipeline parallel: rank 0 (the head) serves the API, the others run headless and
    meet the head's torch.distributed store on its fabric address (rpc_port). Every rank loads its own
    stage's layers from its own /models, so every rank's node must hold the model (Hugging Face format).
    The stages are an even split by node, given to vLLM explicitly (VLLM_PP_LAYER_PARTITION).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from onedotzero.errors import UserError
from onedotzero.inventory import Inventory

ENGINES = ("llama_cpp", "vllm")
MODELS_DIR = "/models"  # every node's local SSD


@dataclass(frozen=True)
class NodePlan:
    node: str
    part: str  # "head", "worker" or "none"
    address: str  # where its process listens
    port: int
    layers: tuple[int, int] = (0, 0)  # [first, last) of the model's layers computed on this node
    env: dict = field(default_factory=dict)  # the engine's environment file on the node
    loads_model: bool = False  # reads the model from its own /models (must hold it)


@dataclass(frozen=True)
class Plan:
    engine: str
    model: dict  # name, version, dir and path (on the nodes), file (checked) and its sha256, layers, size
    nodes: tuple[NodePlan, ...]
    api_key_file: str = ""  # on the control node: copied to the head, which checks every request against it

    @property
    def head(self) -> NodePlan:
        return next(n for n in self.nodes if n.part == "head")

    def to_vars(self) -> dict:
        """The playbook's view: inference_plan.nodes[<host>] and the rest."""
        return {"engine": self.engine, "model": self.model, "nodes": {n.node: asdict(n) for n in self.nodes},
                "api_key_file": self.api_key_file}


def model_file(manifest) -> tuple[str, str]:
    """The file an engine loads, and its sha256: the (first) GGUF for llama.cpp."""
    gguf = [f for f in manifest.files if f.path.endswith(".gguf")]
    if not gguf:
        raise UserError(f"model {manifest.name}@{manifest.version} has no GGUF file",
                        "llama.cpp loads GGUF models: import or pull a .gguf")
    return gguf[0].path, gguf[0].sha256


def hf_model(manifest) -> tuple[str, str]:
    """The weights file checked for a Hugging Face model (the first safetensors file), and its sha256."""
    if manifest.format != "hf":
        raise UserError(f"model {manifest.name}@{manifest.version} is {manifest.format}, not a Hugging Face directory",
                        "vLLM loads config.json, safetensors and a tokenizer: import or pull such a directory")
    weights = sorted((f for f in manifest.files if f.path.endswith(".safetensors")), key=lambda f: f.path)
    if not weights:
        raise UserError(f"model {manifest.name}@{manifest.version} has no .safetensors file",
                        "vLLM loads safetensors weights: import or pull a model that has them")
    return weights[0].path, weights[0].sha256


def files_dir(manifest) -> str:
    return f"{MODELS_DIR}/{manifest.name}/{manifest.version}/files"


def model_facts(manifest, directory: str, path: str, file: str, sha: str, layers: int) -> dict:
    return {"name": manifest.name, "version": manifest.version, "dir": directory, "path": path, "file": file,
            "sha256": sha, "layers": layers, "size": manifest.total_size}


def split(layers: int, workers: int, backend: str) -> tuple[int, list[tuple[int, int]]]:
    """(-ngl value, [first, last) layer range per node: head first, then each worker)."""
    if workers == 0:
        return (0 if backend == "cpu" else 999), [(0, layers)]
    if backend != "cpu":
        per = layers / (workers + 1)
        bounds = [round(i * per) for i in range(workers + 2)]
        return 999, [(bounds[i], bounds[i + 1]) for i in range(workers + 1)]
    offloaded = round(layers * workers / (workers + 1))
    on_head = layers - offloaded
    per = offloaded / workers
    bounds = [on_head + round(i * per) for i in range(workers + 1)]
    return offloaded, [(0, on_head)] + [(bounds[i], bounds[i + 1]) for i in range(workers)]


def llama_cpp(inv: Inventory, manifest, layers: int, backend: str, threads: int) -> Plan:
    s = inv.inference
    file, sha = model_file(manifest)
    path = f"{files_dir(manifest)}/{file}"
    workers = [inv.node(w) for w in s.workers]
    rpc = ",".join(f"{inv.fabric.address(w.name)}:{s.rpc_port}" for w in workers)
    ngl, ranges = split(layers, len(workers), backend)
    head = inv.node(s.head)
    # The API names the model as the store does (clients ask /v1/models); workers over RPC; the key if any.
    extra = ["--alias", manifest.name, *(["--rpc", rpc] if rpc else []),
             *(["--api-key-file", "/etc/onedotzero/api-key"] if s.api_key_file else [])]
    nodes = [NodePlan(head.name, "head", str(head.ip), s.engine_port, ranges[0], {
        "MODEL": path, "HOST": str(head.ip), "PORT": s.engine_port, "GPU_LAYERS": ngl, "CONTEXT": s.context,
        "THREADS": threads, "ARGS": " ".join(extra)}, loads_model=True)]
    for w, r in zip(workers, ranges[1:], strict=True):
        env = {"RPC_HOST": str(inv.fabric.address(w.name)), "RPC_PORT": s.rpc_port, "THREADS": threads}
        if s.debug:
            env["GGML_RPC_DEBUG"] = 1  # logs every graph_compute: evidence that this node computed
        nodes.append(NodePlan(w.name, "worker", env["RPC_HOST"], s.rpc_port, r, env))
    nodes += idle(inv)
    model = model_facts(manifest, files_dir(manifest), path, file, sha, layers)
    return Plan("llama_cpp", model, tuple(nodes), str(s.api_key_file) if s.api_key_file else "")


def idle(inv: Inventory) -> list[NodePlan]:
    busy = {inv.inference.head, *inv.inference.workers}
    return [NodePlan(n.name, "none", "", 0) for n in inv.nodes if n.name not in busy]


def vllm(inv: Inventory, manifest, layers: int, backend: str, threads: int) -> Plan:
    s = inv.inference
    file, sha = hf_model(manifest)
    directory = files_dir(manifest)
    ranks = [inv.node(n) for n in (s.head, *s.workers)]
    if len(ranks) > layers:
        raise UserError(f"{len(ranks)} ranks for a model of {layers} layers", "use fewer workers")
    _, ranges = split(layers, len(ranks) - 1, "even")
    head = ranks[0]
    fabric = {n.name: str(inv.fabric.address(n.name)) for n in ranks} if s.workers else {}
    common = {"MODEL": directory, "NAME": manifest.name, "CONTEXT": s.context, "RANKS": len(ranks),
              "MASTER_ADDR": fabric.get(head.name, str(head.ip)), "MASTER_PORT": s.rpc_port,
              "VLLM_PP_LAYER_PARTITION": ",".join(str(b - a) for a, b in ranges), "OMP_NUM_THREADS": threads}
    if backend == "cpu":
        common["VLLM_CPU_KVCACHE_SPACE"] = 1  # GiB of KV cache per rank (vLLM's default, 4, is most of a node here)
    nodes = []
    for rank, (node, r) in enumerate(zip(ranks, ranges, strict=True)):
        env = {**common, "RANK": rank}
        if node.name in fabric:  # the launcher picks the interface toward the peer (the head's: its first worker)
            env["ONEDOTZERO_FABRIC_ADDR"] = fabric[node.name]
            env["ONEDOTZERO_FABRIC_PEER"] = fabric[ranks[1 if rank == 0 else 0].name]
        if rank == 0:
            env["ARGS"] = f"--host {head.ip} --port {s.engine_port}"
            if s.api_key_file:
                env["ONEDOTZERO_API_KEY_FILE"] = "/etc/onedotzero/api-key"
            nodes.append(NodePlan(node.name, "head", str(head.ip), s.engine_port, r, env, loads_model=True))
        else:
            env["ARGS"] = "--headless"
            nodes.append(NodePlan(node.name, "worker", fabric[node.name], 0, r, env, loads_model=True))
    nodes += idle(inv)
    model = model_facts(manifest, directory, directory, file, sha, layers)
    return Plan("vllm", model, tuple(nodes), str(s.api_key_file) if s.api_key_file else "")


def stopped(inv: Inventory) -> Plan:
    """Every node's part is none: what `inference down` applies."""
    return Plan(inv.inference.engine if inv.inference else "llama_cpp", {},
                tuple(NodePlan(n.name, "none", "", 0) for n in inv.nodes))
