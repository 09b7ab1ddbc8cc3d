"""The fp16 pass (tensor-core mixed precision): rounding against NumPy, the rewritten model
against a NumPy model of the same rounding, and tensor-core code on CUDA."""

from __future__ import annotations

import re

import numpy as np
import pytest

import accelc
from accelc.errors import PassError
from accelc.passes.mixed_precision import round_to


def _model(rng):
    """x[4, 32] → MatMul W1 → Relu → scores = h·hᵀ → MatMul(scores, h) → MatMul W2."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w1 = rng.standard_normal((32, 48)).astype(np.float32) / 4
    w2 = rng.standard_normal((48, 16)).astype(np.float32) / 4
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h0"], name="fc1"), helper.make_node("Relu", ["h0"], ["h"]),
             helper.make_node("Transpose", ["h"], ["ht"], perm=[1, 0]),
             helper.make_node("MatMul", ["h", "ht"], ["s"], name="scores"),
             helper.make_node("MatMul", ["s", "h"], ["sh"], name="mix"),
             helper.make_node("MatMul", ["sh", "w2"], ["y"], name="fc2")]
    graph = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 16])],
                              [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), w1, w2


def _reference(x, w1, w2, dt, attention):
    r = (lambda a: round_to(a, dt))
    a = (r if attention else (lambda v: v))
    h = np.maximum(r(x) @ r(w1), 0)
    s = a(h) @ a(h).T
    return r(a(s) @ a(h)) @ r(w2)


def test_round_to_matches_numpy_half_and_bf16_bits():
    x = np.array([1.0, 1 + 2 ** -9, 1 + 3 * 2 ** -9, 65504.0, 1e-8, -3.14159, np.inf], np.float32)
    np.testing.assert_array_equal(round_to(x, "float16"), x.astype(np.float16).astype(np.float32))
    # bfloat16 keeps 8 mantissa bits, ties to even: 1+2^-9 → 1, 1+3·2^-9 → 1+2^-7
    b = round_to(x, "bfloat16")
    assert b[0] == 1.0 and b[1] == 1.0 and b[2] == 1 + 2 ** -7 and b[6] == np.inf
    assert np.all((b.view(np.uint32) & 0xFFFF) == 0)
    assert abs(b[5] - np.float32(-3.140625)) == 0


@pytest.mark.parametrize("dt", ["float16", "bfloat16"])
@pytest.mark.parametrize("attention", [True, False])
def test_rewritten_model_equals_numpy_model_of_the_rounding(dt, attention):
    rng = np.random.default_rng(3)
    model, w1, w2 = _model(rng)
    x = rng.standard_normal((4, 32)).astype(np.float32)
    cm = accelc.compile(model, passes=[f"fp16:dtype={dt},attention={attention}"])
    got = cm.run({"x": x})["y"]
    want = _reference(x, w1, w2, dt, attention)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5 * np.abs(want).max())
    exact = np.maximum(x @ w1, 0)
    exact = (exact @ exact.T @ exact) @ w2
    cos = float((got * exact).sum() / np.linalg.norm(got) / np.linalg.norm(exact))
    assert cos > (0.9999 if dt == "float16" else 0.999)
    assert not np.array_equal(got, exact)  # the rounding really happened


def test_record_lists_layers_and_activation_matmuls():
    import json

    from accelc.compiler import pipeline
    from accelc.compiler.frontend import import_model

    model, *_ = _model(np.random.default_rng(0))
    mod, _ = pipeline.apply_passes(import_model(model), ["fp16"])
    rec = json.loads(str(mod.attrs["accelc.rewrites"]))[-1]
    assert [layer["name"] for layer in rec["layers"]] == ["fc1", "fc2"]
    assert all(layer["bytes_after"] * 2 == layer["bytes_before"] for layer in rec["layers"])
    assert len(rec["activation_matmuls"]) == 2
    text = mod.script()
    assert text.count('R.astype') >= 4 and 'out_dtype="float32"' in text


def test_bad_dtype_is_a_pass_error():
    with pytest.raises(PassError, match="dtype must be one of float16, bfloat16"):
        accelc.compile(_model(np.random.default_rng(0))[0], passes=["fp16:dtype=int4"])


def test_fp16_gemm_uses_tensor_cores_on_cuda():
    """dlight's Matmul tensorizes the float16 GEMMs: WMMA mma_sync in the CUDA source."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from accelc.compiler import pipeline
    from accelc.compiler.frontend import import_model
    from accelc.targets.cuda import fatbin

    w = np.random.default_rng(0).standard_normal((256, 512)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [256, 256])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [256, 512])],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    sources = {}
    for spec in ([], ["fp16"]):
        ex, _ = pipeline.build(import_model(model), target="cuda", passes=spec, target_options={"arch": "sm_80"})
        sources[bool(spec)] = "".join(m.inspect_source("cuda") for m in fatbin.cuda_modules(ex.mod))
    assert "wmma::mma_sync" in sources[True] and "wmma::" not in sources[False]
    assert re.search(r"wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float>", sources[True])
    assert re.search(r"wmma::fragment<nvcuda::wmma::matrix_a, 16, 16, 16, half", sources[True])
