"""The ``accelc`` command line, run as a user runs it (a subprocess): successes and every bad input.

Each bad input must give exactly one line on stderr (``accelc: error: …``), a non-zero exit,
no traceback, and no output file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from accelc.tests.util import make_model, mlp_model, model_with_escaping_external_data, ort_run

ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}
ENV.pop("ACCELC_DEBUG", None)


def accelc(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "accelc.compiler.cli", *map(str, args)],
                          capture_output=True, text=True, env=ENV, cwd=cwd, timeout=600)


def assert_one_line_error(res, *fragments):
    assert res.returncode != 0, res.stdout
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("accelc: error: "), lines[0]
    assert "Traceback" not in res.stderr + res.stdout
    for frag in fragments:
        assert frag in lines[0], (frag, lines[0])


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    onnx.save(mlp_model(), str(d / "mlp.onnx"))
    onnx.save(mlp_model(batch=2), str(d / "mlp2.onnx"))
    res = accelc("compile", d / "mlp.onnx", "-o", d / "mlp.so", "--input-shape", "x=3,16")
    assert res.returncode == 0, res.stderr
    return d


def test_help_for_every_command():
    for args in ([], ["compile"], ["run"], ["bench"], ["inspect"], ["models"], ["passes"], ["demo"]):
        res = accelc(*args, "--help")
        assert res.returncode == 0 and "usage: accelc" in res.stdout, args
    assert "--input-shape" in accelc("compile", "--help").stdout


def test_compile_run_roundtrip_matches_onnxruntime(workdir):
    d = workdir
    assert (d / "mlp.so").is_file() and (d / "mlp.json").is_file()
    x = np.random.default_rng(1).standard_normal((3, 16)).astype("float32")
    np.savez(d / "feeds.npz", x=x)
    res = accelc("run", d / "mlp.so", "--inputs", d / "feeds.npz", "-o", d / "out.npz")
    assert res.returncode == 0, res.stderr
    got = np.load(d / "out.npz")["y"]
    np.testing.assert_allclose(got, ort_run(mlp_model(), {"x": x})["y"], rtol=1e-3, atol=1e-4)


def test_compile_verify(tmp_path):
    onnx.save(mlp_model(batch=2), str(tmp_path / "m.onnx"))
    res = accelc("compile", tmp_path / "m.onnx", "-o", tmp_path / "m.so", "--verify")
    assert res.returncode == 0, res.stderr
    assert "verify vs onnxruntime: OK" in res.stdout


def test_bench_prints_side_by_side(workdir, tmp_path):
    res = accelc("bench", workdir / "mlp2.onnx", "--repeat", "3", "--json", tmp_path / "b.json")
    assert res.returncode == 0, res.stderr
    assert "accelc" in res.stdout and "onnxruntime" in res.stdout
    data = json.loads((tmp_path / "b.json").read_text())
    assert data["accelc"]["median_ms"] > 0 and data["onnxruntime"]["median_ms"] > 0


def test_inspect_counts_macs(workdir):
    res = accelc("inspect", workdir / "mlp.onnx", "--input-shape", "x=4,16", "--json")
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["macs"] == 4 * 16 * 32 + 4 * 32 * 8
    assert info["op_counts"] == {"MatMul": 2, "Add": 2, "Relu": 1}
    assert info["params"] == 16 * 32 + 32 + 32 * 8 + 8


def test_models_list_and_build(tmp_path):
    res = accelc("models", "list")
    assert res.returncode == 0 and "deit-tiny" in res.stdout and "minilm-l6" in res.stdout
    res = accelc("models", "build", "resnet-small", "-o", tmp_path)
    assert res.returncode == 0, res.stderr
    onnx.checker.check_model(onnx.load(str(tmp_path / "resnet-small.onnx")))
    assert set(np.load(tmp_path / "resnet-small.inputs.npz").files) == {"pixel_values"}


# -- bad input ---------------------------------------------------------------------------------
def test_missing_file(tmp_path):
    res = accelc("compile", tmp_path / "nope.onnx", "-o", tmp_path / "o.so")
    assert_one_line_error(res, "nope.onnx", "no such file")
    assert list(tmp_path.iterdir()) == []


def test_not_an_onnx_file(tmp_path):
    (tmp_path / "readme.onnx").write_text("hello\n" * 100)
    res = accelc("compile", tmp_path / "readme.onnx", "-o", tmp_path / "o.so")
    assert_one_line_error(res, "readme.onnx", "not an ONNX model")
    assert not (tmp_path / "o.so").exists()


def test_truncated_protobuf(tmp_path):
    data = mlp_model(batch=2).SerializeToString()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) * 2 // 3])
    res = accelc("compile", tmp_path / "cut.onnx", "-o", tmp_path / "o.so")
    assert_one_line_error(res, "cut.onnx")
    assert not (tmp_path / "o.so").exists()


def test_checker_failure(tmp_path):
    bad = make_model([helper.make_node("Relu", ["ghost"], ["y"], name="r")],
                     [("x", TensorProto.FLOAT, [2])], [("y", TensorProto.FLOAT, [2])])
    onnx.save(bad, str(tmp_path / "bad.onnx"))
    assert_one_line_error(accelc("compile", tmp_path / "bad.onnx", "-o", tmp_path / "o.so"),
                          "bad.onnx", "ONNX checker")


def test_unsupported_ops_listed_all_at_once(tmp_path):
    nodes = [helper.make_node("DFT", ["x"], ["a"], name="dft_node"),
             helper.make_node("Relu", ["a"], ["b"], name="fine"),
             helper.make_node("DFT", ["b"], ["y"], name="dft_two")]
    m = make_model(nodes, [("x", TensorProto.FLOAT, [4, 8, 1])], [("y", TensorProto.FLOAT, [4, 8, 2])], opset=17)
    onnx.save(m, str(tmp_path / "u.onnx"))
    res = accelc("compile", tmp_path / "u.onnx", "-o", tmp_path / "o.so")
    assert_one_line_error(res, "DFT (node 'dft_node', opset 17)", "DFT (node 'dft_two', opset 17)")
    res = accelc("inspect", tmp_path / "u.onnx")  # inspect lists them instead of failing
    assert res.returncode == 0 and "UNSUPPORTED (2 node(s))" in res.stdout


def test_dynamic_dims_without_input_shape(workdir, tmp_path):
    res = accelc("compile", workdir / "mlp.onnx", "-o", tmp_path / "o.so")
    assert_one_line_error(res, "'x' dim 0 ('batch')", "--input-shape")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("feeds,fragment", [
    ({"wrong": np.zeros((3, 16), "float32")}, "unknown input(s) wrong"),
    ({"x": np.zeros((3, 15), "float32")}, "shape [3, 16], got [3, 15]"),
    ({"x": np.zeros((3, 16), "int32")}, "must be float32, got int32"),
])
def test_wrong_inputs_at_run_time(workdir, tmp_path, feeds, fragment):
    np.savez(tmp_path / "f.npz", **feeds)
    res = accelc("run", workdir / "mlp.so", "--inputs", tmp_path / "f.npz", "-o", tmp_path / "out.npz")
    assert_one_line_error(res, fragment)
    assert not (tmp_path / "out.npz").exists()


def _copy_artifact(workdir, tmp_path, **changes):
    import shutil

    shutil.copy(workdir / "mlp.so", tmp_path / "a.so")
    meta = json.loads((workdir / "mlp.json").read_text())
    for k, v in changes.items():
        meta[k] = {**meta[k], **v} if isinstance(v, dict) else v
    (tmp_path / "a.json").write_text(json.dumps(meta))
    return tmp_path / "a.so"


def test_artifact_from_other_version(workdir, tmp_path):
    lib = _copy_artifact(workdir, tmp_path, versions={"accelc": "0.0.1"})
    assert_one_line_error(accelc("run", lib), "built by accelc 0.0.1", "recompile")


def test_artifact_for_other_target(workdir, tmp_path):
    from accelc.targets.cpu import host_target, isa_features

    missing = next(f for f in ("neon", "sve", "avx512f", "amx-tile") if f not in isa_features(host_target()))
    lib = _copy_artifact(workdir, tmp_path, isa_features=[missing], target={"mcpu": "other-cpu"})
    assert_one_line_error(accelc("run", lib), "other-cpu", missing)
    lib = _copy_artifact(workdir, tmp_path, target_name="cuda-h9000")
    assert_one_line_error(accelc("run", lib), "unknown target 'cuda-h9000'")


def test_output_path_in_missing_directory(workdir, tmp_path):
    res = accelc("compile", workdir / "mlp2.onnx", "-o", tmp_path / "missing" / "o.so")
    assert_one_line_error(res, "does not exist")
    assert list(tmp_path.iterdir()) == []


def test_external_data_outside_folder(tmp_path):
    (tmp_path / "outside.bin").write_bytes(b"\0" * 8192)
    sub = tmp_path / "m"
    sub.mkdir()
    res = accelc("compile", model_with_escaping_external_data(sub, "../outside.bin"), "-o", tmp_path / "o.so")
    assert_one_line_error(res, "outside the model's folder", "refused")
    assert not (tmp_path / "o.so").exists()


@pytest.mark.parametrize("args,fragment", [
    (["compile", "m.onnx", "-o", "o.so", "--input-shape", "x=1,a"], "dimensions must be integers"),
    (["compile", "m.onnx", "-o", "o.so", "-t", "tpu"], "unknown target 'tpu'"),
    (["compile", "m.onnx", "-o", "o.so", "--passes", "nope"], "unknown pass 'nope'"),
    (["models", "build", "nope", "-o", "."], "unknown zoo model 'nope'"),
    (["run", "a.so"], "no such artifact"),
    (["run", "m.onnx", "--inputs", "missing.npz"], "no such inputs file"),
])
def test_usage_errors(tmp_path, args, fragment):
    onnx.save(mlp_model(batch=2), str(tmp_path / "m.onnx"))
    res = accelc(*args, cwd=tmp_path)
    assert_one_line_error(res, fragment)
    assert not (tmp_path / "o.so").exists()


def test_argparse_errors_are_one_line():
    res = accelc("compile")
    assert res.returncode == 2
    assert len(res.stderr.strip().splitlines()) == 1 and "required" in res.stderr
