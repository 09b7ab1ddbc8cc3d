"""A GPT-2-style decoder at a fixed length, written as HF ``GPT2LMHeadModel`` exports (opset 17).

Pre-LN blocks, a fused ``c_attn`` linear split into q/k/v, a causal mask applied with
``Where(tril, scores, finfo.min)``, tanh-approximate GELU and an LM head tied to the token
embedding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .graph import GraphBuilder


@dataclass(frozen=True)
class GPT2Config:
    vocab: int = 4096
    dim: int = 384
    layers: int = 4
    heads: int = 6
    seq: int = 64
    batch: int = 1
    eps: float = 1e-5


def build_gpt2(cfg: GPT2Config = GPT2Config(), seed: int = 0):
    gb = GraphBuilder("gpt2_like", seed)
    B, N, D, H = cfg.batch, cfg.seq, cfg.dim, cfg.heads
    ids = gb.input("input_ids", "int64", [B, N])

    wte = gb.randn((cfg.vocab, D), 0.02)
    x = gb.op("Gather", gb.param("transformer.wte.weight", wte), ids, name="/transformer/wte/Gather")
    pos = gb.op("Gather", gb.param("transformer.wpe.weight", gb.randn((N, D), 0.01)),
                gb.const(np.arange(N)[None, :]), name="/transformer/wpe/Gather")
    x = gb.op("Add", x, pos, name="/transformer/Add")
    causal = gb.param("transformer.causal_mask", np.tril(np.ones((N, N), bool))[None, None])
    neg = gb.const(np.finfo(np.float32).min, "float32")

    for i in range(cfg.layers):
        s, p = f"/transformer/h.{i}", f"transformer.h.{i}"
        h = gb.layer_norm(x, D, f"{s}/ln_1", f"{p}.ln_1", eps=cfg.eps)
        qkv = gb.linear(h, D, 3 * D, f"{s}/attn/c_attn", f"{p}.attn.c_attn")
        q, k, v = gb.op("Split", qkv, gb.const([D, D, D]), name=f"{s}/attn/Split", outputs=3, axis=2)
        q = gb.split_heads(q, B, N, H, f"{s}/attn/q")
        kt = gb.split_heads(k, B, N, H, f"{s}/attn/k", transpose_last=True)
        v = gb.split_heads(v, B, N, H, f"{s}/attn/v")
        o = gb.attention_core(q, kt, v, D // H, f"{s}/attn", causal_where=(causal, neg))
        o = gb.merge_heads(o, B, N, D, f"{s}/attn")
        o = gb.linear(o, D, D, f"{s}/attn/c_proj", f"{p}.attn.c_proj")
        x = gb.op("Add", o, x, name=f"{s}/Add")
        h = gb.layer_norm(x, D, f"{s}/ln_2", f"{p}.ln_2", eps=cfg.eps)
        h = gb.linear(h, D, 4 * D, f"{s}/mlp/c_fc", f"{p}.mlp.c_fc")
        h = gb.gelu(h, f"{s}/mlp/act", approximate="tanh")
        h = gb.linear(h, 4 * D, D, f"{s}/mlp/c_proj", f"{p}.mlp.c_proj")
        x = gb.op("Add", x, h, name=f"{s}/Add_1")

    x = gb.layer_norm(x, D, "/transformer/ln_f", "transformer.ln_f", eps=cfg.eps)
    logits = gb.op("MatMul", x, gb.param("onnx::MatMul_lm_head.weight", np.ascontiguousarray(wte.T)),
                   name="/lm_head/MatMul")
    gb.output(logits, "logits", "float32", [B, N, cfg.vocab])
    return gb.build(doc=f"GPT-2-style decoder {cfg}, seeded weights (seed={seed})")


def gpt2_inputs(cfg: GPT2Config, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"input_ids": rng.integers(0, cfg.vocab, (cfg.batch, cfg.seq), dtype=np.int64)}
