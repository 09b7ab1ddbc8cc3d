"""BERT-style encoders: the zoo's seeded BERT and the graph that real MiniLM weights fill in.

The graph is written as ``torch.onnx.export`` writes HF ``BertModel`` at opset 17 with static
shapes: Gather embeddings, post-LN blocks, separate Q/K/V linears, ``Div(√dh)`` scaling, an
additive padding mask and Erf GELU.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .graph import GraphBuilder


@dataclass(frozen=True)
class BertConfig:
    vocab: int = 30522
    hidden: int = 384
    layers: int = 6
    heads: int = 12
    intermediate: int = 1536
    max_positions: int = 512
    type_vocab: int = 2
    seq: int = 128
    batch: int = 1
    eps: float = 1e-12


class _RandomWeights:
    """HF-named weights drawn on demand (N(0, 0.02) like BERT's initializer_range)."""

    def __init__(self, gb: GraphBuilder):
        self.gb = gb

    def get(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        if name.endswith("LayerNorm.weight"):
            return (1.0 + self.gb.randn(shape, 0.05)).astype("float32")
        if name.endswith(".bias"):
            return self.gb.randn(shape, 0.02)
        return self.gb.randn(shape, 0.02)


class _GivenWeights:
    """Weights from a trained checkpoint (HF names; Linear weights are [out, in])."""

    def __init__(self, tensors: dict[str, np.ndarray], prefix: str = ""):
        self.tensors, self.prefix = tensors, prefix

    def get(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        key = self.prefix + name
        if key not in self.tensors:
            raise KeyError(f"checkpoint has no tensor {key!r}")
        arr = np.asarray(self.tensors[key], dtype="float32")
        if arr.shape != tuple(shape):
            raise ValueError(f"checkpoint tensor {key!r} has shape {arr.shape}, expected {shape}")
        return arr


def build_bert_graph(gb: GraphBuilder, cfg: BertConfig, weights=None) -> str:
    """Emit a BERT encoder into ``gb``; returns the last hidden state's value name.

    Inputs ``input_ids``, ``attention_mask``, ``token_type_ids`` ([batch, seq] int64) are added.
    """
    w = _RandomWeights(gb) if weights is None else weights
    B, N, D, H = cfg.batch, cfg.seq, cfg.hidden, cfg.heads
    dh = D // H
    ids = gb.input("input_ids", "int64", [B, N])
    mask = gb.input("attention_mask", "int64", [B, N])
    types = gb.input("token_type_ids", "int64", [B, N])

    def lin(x, d_in, d_out, scope, pname):
        wt = w.get(f"{pname}.weight", (d_out, d_in)).T  # exporter stores Linear weight transposed
        return gb.linear(x, d_in, d_out, scope, pname, weight=np.ascontiguousarray(wt),
                         bias=w.get(f"{pname}.bias", (d_out,)))

    def ln(x, scope, pname):
        return gb.layer_norm(x, D, scope, pname, eps=cfg.eps, gamma=w.get(f"{pname}.weight", (D,)),
                             beta=w.get(f"{pname}.bias", (D,)))

    emb = "/embeddings"
    word = gb.op("Gather", gb.param("embeddings.word_embeddings.weight",
                                    w.get("embeddings.word_embeddings.weight", (cfg.vocab, D))),
                 ids, name=f"{emb}/word_embeddings/Gather")
    tok = gb.op("Gather", gb.param("embeddings.token_type_embeddings.weight",
                                   w.get("embeddings.token_type_embeddings.weight", (cfg.type_vocab, D))),
                types, name=f"{emb}/token_type_embeddings/Gather")
    pos_table = w.get("embeddings.position_embeddings.weight", (cfg.max_positions, D))
    pos = gb.op("Gather", gb.param("embeddings.position_embeddings.weight", pos_table),
                gb.const(np.arange(N)[None, :]), name=f"{emb}/position_embeddings/Gather")
    x = gb.op("Add", word, tok, name=f"{emb}/Add")
    x = gb.op("Add", x, pos, name=f"{emb}/Add_1")
    x = ln(x, f"{emb}/LayerNorm", "embeddings.LayerNorm")

    # Additive mask: (1 - mask) * finfo(float32).min, broadcast over heads and query rows.
    m = gb.op("Unsqueeze", mask, gb.const([1, 2]), name="/Unsqueeze")
    m = gb.op("Cast", m, name="/Cast", to=1)
    m = gb.op("Sub", gb.const(1.0, "float32"), m, name="/Sub")
    mask_add = gb.op("Mul", m, gb.const(np.finfo(np.float32).min, "float32"), name="/Mul")

    for i in range(cfg.layers):
        s, p = f"/encoder/layer.{i}", f"encoder.layer.{i}"
        att = f"{s}/attention/self"
        q = gb.split_heads(lin(x, D, D, f"{att}/query", f"{p}.attention.self.query"), B, N, H, f"{att}/q")
        k = gb.split_heads(lin(x, D, D, f"{att}/key", f"{p}.attention.self.key"), B, N, H, f"{att}/k",
                           transpose_last=True)
        v = gb.split_heads(lin(x, D, D, f"{att}/value", f"{p}.attention.self.value"), B, N, H, f"{att}/v")
        ctx = gb.attention_core(q, k, v, dh, att, mask_add=mask_add)
        ctx = gb.merge_heads(ctx, B, N, D, att)
        a = lin(ctx, D, D, f"{s}/attention/output/dense", f"{p}.attention.output.dense")
        a = gb.op("Add", a, x, name=f"{s}/attention/output/Add")
        x = ln(a, f"{s}/attention/output/LayerNorm", f"{p}.attention.output.LayerNorm")
        h = lin(x, D, cfg.intermediate, f"{s}/intermediate/dense", f"{p}.intermediate.dense")
        h = gb.gelu(h, f"{s}/intermediate/intermediate_act_fn")
        h = lin(h, cfg.intermediate, D, f"{s}/output/dense", f"{p}.output.dense")
        h = gb.op("Add", h, x, name=f"{s}/output/Add")
        x = ln(h, f"{s}/output/LayerNorm", f"{p}.output.LayerNorm")
    return x


def build_bert(cfg: BertConfig = BertConfig(), seed: int = 0):
    gb = GraphBuilder("bert_encoder", seed)
    x = build_bert_graph(gb, cfg)
    gb.output(x, "last_hidden_state", "float32", [cfg.batch, cfg.seq, cfg.hidden])
    return gb.build(doc=f"BERT-style encoder {cfg}, seeded weights (seed={seed})")


def bert_inputs(cfg: BertConfig, seed: int = 0, pad: int = 16) -> dict[str, np.ndarray]:
    """Random token ids with the last ``pad`` positions padded out by the attention mask."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, cfg.vocab, (cfg.batch, cfg.seq), dtype=np.int64)
    mask = np.ones((cfg.batch, cfg.seq), np.int64)
    if pad:
        mask[:, -pad:] = 0
        ids[:, -pad:] = 0
    return {"input_ids": ids, "attention_mask": mask,
            "token_type_ids": np.zeros((cfg.batch, cfg.seq), np.int64)}
