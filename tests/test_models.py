"""The model zoo: deterministic, valid ONNX, the advertised sizes, and compiled output that
matches onnxruntime; the real MiniLM model against Hugging Face's reference embeddings."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

import accelc
from accelc import models
from accelc.compiler.modelinfo import inspect_onnx
from accelc.models import minilm

from accelc.tests.util import assert_matches_ort, ort_run, require_minilm

SYNTHETIC = models.names(include_real=False)


@pytest.mark.parametrize("name", SYNTHETIC)
def test_zoo_model_is_deterministic_and_valid(name):
    a, b = models.build(name), models.build(name)
    assert hashlib.sha256(a.SerializeToString()).digest() == hashlib.sha256(b.SerializeToString()).digest()
    onnx.checker.check_model(a, full_check=True)
    feeds = models.example_inputs(name)
    ins = {i.name for i in a.graph.input} - {t.name for t in a.graph.initializer}
    assert set(feeds) == ins


def test_zoo_sizes():
    """MACs as the architectures define them (checks both the builders and `inspect`)."""
    bert = inspect_onnx(models.build("bert-encoder"))
    per_layer = 4 * 128 * 384 * 384 + 2 * 128 * 384 * 1536 + 2 * 12 * 128 * 128 * 32
    assert bert.macs == 6 * per_layer
    vit = inspect_onnx(models.build("deit-tiny"))
    n = 197
    block = n * 192 * 576 + 2 * 3 * n * n * 64 + n * 192 * 192 + 2 * n * 192 * 768
    assert vit.macs == 12 * block + 196 * 192 * 768 + 192 * 1000
    assert vit.op_counts["Softmax"] == 12 and vit.inputs[0] == ("pixel_values", "float32", "[1,3,224,224]")


@pytest.mark.parametrize("name", SYNTHETIC)
def test_zoo_model_compiles_and_matches_onnxruntime(name, tmp_path):
    proto = models.build(name)
    feeds = models.example_inputs(name)
    compiled = accelc.compile(proto)
    ref = ort_run(proto, feeds)
    assert_matches_ort(compiled.run(feeds), ref)
    # and the exported artifact gives the same answer after a reload
    reloaded = accelc.load(compiled.export(tmp_path / f"{name}.so"))
    assert_matches_ort(reloaded.run(feeds), ref)


REFERENCE = json.loads((Path(__file__).parent / "data" / "minilm_reference.json").read_text())


@pytest.fixture(scope="module")
def minilm_embeddings():
    require_minilm()
    sentences = REFERENCE["sentences"]
    proto = minilm.build_minilm(seq=32, batch=len(sentences))
    feeds = minilm.tokenize(sentences, seq=32)
    compiled = accelc.compile(proto)
    return compiled.run(feeds)["sentence_embedding"], ort_run(proto, feeds)["sentence_embedding"]


def test_minilm_matches_huggingface_reference(minilm_embeddings):
    """Our ONNX graph of the real checkpoint, compiled, equals transformers' BertModel output."""
    ours, ort = minilm_embeddings
    np.testing.assert_allclose(ours, ort, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(ours[:, :16], np.array(REFERENCE["embedding_first16"]), atol=2e-5)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_minilm_orders_related_above_unrelated(minilm_embeddings):
    ours, _ = minilm_embeddings
    sim = ours @ ours.T
    np.testing.assert_allclose(sim, np.array(REFERENCE["cosine"]), atol=1e-4)
    pairs = len(ours) // 2
    for p in range(pairs):
        related = sim[2 * p, 2 * p + 1]
        unrelated = [sim[2 * p, j] for j in range(len(ours)) if j // 2 != p]
        assert related > 0.5, related
        assert related > max(unrelated) + 0.3, (related, max(unrelated))
