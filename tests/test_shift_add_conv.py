"""The shift-add pass on conv2d: im2col → the PoT/BCQ matmul kernels → NCHW, held bit-exact to
the NumPy integer reference on the patch matrix; grouped convs stay dense; conv node names
select layers; the ResNet zoo model end to end."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from onnx import TensorProto, helper

import accelc
from accelc import models, passes
from accelc.compiler import pipeline
from accelc.compiler.frontend import import_model
from accelc.compiler.runtime import CompiledModel
from accelc.passes import shift_add_math as sam
from accelc.tests.util import make_model, ort_run

X_SHAPE = (2, 3, 9, 11)


def conv_model(seed=0):
    """x → convA (3×3, stride 2, pad 1, bias) → relu → convB (1×1) and convC (3×3 depthwise)."""
    rng = np.random.default_rng(seed)
    w = {"wa": (rng.standard_normal((8, 3, 3, 3)) * 0.3).astype("float32"),
         "ba": rng.standard_normal(8).astype("float32"),
         "wb": (rng.standard_normal((12, 8, 1, 1)) * 0.3).astype("float32"),
         "wc": (rng.standard_normal((8, 1, 3, 3)) * 0.3).astype("float32")}
    nodes = [
        helper.make_node("Conv", ["x", "wa", "ba"], ["ya"], name="convA/Conv", kernel_shape=[3, 3],
                         strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["ya"], ["ra"]),
        helper.make_node("Conv", ["ra", "wb"], ["yb"], name="convB/Conv", kernel_shape=[1, 1]),
        helper.make_node("Conv", ["ra", "wc"], ["yc"], name="convC/Conv", kernel_shape=[3, 3],
                         pads=[1, 1, 1, 1], group=8),
    ]
    outs = [("ya", [2, 8, 5, 6]), ("yb", [2, 12, 5, 6]), ("yc", [2, 8, 5, 6])]
    model = make_model(nodes, [("x", TensorProto.FLOAT, list(X_SHAPE))],
                       [(n, TensorProto.FLOAT, s) for n, s in outs], list(w.items()))
    return model, w


def im2col_np(x, kh, kw, stride, pad):
    """[N, C, H, W] → [N·OH·OW, C·KH·KW], columns (c, kh, kw) like an OIHW weight flattened."""
    n, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh, ow = (h + 2 * pad - kh) // stride + 1, (w + 2 * pad - kw) // stride + 1
    cols = np.empty((n, oh, ow, c, kh, kw), x.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[..., i, j] = xp[:, :, i:i + stride * oh:stride, j:j + stride * ow:stride].transpose(0, 2, 3, 1)
    return cols.reshape(n * oh * ow, c * kh * kw), (n, oh, ow)


def pot_int_conv_ref(x, w_oihw, stride, pad, terms, frac_bits=16, int_bits=16):
    """What the int kernel computes, in NumPy: the patch matrix quantized to fixed point, the
    int32 shift-accumulate, the float32 dequantize; back to NCHW."""
    o, _, kh, kw = w_oihw.shape
    cols, (n, oh, ow) = im2col_np(x, kh, kw, stride, pad)
    pw = sam.pot_decompose(w_oihw.reshape(o, -1).T, terms=terms)
    acc = sam.shift_matmul_int_ref(sam.quantize_activations(cols, frac_bits, int_bits), pw.codes)
    out_scale = (pw.scale.astype(np.float64) * 2.0 ** -frac_bits).astype(np.float32)
    return (acc.astype(np.float32) * out_scale).reshape(n, oh, ow, o).transpose(0, 3, 1, 2)


def _cos(a, b):
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def _record(mod):
    return json.loads(str(mod.attrs["accelc.rewrites"]))[0]


def test_conv_rewrite_is_bit_exact_to_the_integer_reference():
    """3×3/2 padded conv (+bias) and a 1×1 conv become im2col + pot_matmul_int, bit-exact to
    the NumPy reference of the kernel's integer arithmetic; the depthwise conv stays dense."""
    model, w = conv_model()
    spec = "shift-add:terms=3,keep_first=0,keep_last=0"
    mod = passes.make(spec)(import_model(model).mod)
    rec = _record(mod)
    assert [(l["name"], l["op"]) for l in rec["layers"]] == [("convA/Conv", "conv 3x3/2"), ("convB/Conv", "conv 1x1/1")]
    assert [(d["name"], d["why"]) for d in rec["dense"]] == [("convC/Conv", "grouped conv")]
    text = mod["main"].script(show_meta=False)
    assert text.count("R.nn.conv2d(") == 1 and "groups=8" in text  # only the depthwise one left
    a = rec["layers"][0]  # real conv MACs: rows = N·OH·OW, K = C·KH·KW
    assert (a["rows"], a["k"], a["n"]) == (2 * 5 * 6, 27, 8) and a["ops"]["shift"] == 60 * 27 * 8 * 3

    x = np.random.default_rng(1).standard_normal(X_SHAPE).astype("float32")
    got = accelc.compile(model, passes=[spec]).run({"x": x})
    want_a = pot_int_conv_ref(x, w["wa"], 2, 1, terms=3) + w["ba"].reshape(1, -1, 1, 1)
    np.testing.assert_array_equal(got["ya"], want_a)
    ra = np.maximum(got["ya"], 0)  # from the compiled output, so each layer is checked on its own
    np.testing.assert_array_equal(got["yb"], pot_int_conv_ref(ra, w["wb"], 1, 0, terms=3))

    ref = ort_run(model, {"x": x})  # the original model: the APoT error only
    for name in ("ya", "yb", "yc"):
        assert _cos(got[name], ref[name]) >= 0.999, name
    assert np.abs(got["ya"] - ref["ya"]).max() > 1e-4  # the weights really changed


@pytest.mark.parametrize("spec", ["shift-add:path=float,terms=2,keep_first=0,keep_last=0",
                                  "shift-add:mode=bcq,bits=3,group_size=8,keep_first=0,keep_last=0"])
def test_conv_other_kernels_match_dequantized_weights(spec):
    model, w = conv_model()
    opts = passes.make_options(spec)
    x = np.random.default_rng(2).standard_normal(X_SHAPE).astype("float32")
    got = accelc.compile(model, passes=[spec]).run({"x": x})["ya"]
    wm = w["wa"].reshape(8, -1).T
    deq = (sam.pot_decompose(wm, terms=opts.terms).dequantize() if opts.mode == "pot"
           else sam.bcq_quantize(wm, bits=3, group_size=8).dequantize())
    cols, _ = im2col_np(x.astype(np.float64), 3, 3, 2, 1)
    want = (cols @ deq).reshape(2, 5, 6, 8).transpose(0, 3, 1, 2) + w["ba"].reshape(1, -1, 1, 1)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_layer_patterns_match_conv_node_names():
    model, _ = conv_model()
    rec = _record(passes.make("shift-add:layers=*B/Conv")(import_model(model).mod))
    assert [l["name"] for l in rec["layers"]] == ["convB/Conv"]
    assert {d["name"]: d["why"] for d in rec["dense"]} == {"convA/Conv": "not in layers", "convC/Conv": "grouped conv"}
    # defaults: the first conv stays dense, the last candidate (the depthwise one) cannot change
    rec = _record(passes.make("shift-add")(import_model(model).mod))
    assert [l["name"] for l in rec["layers"]] == ["convB/Conv"]
    assert {d["name"]: d["why"] for d in rec["dense"]} == {"convA/Conv": "first layer", "convC/Conv": "grouped conv"}


def test_resnet_two_term_apot_end_to_end():
    """All convs but the 7×7 stem (and the classifier Gemm) rewritten; measured logits cosine
    vs the original 0.9974 (terms=1: 0.963)."""
    proto, feeds = models.build("resnet-small"), models.example_inputs("resnet-small")
    imported = import_model(proto)
    mod, _ = pipeline.apply_passes(imported, ["shift-add:terms=2"])
    rec = _record(mod)
    assert len(rec["layers"]) == 11 and all(l["op"].startswith("conv") for l in rec["layers"])
    assert {d["name"]: d["why"] for d in rec["dense"]} == {"/conv1/Conv": "first layer", "/fc/Gemm": "last layer"}
    assert mod["main"].script(show_meta=False).count("R.nn.conv2d(") == 1
    ex, meta = pipeline.build(dataclasses.replace(imported, mod=mod))
    got = CompiledModel(ex, meta, executable=ex).run(feeds)["logits"]
    ref = ort_run(proto, feeds)["logits"]
    cos = _cos(got, ref)
    print(f"resnet-small shift-add:terms=2 logits cosine {cos:.5f}")
    assert cos >= 0.99, cos
    assert got.argmax() == ref.argmax()


def test_candidate_input_matrix_is_the_patch_matrix():
    """Calibration's view of a conv input (``Candidate.input_matrix``) is the im2col matrix."""
    from accelc.passes.naming import module_weight_names
    from accelc.passes.shift_add import find_candidates

    model, _ = conv_model()
    mod = import_model(model).mod
    cands = find_candidates(mod["main"], module_weight_names(mod))
    assert [c.name for c in cands] == ["convA/Conv", "convB/Conv", "convC/Conv"]
    x = np.random.default_rng(3).standard_normal(X_SHAPE).astype("float32")
    np.testing.assert_array_equal(cands[0].input_matrix(x), im2col_np(x, 3, 3, 2, 1)[0])
    r = np.random.default_rng(4).standard_normal((2, 8, 5, 6)).astype("float32")
    np.testing.assert_array_equal(cands[1].input_matrix(r), im2col_np(r, 1, 1, 1, 0)[0])
