"""Small llama-architecture models with random weights, for the virtual cluster: the engines' mechanics
(loading, splitting layers over nodes, serving chat) run for real on them; their answers are gibberish.

    python -m testbed.tiny_model OUT.gguf [--layers N] [--embd N] [--ff N] [--heads N] [--kv-heads N] [--f32]
    python -m testbed.tiny_model OUT_DIR --hf [same options]

Deterministic: the same arguments and seed give the same bytes. Two formats, one per engine:
  - GGUF, what llama.cpp (0c1e570) reads for LLM_ARCH_LLAMA: the required hyper-parameters, an SPM vocabulary
    with byte fallback (`<0xXX>` tokens), a ChatML chat template, and the llama tensors (no extra ones: the
    loader counts them).
  - Hugging Face (vLLM): config.json (LlamaForCausalLM), model.safetensors, and a byte-level BPE tokenizer with
    no merges (tokenizer.json, every byte a token: any text encodes) with the same ChatML template, written
    here as JSON rather than trained, so nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

CHATML = ("{% for message in messages %}"
          "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
WORDS = ("the", "a", "is", "of", "and", "to", "in", "hello", "world", "node", "cluster", "token")


def vocabulary() -> tuple[list[str], list[float], list[int]]:
    import gguf

    t = gguf.TokenType
    tokens, types = ["<unk>", "<s>", "</s>"], [t.UNKNOWN, t.CONTROL, t.CONTROL]
    tokens += [f"<0x{b:02X}>" for b in range(256)]  # byte fallback: llama.cpp looks them up upper-case
    types += [t.BYTE] * 256
    tokens += ["<|im_start|>", "<|im_end|>"]
    types += [t.CONTROL] * 2
    pieces = ["\u2581", *(chr(c) for c in range(0x21, 0x7F)), *("\u2581" + w for w in WORDS)]
    tokens += pieces
    types += [t.NORMAL] * len(pieces)
    scores, normal = [0.0] * len(tokens), 0
    for i, kind in enumerate(types):
        if kind == t.NORMAL:
            scores[i], normal = -float(normal), normal + 1
    return tokens, scores, [int(k) for k in types]


def write_gguf(out: Path, layers: int = 8, embd: int = 512, ff: int = 1024, heads: int = 8, kv_heads: int = 4,
               ctx: int = 2048, seed: int = 1234, f16: bool = True) -> Path:
    import gguf
    import numpy as np

    if embd % heads or heads % kv_heads:
        raise ValueError("embd must be divisible by heads, and heads by kv_heads")
    head_dim = embd // heads
    tokens, scores, types = vocabulary()
    rng = np.random.default_rng(seed)
    wtype = np.float16 if f16 else np.float32

    def w(*shape: int):  # numpy's shape is ggml's ne reversed
        return (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(wtype)

    def ones(n: int):
        return np.ones((n,), dtype=np.float32)

    out.parent.mkdir(parents=True, exist_ok=True)
    wr = gguf.GGUFWriter(str(out), arch="llama")
    wr.add_name(f"onedotzero-tiny-{layers}x{embd}")
    wr.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if f16 else gguf.LlamaFileType.ALL_F32)
    wr.add_context_length(ctx)
    wr.add_embedding_length(embd)
    wr.add_block_count(layers)
    wr.add_feed_forward_length(ff)
    wr.add_head_count(heads)
    wr.add_head_count_kv(kv_heads)
    wr.add_rope_dimension_count(head_dim)  # must equal the head dimension for llama
    wr.add_rope_freq_base(10000.0)
    wr.add_layer_norm_rms_eps(1e-5)
    wr.add_vocab_size(len(tokens))
    wr.add_tokenizer_model("llama")
    wr.add_token_list(tokens)
    wr.add_token_scores(scores)
    wr.add_token_types(types)
    wr.add_unk_token_id(0)
    wr.add_bos_token_id(1)
    wr.add_eos_token_id(2)
    wr.add_add_bos_token(True)
    wr.add_chat_template(CHATML)
    wr.add_tensor("token_embd.weight", w(len(tokens), embd))
    kv = head_dim * kv_heads
    for i in range(layers):
        p = f"blk.{i}."
        wr.add_tensor(p + "attn_norm.weight", ones(embd))
        wr.add_tensor(p + "attn_q.weight", w(embd, embd))
        wr.add_tensor(p + "attn_k.weight", w(kv, embd))
        wr.add_tensor(p + "attn_v.weight", w(kv, embd))
        wr.add_tensor(p + "attn_output.weight", w(embd, embd))
        wr.add_tensor(p + "ffn_norm.weight", ones(embd))
        wr.add_tensor(p + "ffn_gate.weight", w(ff, embd))
        wr.add_tensor(p + "ffn_up.weight", w(ff, embd))
        wr.add_tensor(p + "ffn_down.weight", w(embd, ff))
    wr.add_tensor("output_norm.weight", ones(embd))
    wr.add_tensor("output.weight", w(len(tokens), embd))
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()
    return out


SPECIALS = ("<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>")


def byte_alphabet() -> list[str]:
    """GPT-2's byte-to-character map (what the ByteLevel pre-tokenizer emits), in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1),
                 *range(ord("\u00ae"), ord("\u00ff") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b], extra = chr(256 + extra), extra + 1
    return [chars[b] for b in range(256)]


def hf_tokenizer() -> tuple[dict, dict]:
    """(tokenizer.json, tokenizer_config.json): the special tokens, then one token per byte."""
    vocab = {t: i for i, t in enumerate([*SPECIALS, *byte_alphabet()])}
    level = {"add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
              "special": True} for i, t in enumerate(SPECIALS)]
    tokenizer = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
                 "pre_tokenizer": {"type": "ByteLevel", **level}, "post_processor": None,
                 "decoder": {"type": "ByteLevel", **level},
                 "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                           "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                           "ignore_merges": False, "vocab": vocab, "merges": []}}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
              "unk_token": "<unk>", "add_bos_token": False, "model_max_length": 2048, "chat_template": CHATML}
    return tokenizer, config


def write_hf(out: Path, layers: int = 8, embd: int = 512, ff: int = 1024, heads: int = 8, kv_heads: int = 4,
             ctx: int = 2048, seed: int = 1234) -> Path:
    """A Hugging Face llama directory (float16 weights) that vLLM loads."""
    import numpy as np
    from safetensors.numpy import save_file

    if embd % heads or heads % kv_heads:
        raise ValueError("embd must be divisible by heads, and heads by kv_heads")
    tokenizer, tok_config = hf_tokenizer()
    vocab = len(tokenizer["model"]["vocab"])
    rng = np.random.default_rng(seed)

    def w(*shape: int):  # torch's (out, in)
        return (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float16)

    kv = embd // heads * kv_heads
    tensors = {"model.embed_tokens.weight": w(vocab, embd)}
    for i in range(layers):
        p = f"model.layers.{i}."
        tensors.update({
            p + "input_layernorm.weight": np.ones(embd, np.float16),
            p + "self_attn.q_proj.weight": w(embd, embd), p + "self_attn.k_proj.weight": w(kv, embd),
            p + "self_attn.v_proj.weight": w(kv, embd), p + "self_attn.o_proj.weight": w(embd, embd),
            p + "post_attention_layernorm.weight": np.ones(embd, np.float16),
            p + "mlp.gate_proj.weight": w(ff, embd), p + "mlp.up_proj.weight": w(ff, embd),
            p + "mlp.down_proj.weight": w(embd, ff)})
    tensors["model.norm.weight"] = np.ones(embd, np.float16)
    tensors["lm_head.weight"] = w(vocab, embd)
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": embd,
              "intermediate_size": ff, "num_hidden_layers": layers, "num_attention_heads": heads,
              "num_key_value_heads": kv_heads, "max_position_embeddings": ctx, "rms_norm_eps": 1e-5,
              "rope_theta": 10000.0, "vocab_size": vocab, "bos_token_id": 1, "eos_token_id": 2,
              "hidden_act": "silu", "tie_word_embeddings": False, "torch_dtype": "float16"}
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    for name, data in (("config.json", config), ("tokenizer.json", tokenizer), ("tokenizer_config.json", tok_config),
                       ("generation_config.json", {"bos_token_id": 1, "eos_token_id": 2})):
        (out / name).write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path)
    for name, default in (("layers", 8), ("embd", 512), ("ff", 1024), ("heads", 8), ("kv-heads", 4), ("ctx", 2048),
                          ("seed", 1234)):
        p.add_argument(f"--{name}", type=int, default=default)
    p.add_argument("--f32", action="store_true", help="float32 weights (default float16; GGUF only)")
    p.add_argument("--hf", action="store_true", help="a Hugging Face directory (for vLLM) instead of a GGUF file")
    a = p.parse_args(argv)
    if a.hf:
        out = write_hf(a.out, a.layers, a.embd, a.ff, a.heads, a.kv_heads, a.ctx, a.seed)
        size = sum(f.stat().st_size for f in out.iterdir())
    else:
        out = write_gguf(a.out, a.layers, a.embd, a.ff, a.heads, a.kv_heads, a.ctx, a.seed, not a.f32)
        size = out.stat().st_size
    print(f"{out}: llama, {a.layers} layers x {a.embd}, {size / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
