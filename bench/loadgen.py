"""The load generator: NVIDIA's AIPerf (the maintained successor of GenAI-Perf), pinned, in a venv of its own.

Why AIPerf: it measures what a performance engineer asks of an OpenAI-compatible endpoint (per-request TTFT,
inter-token latency, end-to-end latency, output tokens/s per user and aggregate, goodput under SLOs) from the
streamed responses, counts tokens from the server's own `usage` (so no tokenizer of the model is needed), and
installs from PyPI without PyTorch. guidellm needs torch (several GB of CUDA wheels); `vllm bench serve` needs
vLLM itself. AIPerf's many dependencies stay out of the toolkit's venv: it runs as a command, like iperf3.

Prompts are synthetic: AIPerf cuts them from its bundled corpus with a tokenizer. The tokenizer here is built
offline, once, from that corpus (one token per word), so a prompt of N "tokens" is N words; the engine's own
count of the prompt is what the results report (usage.prompt_tokens).

  install(cache)   on the control node: the venv and the tokenizer under <cache>/bench/, once
  profile(...)     one load point (concurrency, prompt/output length) -> AIPerf's summary, as the run keeps it
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from onedotzero.errors import CommandError, UserError
from onedotzero.log import log, step
from onedotzero.proc import run

AIPERF = "0.13.0"
# The figures a run keeps of each load point (AIPerf's metric tags) and the statistics kept of each.
METRICS = ("time_to_first_token", "inter_token_latency", "request_latency", "output_token_throughput_per_user",
           "output_token_throughput", "request_throughput", "goodput", "good_request_count", "request_count",
           "output_sequence_length", "input_sequence_length", "usage_prompt_tokens", "usage_completion_tokens",
           "benchmark_duration", "request_error_rate")
STATS = ("avg", "p50", "p90", "p99", "min", "max")
# SLO names the CLI takes -> AIPerf's goodput tags (values in ms)
SLOS = {"ttft_ms": "time_to_first_token", "itl_ms": "inter_token_latency", "e2e_ms": "request_latency"}


@dataclass(frozen=True)
class Point:
    """One load point of a sweep."""

    concurrency: int
    prompt_tokens: int
    output_tokens: int
    requests: int

    @property
    def name(self) -> str:
        return f"c{self.concurrency}-p{self.prompt_tokens}-o{self.output_tokens}"


def home(cache: Path) -> Path:
    return cache / "bench" / f"aiperf-{AIPERF}"


def install(cache: Path) -> Path:
    """On the control node: AIPerf's venv and the prompt tokenizer, once per version. A stamp written last marks
    it complete; a half-built one (an interrupted install) is removed and built again."""
    final = home(cache)
    stamp = final / ".complete"
    if stamp.is_file():
        return final
    shutil.rmtree(final, ignore_errors=True)
    final.parent.mkdir(parents=True, exist_ok=True)
    with step(f"bench: installing AIPerf {AIPERF} (once, into {final})"):
        run([sys.executable, "-m", "venv", final / "venv"], capture=True)
        try:
            run([final / "venv/bin/pip", "install", "-q", "--disable-pip-version-check", f"aiperf=={AIPERF}"],
                capture=True, timeout=1800)
        except CommandError as e:
            raise UserError(f"installing AIPerf {AIPERF} from PyPI failed: {e.message}",
                            "run `./cluster.py bench setup` where PyPI is reachable (it installs once, into the "
                            "cache)") from None
        run([final / "venv/bin/python", "-c", TOKENIZER, final / "tokenizer"], capture=True, timeout=300)
    stamp.write_text(AIPERF + "\n")
    return final


# Runs in AIPerf's venv: a word-level tokenizer of AIPerf's own prompt corpus (deterministic; no network).
TOKENIZER = """
import sys
from pathlib import Path
import aiperf
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast
corpus = next(Path(aiperf.__file__).parent.rglob("shakespeare.txt"))
tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
tok.pre_tokenizer = pre_tokenizers.Whitespace()
tok.decoder = decoders.WordPiece(prefix="##")
tok.train([str(corpus)], trainers.WordLevelTrainer(special_tokens=["[UNK]"]))
PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(sys.argv[1])
"""


def command(aiperf: Path, url: str, model: str, point: Point, out: Path, slo: dict[str, float],
            metrics_urls: list[str], extra: dict | None = None, seed: int = 1) -> list[str]:
    """The AIPerf command line of one load point (streamed chat completions, token counts from the server)."""
    argv = [str(aiperf / "venv/bin/aiperf"), "profile", "--model", model, "--url", url, "--endpoint-type", "chat",
            "--streaming", "--use-server-token-count", "--tokenizer", str(aiperf / "tokenizer"),
            "--concurrency", str(point.concurrency), "--request-count", str(point.requests),
            "--warmup-request-count", str(min(point.concurrency, 2)),
            "--prompt-input-tokens-mean", str(point.prompt_tokens), "--prompt-input-tokens-stddev", "0",
            "--prompt-output-tokens-mean", str(point.output_tokens), "--prompt-output-tokens-stddev", "0",
            # every request generates exactly output_tokens (llama.cpp, vLLM); plus the engine's own fields
            "--extra-inputs", json.dumps({"ignore_eos": True, **(extra or {})}, sort_keys=True),
            "--random-seed", str(seed), "--output-artifact-dir", str(out), "--no-auto-plot", "--ui-type", "none"]
    if slo:
        argv += ["--goodput", " ".join(f"{SLOS[k]}:{v:g}" for k, v in sorted(slo.items()))]
    argv += ["--server-metrics", *metrics_urls] if metrics_urls else ["--no-server-metrics"]
    return argv


def summary(export: dict) -> dict:
    """What a run keeps of AIPerf's profile_export_aiperf.json: the chosen metrics' unit and statistics."""
    kept = {}
    for tag in METRICS:
        m = export.get(tag)
        if isinstance(m, dict):
            kept[tag] = {"unit": m.get("unit"), **{s: m[s] for s in STATS if m.get(s) is not None}}
    kept["errors"] = export.get("error_summary") or []
    return kept


def load_span(records: Path) -> list[float] | None:
    """When the measured requests ran, wall clock (epoch seconds): the first start and the last end of AIPerf's
    per-request records of the profiling phase (warm-up and AIPerf's own start-up excluded)."""
    starts, ends = [], []
    try:
        lines = records.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        try:
            meta = json.loads(line).get("metadata", {})
        except ValueError:
            continue
        if meta.get("benchmark_phase") == "profiling" and meta.get("request_start_ns") and meta.get("request_end_ns"):
            starts.append(meta["request_start_ns"])
            ends.append(meta["request_end_ns"])
    return [min(starts) / 1e9, max(ends) / 1e9] if starts else None


def profile(aiperf: Path, url: str, model: str, point: Point, out: Path, slo: dict[str, float],
            metrics_urls: list[str], api_key: str | None = None, extra: dict | None = None,
            timeout: float = 3600) -> dict:
    """On the control node: one load point against the endpoint; AIPerf's files stay in out/."""
    argv = command(aiperf, url, model, point, out, slo, metrics_urls, extra)
    # not HF_HUB_OFFLINE: AIPerf 0.13 then refuses a local tokenizer path as an invalid repository id
    env = {**os.environ, "NO_COLOR": "1"}
    if api_key:
        argv += ["--api-key", api_key]
    log.debug("$ %s", " ".join(argv[:-1] + ["<key>"] if api_key else argv))
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=out.parent, timeout=timeout)
    except FileNotFoundError:
        raise UserError(f"AIPerf is missing from {aiperf}", "install it again: ./cluster.py bench setup") from None
    except subprocess.TimeoutExpired:
        raise UserError(f"AIPerf at {point.name} did not finish within {timeout:.0f}s",
                        f"fewer --requests, or see its log: {out / 'logs/aiperf.log'}") from None
    export = out / "profile_export_aiperf.json"
    if proc.returncode != 0 or not export.is_file():
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
        shown = " ".join(a for a in argv if a != api_key)
        raise UserError(f"AIPerf failed at {point.name} (exit code {proc.returncode}): {shown}\n{tail}",
                        f"its log: {out / 'logs/aiperf.log'}")
    return {**summary(json.loads(export.read_text())), "span": load_span(out / "profile_export.jsonl")}
