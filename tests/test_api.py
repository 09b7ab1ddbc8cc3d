"""The Python API and the TVM-plugin surface: compile/run/benchmark/export/load, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

import accelc
from accelc.errors import ArtifactError, InputError, PassError, TargetError, UsageError

from accelc.tests.util import assert_matches_ort, mlp_model, ort_run


@pytest.fixture(scope="module")
def compiled():
    return accelc.compile(mlp_model(), input_shapes={"x": (4, 16)})


@pytest.fixture
def feeds():
    return {"x": np.random.default_rng(0).standard_normal((4, 16)).astype("float32")}


def test_run_matches_onnxruntime(compiled, feeds):
    assert [str(s) for s in compiled.inputs] == ["x: float32[4,16]"]
    assert_matches_ort(compiled.run(feeds), ort_run(mlp_model(), feeds))
    assert list(compiled.run(feeds, output_names=["y"])) == ["y"]


@pytest.mark.parametrize("bad,msg", [
    ({}, "missing input"),
    ({"x": np.zeros((4, 16), "float32"), "z": np.zeros(1)}, "unknown input"),
    ({"x": np.zeros((4, 15), "float32")}, r"shape \[4, 16\], got \[4, 15\]"),
    ({"x": np.zeros((4, 16), "float64")}, "must be float32, got float64"),
])
def test_bad_feeds(compiled, bad, msg):
    with pytest.raises(InputError, match=msg):
        compiled.run(bad)


def test_unknown_output_name(compiled, feeds):
    with pytest.raises(InputError, match="unknown output"):
        compiled.run(feeds, output_names=["nope"])


def test_benchmark_stats(compiled, feeds):
    stats = compiled.benchmark(feeds, repeat=3, number=5)
    assert stats.repeat == 3 and stats.number == 5
    assert 0 < stats.min_ms <= stats.median_ms <= stats.max_ms
    assert stats.threads >= 1


def test_export_load_roundtrip(compiled, feeds, tmp_path):
    lib = compiled.export(tmp_path / "mlp.so")
    side = json.loads((tmp_path / "mlp.json").read_text())
    assert side["inputs"] == [{"name": "x", "shape": [4, 16], "dtype": "float32"}]
    assert side["versions"]["accelc"] == accelc.__version__ and side["target"]["kind"] == "llvm"
    loaded = accelc.load(lib)
    np.testing.assert_array_equal(loaded.run(feeds)["y"], compiled.run(feeds)["y"])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp leftovers


def _tamper(tmp_path, compiled, **changes):
    lib = compiled.export(tmp_path / "m.so")
    side = tmp_path / "m.json"
    meta = json.loads(side.read_text())
    for key, value in changes.items():
        if key == "versions":
            meta["versions"].update(value)
        else:
            meta[key] = value
    side.write_text(json.dumps(meta))
    return lib


def test_artifact_from_another_version(compiled, tmp_path):
    lib = _tamper(tmp_path, compiled, versions={"tvm": "0.19.0"})
    with pytest.raises(ArtifactError, match="built by tvm 0.19.0.*recompile"):
        accelc.load(lib)


def test_artifact_needing_missing_isa(compiled, tmp_path):
    from accelc.targets.cpu import host_target, isa_features

    missing = next(f for f in ("neon", "sve", "avx512f", "amx-tile") if f not in isa_features(host_target()))
    lib = _tamper(tmp_path, compiled, isa_features=[missing])
    with pytest.raises(ArtifactError, match=f"needs {missing}"):
        accelc.load(lib)


def test_artifact_for_unknown_target(compiled, tmp_path):
    lib = _tamper(tmp_path, compiled, target_name="tpu-v9")
    with pytest.raises(TargetError, match="unknown target 'tpu-v9'"):
        accelc.load(lib)


def test_corrupt_or_missing_sidecar(compiled, tmp_path):
    lib = compiled.export(tmp_path / "m.so")
    (tmp_path / "m.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="corrupt artifact metadata"):
        accelc.load(lib)
    (tmp_path / "m.json").unlink()
    with pytest.raises(ArtifactError, match="metadata file m.json is missing"):
        accelc.load(lib)


def test_export_into_missing_directory_writes_nothing(compiled, tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        compiled.export(tmp_path / "no" / "such" / "dir" / "m.so")
    assert list(tmp_path.iterdir()) == []


def test_unknown_target_and_pass():
    with pytest.raises(TargetError, match="unknown target 'gpu9'.*available: cpu"):
        accelc.compile(mlp_model(batch=2), target="gpu9")
    with pytest.raises(PassError, match="unknown pass 'nope'"):
        accelc.compile(mlp_model(batch=2), passes=["nope"])


def test_tvm_pass_objects_run_in_the_pipeline(feeds):
    """accelc's ``passes=`` takes any tvm.transform.Pass (here: a Relax rewrite x + 1)."""
    import tvm
    from tvm import relax

    seen = []

    @tvm.transform.module_pass(opt_level=0, name="CountFunctions")
    def count(mod, _ctx):
        seen.append(len(mod.functions))
        return mod

    compiled = accelc.compile(mlp_model(), input_shapes={"x": (4, 16)}, passes=[count, relax.transform.FoldConstant()])
    assert seen == [1]
    assert compiled.meta.passes == ["CountFunctions", "FoldConstant"]


def test_tvm_plugin_registration():
    """The target tag and Relax pipeline are usable from plain TVM."""
    import tvm
    from tvm import relax

    import accelc.targets.cpu  # noqa: F401 - registers on import

    target = tvm.target.Target("accelc/cpu")
    assert target.kind.name == "llvm" and int(target.attrs["num-cores"]) >= 1
    from accelc.compiler.frontend import import_onnx

    mod = import_onnx(mlp_model(batch=3)).mod
    ex = tvm.compile(mod, target, relax_pipeline="accelc.cpu")
    vm = relax.VirtualMachine(ex, tvm.cpu())
    x = np.ones((3, 16), "float32")
    want = ort_run(mlp_model(batch=3), {"x": x})["y"]
    np.testing.assert_allclose(vm["main"](tvm.runtime.tensor(x)).numpy(), want, rtol=1e-4, atol=1e-4)


def test_no_fast_math_uses_libm():
    from onnx import TensorProto, helper

    from accelc.tests.util import make_model

    model = make_model([helper.make_node("Erf", ["x"], ["y"])], [("x", TensorProto.FLOAT, [64])],
                       [("y", TensorProto.FLOAT, [64])])
    x = np.linspace(-4, 4, 64).astype("float32")
    exact = accelc.compile(model, fast_math=False).run({"x": x})["y"]
    fast = accelc.compile(model).run({"x": x})["y"]
    import math

    want = np.array([math.erf(v) for v in x.astype(np.float64)])
    np.testing.assert_allclose(exact, want, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(fast, want, rtol=1e-5, atol=1e-6)
    assert not accelc.compile(model, fast_math=False).meta.fast_math
