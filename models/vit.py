"""A DeiT-tiny-like Vision Transformer, written as timm's ViT exports to ONNX (opset 17).

Patch embedding by a stride-16 Conv, a class token, learned position embeddings, pre-LN
blocks with a fused QKV linear (Reshape → Transpose → Gather q/k/v), ``Mul(scale)`` scaling,
Erf GELU, and a linear head on the class token.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .graph import GraphBuilder


@dataclass(frozen=True)
class ViTConfig:
    image: int = 224
    patch: int = 16
    channels: int = 3
    dim: int = 192
    depth: int = 12
    heads: int = 3
    mlp_ratio: int = 4
    classes: int = 1000
    batch: int = 1
    eps: float = 1e-6

    @property
    def tokens(self) -> int:
        return (self.image // self.patch) ** 2 + 1


def build_vit(cfg: ViTConfig = ViTConfig(), seed: int = 0):
    gb = GraphBuilder("deit_tiny_like", seed)
    B, D, H, N = cfg.batch, cfg.dim, cfg.heads, cfg.tokens
    dh = D // H
    px = gb.input("pixel_values", "float32", [B, cfg.channels, cfg.image, cfg.image])

    fan_in = cfg.channels * cfg.patch * cfg.patch
    conv_w = gb.randn((D, cfg.channels, cfg.patch, cfg.patch), 1.0 / np.sqrt(fan_in))
    x = gb.op("Conv", px, gb.param("patch_embed.proj.weight", conv_w),
              gb.param("patch_embed.proj.bias", gb.randn((D,), 0.02)), name="/patch_embed/proj/Conv",
              kernel_shape=[cfg.patch, cfg.patch], strides=[cfg.patch, cfg.patch])
    x = gb.op("Reshape", x, gb.const([B, D, N - 1]), name="/patch_embed/Reshape")
    x = gb.op("Transpose", x, name="/patch_embed/Transpose", perm=[0, 2, 1])
    cls = gb.op("Expand", gb.param("cls_token", gb.randn((1, 1, D), 0.02)), gb.const([B, 1, D]),
                name="/Expand")
    x = gb.op("Concat", cls, x, name="/Concat", axis=1)
    x = gb.op("Add", x, gb.param("pos_embed", gb.randn((1, N, D), 0.02)), name="/Add")

    for i in range(cfg.depth):
        s, p = f"/blocks/blocks.{i}", f"blocks.{i}"
        h = gb.layer_norm(x, D, f"{s}/norm1", f"{p}.norm1", eps=cfg.eps)
        qkv = gb.linear(h, D, 3 * D, f"{s}/attn/qkv", f"{p}.attn.qkv")
        qkv = gb.op("Reshape", qkv, gb.const([B, N, 3, H, dh]), name=f"{s}/attn/Reshape")
        qkv = gb.op("Transpose", qkv, name=f"{s}/attn/Transpose", perm=[2, 0, 3, 1, 4])
        q, k, v = (gb.op("Gather", qkv, gb.const(j), name=f"{s}/attn/Gather", axis=0) for j in range(3))
        kt = gb.op("Transpose", k, name=f"{s}/attn/Transpose_1", perm=[0, 1, 3, 2])
        sc = gb.op("MatMul", q, kt, name=f"{s}/attn/MatMul")
        sc = gb.op("Mul", sc, gb.const(dh ** -0.5, "float32"), name=f"{s}/attn/Mul")
        pr = gb.op("Softmax", sc, name=f"{s}/attn/Softmax", axis=-1)
        o = gb.op("MatMul", pr, v, name=f"{s}/attn/MatMul_1")
        o = gb.merge_heads(o, B, N, D, f"{s}/attn")
        o = gb.linear(o, D, D, f"{s}/attn/proj", f"{p}.attn.proj")
        x = gb.op("Add", x, o, name=f"{s}/Add")
        h = gb.layer_norm(x, D, f"{s}/norm2", f"{p}.norm2", eps=cfg.eps)
        h = gb.linear(h, D, cfg.mlp_ratio * D, f"{s}/mlp/fc1", f"{p}.mlp.fc1")
        h = gb.gelu(h, f"{s}/mlp/act")
        h = gb.linear(h, cfg.mlp_ratio * D, D, f"{s}/mlp/fc2", f"{p}.mlp.fc2")
        x = gb.op("Add", x, h, name=f"{s}/Add_1")

    x = gb.layer_norm(x, D, "/norm", "norm", eps=cfg.eps)
    x = gb.op("Gather", x, gb.const(0), name="/Gather", axis=1)
    logits = gb.op("Gemm", x, gb.param("head.weight", gb.randn((cfg.classes, D), 0.02)),
                   gb.param("head.bias", gb.randn((cfg.classes,), 0.01)), name="/head/Gemm", transB=1)
    gb.output(logits, "logits", "float32", [B, cfg.classes])
    return gb.build(doc=f"DeiT-tiny-like ViT {cfg}, seeded weights (seed={seed})")


def vit_inputs(cfg: ViTConfig, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"pixel_values": rng.standard_normal(
        (cfg.batch, cfg.channels, cfg.image, cfg.image)).astype("float32")}
