"""The CUDA target without a GPU: target construction, nvcc fatbins embedded in the artifact
(not CUDA source), clear refusals; with a GPU, the artifact runs and matches NumPy."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest

from accelc.errors import ArtifactError, TargetError
from accelc.targets import cuda
from accelc.targets.cuda import fatbin

needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc (CUDA toolkit) not on PATH")
needs_gpu = pytest.mark.skipif(cuda.local_arch() is None, reason="no CUDA device on this machine")


def _mlp_onnx():
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((64, 96)).astype(np.float32) / 8
    w2 = rng.standard_normal((96, 32)).astype(np.float32) / 8
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["y"]), helper.make_node("Softmax", ["y"], ["p"], axis=-1)]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 64])],
                              [helper.make_tensor_value_info("p", TensorProto.FLOAT, [8, 32])],
                              [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    return onnx.helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), (w1, w2)


def _mlp_ref(x, w1, w2):
    y = np.maximum(x @ w1, 0) @ w2
    e = np.exp(y - y.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("arch,want", [("sm_90", "sm_90"), ("90", "sm_90"), ("8.6", "sm_86"), ("SM_80", "sm_80"),
                                       ("sm_90a", "sm_90a")])
def test_arch_spellings(arch, want):
    assert str(cuda.target(arch).arch) == want


@pytest.mark.parametrize("arch", ["sm_60", "volta", "compute_90", ""])
def test_bad_arch_is_one_clear_error(arch):
    with pytest.raises(TargetError, match="arch"):
        cuda.target(arch or " ")


def test_no_gpu_and_no_arch_says_to_pass_arch(monkeypatch):
    monkeypatch.setattr(cuda, "local_arch", lambda: None)
    monkeypatch.delenv("ACCELC_CUDA_ARCH", raising=False)
    with pytest.raises(TargetError, match="--arch"):
        cuda.target()


def test_target_carries_limits_and_host():
    t = cuda.target("sm_80")
    assert t.kind.name == "cuda" and int(t.attrs["max_threads_per_block"]) == 1024
    assert t.host is not None and t.host.kind.name == "llvm"


def test_blob_parse_serialize_roundtrip():
    import struct

    tree = struct.pack("<Q", 3) + struct.pack("<3Q", 0, 1, 1) + struct.pack("<Q", 1) + struct.pack("<Q", 1)
    payload = fatbin._pack_str(b"cuda") + b"FMAP" + fatbin._pack_str(b"__global__ void k() {}")
    entries = [(b"_lib", None), (b"cuda", payload)]
    body = tree + b"".join(fatbin._pack_str(k) + (b"" if p is None else fatbin._pack_str(p)) for k, p in entries)
    data = struct.pack("<Q", len(body)) + body
    blob = fatbin.Blob.parse(data)
    assert blob.entries == entries and blob.serialize() == data
    assert fatbin.split_cuda_payload(payload, b"__global__ void k() {}") == (b"cuda", b"FMAP")
    with pytest.raises(ValueError):
        fatbin.Blob.parse(data[:-1])
    with pytest.raises(ValueError):
        fatbin.split_cuda_payload(payload, b"other source")


@needs_nvcc
def test_compile_fatbin_and_nvcc_errors():
    out = fatbin.compile_fatbin('extern "C" __global__ void add1(float* x) { x[threadIdx.x] += 1.0f; }', "sm_80")
    assert out[:4] == np.uint32(fatbin.FATBIN_MAGIC).tobytes()
    from accelc.errors import CompileError

    with pytest.raises(CompileError, match="nvcc failed for sm_80"):
        fatbin.compile_fatbin("this is not CUDA", "sm_80")


@needs_nvcc
def test_mlp_artifact_carries_a_fatbin_not_cuda_source(tmp_path):
    import accelc
    from accelc.compiler import artifact

    model, _ = _mlp_onnx()
    cm = accelc.compile(model, target="cuda", target_options={"arch": "sm_90"})
    assert cm.meta.target_name == "cuda" and cm.meta.target["arch"] == "sm_90"
    lib = cm.export(tmp_path / "mlp.so")
    data = lib.read_bytes()
    assert np.uint32(fatbin.FATBIN_MAGIC).tobytes() in data
    assert b"__global__" not in data and b"extern \"C\"" not in data  # no CUDA source shipped
    # the fatbin holds SASS for sm_90 and PTX (cuobjdump lists both)
    if shutil.which("cuobjdump"):
        listing = subprocess.run(["cuobjdump", "--list-elf", "--list-ptx", str(lib)], capture_output=True, text=True)
        assert "sm_90" in listing.stdout
    _, meta = artifact.read_meta(lib)
    if cuda.local_arch() is None:
        with pytest.raises(ArtifactError, match="no CUDA device"):
            artifact.check_compatible(lib, meta)


def test_artifact_for_a_newer_gpu_is_refused(monkeypatch):
    monkeypatch.setattr(cuda, "local_arch", lambda: "sm_80")
    with pytest.raises(ArtifactError, match="recompile with --arch sm_80"):
        cuda.check_runnable({"kind": "cuda", "arch": "sm_90"}, [])
    cuda.check_runnable({"kind": "cuda", "arch": "sm_75"}, [])  # older SASS+PTX runs on newer GPUs


@needs_nvcc
def test_cli_compile_for_cuda_and_arch_misuse(tmp_path):
    model, _ = _mlp_onnx()
    path = tmp_path / "mlp.onnx"
    path.write_bytes(model.SerializeToString())
    cmd = [sys.executable, "-m", "accelc.compiler.cli"]
    ok = subprocess.run(cmd + ["compile", str(path), "-t", "cuda", "--arch", "sm_80", "-o", str(tmp_path / "m.so")],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "m.so").exists() and (tmp_path / "m.json").exists()
    assert " for cuda (sm_80) in " in ok.stdout, ok.stdout  # the arch it was built for, as the CPU's mcpu
    bad = subprocess.run(cmd + ["compile", str(path), "-t", "cpu", "--arch", "sm_80", "-o", str(tmp_path / "c.so")],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "--arch applies to -t cuda only" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and not (tmp_path / "c.so").exists()


@needs_gpu
def test_mlp_runs_on_the_gpu_and_matches_numpy(tmp_path):
    import accelc

    model, (w1, w2) = _mlp_onnx()
    x = np.random.default_rng(1).standard_normal((8, 64)).astype(np.float32)
    cm = accelc.compile(model, target="cuda")
    np.testing.assert_allclose(cm.run({"x": x})["p"], _mlp_ref(x, w1, w2), rtol=1e-4, atol=1e-6)
    lib = cm.export(tmp_path / "mlp.so")
    again = accelc.load(lib)
    np.testing.assert_allclose(again.run({"x": x})["p"], _mlp_ref(x, w1, w2), rtol=1e-4, atol=1e-6)


# -- tuning -t cuda ------------------------------------------------------------------------------
def test_tune_cuda_without_gpu_or_rpc_is_one_clear_error(monkeypatch, tmp_path):
    from accelc.schedules.tuning import driver

    monkeypatch.setattr(cuda, "local_arch", lambda: None)
    model, _ = _mlp_onnx()
    with pytest.raises(TargetError, match="give --rpc"):
        driver.tune(model, "cuda", 4, tmp_path / "db", target_options={"arch": "sm_90"}, progress=False)


@needs_nvcc
def test_cuda_tuning_builder_exports_candidates_with_a_fatbin():
    """The build half of tuning on CUDA runs anywhere: tasks of the model through the CUDA front
    passes, their default (dlight) schedules, built by the tuning LocalBuilder into shared
    libraries that carry a fatbin; and the CUDA cost-model features see the launch shape."""
    from tvm.s_tir import meta_schedule as ms

    from accelc.compiler.frontend import import_model
    from accelc.schedules.tuning import features, local_builder
    from accelc.schedules.tuning.driver import _cuda_default_schedule, _gpu_kernels, _not_a_named_kernel, relax_tasks

    t = cuda.target("sm_90")
    model, _ = _mlp_onnx()
    tasks = relax_tasks(import_model(model).mod, t, cuda.front_passes(t) + [_gpu_kernels()], _not_a_named_kernel)
    assert any("matmul" in task.name for task in tasks)
    task = next(task for task in tasks if "matmul" in task.name)
    sch = _cuda_default_schedule(task.mod, t)
    assert sch is not None
    f = features.cuda_features(features.parse(sch.mod), features.target_info(t, kind="cuda"))
    named = dict(zip(features.CUDA_NAMES, f))
    assert named["gpu_log_threads"] >= 5 and named["gpu_warp_multiple"] == 1.0
    (res,) = local_builder(cuda_arch="sm_90").build([ms.builder.BuilderInput(sch.mod, t)])
    assert res.error_msg is None, res.error_msg
    assert res.artifact_path.endswith(".so")
    assert np.uint32(fatbin.FATBIN_MAGIC).tobytes() in open(res.artifact_path, "rb").read()
