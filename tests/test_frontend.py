"""Frontend: loading, validation, shape binding, shape folding, importer repairs, converters."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import accelc
from accelc.compiler import frontend, onnx_fixes
from accelc.errors import ModelError, ShapeError, UnsupportedOpError

from accelc.tests.util import assert_matches_ort, make_model, mlp_model, model_with_escaping_external_data, ort_run

F, I64 = TensorProto.FLOAT, TensorProto.INT64


# -- loading and validation -------------------------------------------------------------------
def test_missing_file(tmp_path):
    with pytest.raises(ModelError, match="no such file"):
        frontend.load_onnx(tmp_path / "nope.onnx")


def test_not_onnx(tmp_path):
    p = tmp_path / "notes.onnx"
    p.write_text("this is a text file, not a protobuf\n" * 20)
    with pytest.raises(ModelError, match="not an ONNX model"):
        frontend.load_onnx(p)


def test_truncated_protobuf(tmp_path):
    data = mlp_model().SerializeToString()
    p = tmp_path / "cut.onnx"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="truncated or corrupt|not an ONNX model"):
        frontend.load_onnx(p)


def test_checker_failure_names_the_problem():
    model = make_model([helper.make_node("Relu", ["missing_input"], ["y"], name="bad_relu")],
                       [("x", F, [2])], [("y", F, [2])])
    with pytest.raises(ModelError, match="fails the ONNX checker"):
        frontend.prepare_onnx(model, label="bad.onnx")


def test_every_unsupported_op_is_listed():
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="ok"),
        helper.make_node("CenterCropPad", ["a", "shape"], ["b"], name="first_crop"),
        helper.make_node("Relu", ["b"], ["c"], name="ok2"),
        helper.make_node("DFT", ["c"], ["y"], name="the_dft"),
    ]
    model = make_model(nodes, [("x", F, [4, 2])], [("y", F, ["n", 2])], [("shape", np.array([2, 2]))], opset=18)
    with pytest.raises(UnsupportedOpError) as err:
        frontend.prepare_onnx(model, label="m.onnx")
    ops = {(op, node) for op, node, _ in err.value.ops}
    assert ops == {("CenterCropPad", "first_crop"), ("DFT", "the_dft")}
    assert "opset 18" in str(err.value) and "\n" not in str(err.value)


def test_external_data_inside_folder_loads(tmp_path):
    model = mlp_model(batch=2)
    ref = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    onnx.save(model, str(tmp_path / "m.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="weights.bin", size_threshold=0)  # (moves model's tensors out, in place)
    loaded, _, _ = frontend.load_onnx(tmp_path / "m.onnx")
    w = {t.name: numpy_helper.to_array(t) for t in loaded.graph.initializer}
    assert all(np.array_equal(w[k], ref[k]) for k in ref)


def test_external_data_outside_folder_is_refused(tmp_path):
    (tmp_path / "secret.bin").write_bytes(b"\0" * 4096)
    sub = tmp_path / "model"
    sub.mkdir()
    with pytest.raises(ModelError, match="outside the model's folder.*refused"):
        frontend.load_onnx(model_with_escaping_external_data(sub, "../secret.bin"))


# -- shapes ------------------------------------------------------------------------------------
def test_dynamic_dims_need_shapes():
    with pytest.raises(ShapeError, match=r"'x' dim 0 \('batch'\).*--input-shape"):
        accelc.compile(mlp_model())


def test_named_dims_bind_across_inputs():
    x = ("a", F, ["batch", "seq"])
    y = ("b", F, ["batch", "seq"])
    model = make_model([helper.make_node("Add", ["a", "b"], ["c"])], [x, y], [("c", F, ["batch", "seq"])])
    bound = frontend.bind_input_shapes(model, {"a": (2, 5)}, "m")
    assert bound == {"a": (2, 5), "b": (2, 5)}


@pytest.mark.parametrize("shapes,msg", [
    ({"x": (2, 3, 4)}, "rank 2"),
    ({"nope": (1, 16)}, "unknown input"),
])
def test_bad_shape_bindings(shapes, msg):
    with pytest.raises(ShapeError, match=msg):
        frontend.bind_input_shapes(mlp_model(), shapes, "m")


def test_fixed_dim_conflict():
    with pytest.raises(ShapeError, match="fixed at"):
        frontend.bind_input_shapes(mlp_model(batch=4), {"x": (4, 17)}, "m")


def test_shape_spec_parsing():
    assert frontend.parse_shape_spec("input_ids=1,128") == ("input_ids", (1, 128))
    assert frontend.parse_shape_spec("x:1x3x224x224") == ("x", (1, 3, 224, 224))
    for bad in ("x=1,a", "=1,2", "x=0,3", "x"):
        with pytest.raises(ShapeError):
            frontend.parse_shape_spec(bad)


def test_range_of_shape_is_folded_and_correct():
    """position_ids = Range(0, Shape(ids)[1]) as torch exports it; TVM's importer alone fails."""
    nodes = [
        helper.make_node("Shape", ["ids"], ["s"]),
        helper.make_node("Gather", ["s", "one"], ["n"], axis=0),
        helper.make_node("Range", ["zero", "n", "one"], ["pos"]),
        helper.make_node("Unsqueeze", ["pos", "ax0"], ["pos2"]),
        helper.make_node("Gather", ["table", "pos2"], ["emb"], axis=0),
        helper.make_node("Gather", ["table", "ids"], ["tok"], axis=0),
        helper.make_node("Add", ["tok", "emb"], ["y"]),
    ]
    table = np.random.default_rng(0).standard_normal((32, 4)).astype("float32")
    model = make_model(nodes, [("ids", I64, [1, "seq"])], [("y", F, [1, "seq", 4])],
                       [("one", np.array(1, np.int64)), ("zero", np.array(0, np.int64)),
                        ("ax0", np.array([0], np.int64)), ("table", table)])
    compiled = accelc.compile(model, input_shapes={"ids": (1, 6)})
    feeds = {"ids": np.array([[3, 1, 4, 1, 5, 9]], np.int64)}
    assert_matches_ort(compiled.run(feeds), ort_run(model, feeds))


def test_expand_with_runtime_shape_gets_the_static_shape():
    """Upstream silently returns (2,1,6) for Expand to (2,3,6) when the shape is a runtime value."""
    nodes = [
        helper.make_node("Shape", ["like"], ["s"]),
        helper.make_node("Expand", ["x", "s"], ["y"]),
    ]
    model = make_model(nodes, [("x", F, [2, 1, 6]), ("like", F, [2, 3, 6])], [("y", F, [2, 3, 6])])
    prepared = frontend.prepare_onnx(model, fold="never")  # the repair alone, without onnxslim
    expand = next(n for n in prepared.graph.node if n.op_type == "Expand")
    const = {t.name: numpy_helper.to_array(t) for t in prepared.graph.initializer}
    assert expand.input[1] in const and list(const[expand.input[1]]) == [2, 3, 6]
    feeds = {"x": np.arange(12, dtype="float32").reshape(2, 1, 6), "like": np.zeros((2, 3, 6), "float32")}
    out = accelc.compile(model).run(feeds)["y"]
    assert out.shape == (2, 3, 6)
    np.testing.assert_array_equal(out, np.broadcast_to(feeds["x"], (2, 3, 6)))


def test_constant_value_float_attributes_are_normalized():
    nodes = [
        helper.make_node("Constant", [], ["c"], value_floats=[1.5, -2.0]),
        helper.make_node("Constant", [], ["k"], value_int=3),
        helper.make_node("Mul", ["x", "c"], ["m"]),
        helper.make_node("Cast", ["k"], ["kf"], to=F),
        helper.make_node("Add", ["m", "kf"], ["y"]),
    ]
    model = make_model(nodes, [("x", F, [2])], [("y", F, [2])])
    fixed = onnx_fixes.normalize_constants(onnx.ModelProto.FromString(model.SerializeToString()))
    attrs = {a.name for n in fixed.graph.node if n.op_type == "Constant" for a in n.attribute}
    assert attrs == {"value"}
    x = np.array([2.0, 4.0], "float32")
    np.testing.assert_allclose(accelc.compile(model).run({"x": x})["y"], x * [1.5, -2.0] + 3)


def test_gather_index_bounds_are_recorded_and_enforced():
    from accelc.errors import InputError

    table = np.ones((10, 4), "float32")
    model = make_model([helper.make_node("Gather", ["table", "ids"], ["y"], axis=0)],
                       [("ids", I64, [3])], [("y", F, [3, 4])], [("table", table)])
    compiled = accelc.compile(model)
    assert compiled.meta.index_bounds == {"ids": 10}
    compiled.run({"ids": np.array([0, 9, -10], np.int64)})
    with pytest.raises(InputError, match=r"table of 10 rows.*\[-10, 10\)"):
        compiled.run({"ids": np.array([0, 10, 1], np.int64)})


# -- Relax and TVMScript -----------------------------------------------------------------------
RELAX_SCRIPT = '''
from tvm.script import ir as I, relax as R

@I.ir_module
class Module:
    @R.function
    def main(x: R.Tensor((4, 8), "float32"), y: R.Tensor((4, 8), "float32")) -> R.Tensor((4, 8), "float32"):
        with R.dataflow():
            z = R.nn.relu(R.add(x, y))
            R.output(z)
        return z
'''


def test_relax_module_and_tvmscript_file(tmp_path):
    import tvm

    path = tmp_path / "mod.py"
    path.write_text(RELAX_SCRIPT)
    mod = frontend._parse_tvmscript(path)
    assert isinstance(mod, tvm.IRModule)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((2, 4, 8)).astype("float32")
    for source in (mod, str(path)):
        compiled = accelc.compile(source)
        assert [s.name for s in compiled.inputs] == ["x", "y"]
        np.testing.assert_allclose(compiled.run({"x": x, "y": y})["output_0"], np.maximum(x + y, 0))


def test_tvmscript_file_with_syntax_error(tmp_path):
    p = tmp_path / "bad.py"
    p.write_text("@I.ir_module\nclass M:\n    def main(:\n")
    with pytest.raises(ModelError, match="not a TVMScript IRModule"):
        accelc.compile(str(p))


# -- our converters ----------------------------------------------------------------------------
def test_attention_opset23_converter_matches_reference():
    """Upstream fails every standard Attention with KeyError 'num_heads'."""
    from onnx.reference import ReferenceEvaluator

    rng = np.random.default_rng(1)
    q = rng.standard_normal((2, 4, 5, 8)).astype("float32")
    k = rng.standard_normal((2, 2, 7, 8)).astype("float32")
    v = rng.standard_normal((2, 2, 7, 8)).astype("float32")
    mask = rng.random((5, 7)) > 0.3
    mask[2] = False  # a fully masked row must give zeros
    node = helper.make_node("Attention", ["q", "k", "v", "mask"], ["y"], is_causal=0, scale=0.3)
    model = make_model([node], [("q", F, q.shape), ("k", F, k.shape), ("v", F, v.shape),
                                ("mask", TensorProto.BOOL, mask.shape)], [("y", F, (2, 4, 5, 8))], opset=23)
    feeds = {"q": q, "k": k, "v": v, "mask": mask}
    want = ReferenceEvaluator(model).run(None, feeds)[0]
    got = accelc.compile(model).run(feeds)["y"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert np.all(got[:, :, 2] == 0)


def test_layer_norm_mean_and_invstddev_outputs():
    node = helper.make_node("LayerNormalization", ["x", "g", "b"], ["y", "mean", "inv"], axis=1, epsilon=1e-5)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 4, 5)).astype("float32")
    g, b = rng.standard_normal((4, 5)).astype("float32"), rng.standard_normal((4, 5)).astype("float32")
    model = make_model([node], [("x", F, x.shape)],
                       [("y", F, x.shape), ("mean", F, (3, 1, 1)), ("inv", F, (3, 1, 1))],
                       [("g", g), ("b", b)])
    out = accelc.compile(model).run({"x": x})
    mean = x.mean(axis=(1, 2), keepdims=True)
    inv = 1 / np.sqrt(x.var(axis=(1, 2), keepdims=True) + 1e-5)
    np.testing.assert_allclose(out["mean"], mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["inv"], inv, rtol=1e-4)
    np.testing.assert_allclose(out["y"], (x - mean) * inv * g + b, rtol=1e-4, atol=1e-5)


def test_softmax_cross_entropy_loss_matches_ort():
    rng = np.random.default_rng(3)
    scores = rng.standard_normal((4, 5, 3)).astype("float32")
    labels = rng.integers(0, 5, (4, 3)).astype(np.int64)
    labels[0, 0] = -1
    node = helper.make_node("SoftmaxCrossEntropyLoss", ["s", "l"], ["loss", "logp"], reduction="mean",
                            ignore_index=-1)
    model = make_model([node], [("s", F, scores.shape), ("l", I64, labels.shape)],
                       [("loss", F, []), ("logp", F, scores.shape)], opset=13)
    feeds = {"s": scores, "l": labels}
    assert_matches_ort(accelc.compile(model).run(feeds), ort_run(model, feeds), rtol=1e-4, atol=1e-5)
