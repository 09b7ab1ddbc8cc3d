"""The GPU-host recipe without a GPU: pack tiny CPU cases, check the bundles and MANIFEST, and
run the standalone runner end to end in ``--device cpu`` mode (bundled runtime-only TVM, this
machine's tvm_ffi: the bundled wheel is for CPython 3.12)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from accelc.benchmarks import gpu_host
from accelc.benchmarks import gpu_host_run as runner

RUNNER = Path(runner.__file__)
CASES = ["mlp-tiny", "gemm-fp32-64", "gemm-fp16-32x48x64", "gemm-int8-20x40x36"]
MAX_MIB = 8.0


def _run(folder, *args, timeout=300):
    env = {k: v for k, v in os.environ.items() if k != "TVM_USE_RUNTIME_LIB"}
    env["PYTHONPATH"] = ""  # the runner must not need accelc (or anything beside numpy + its pack)
    return subprocess.run([sys.executable, str(RUNNER), str(folder), *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=str(Path(folder).parent))


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-pack")
    manifest = gpu_host.pack(out, cases=CASES, target="cpu", max_mib=MAX_MIB, wheel=False,
                             full_expected_mib=0.005, preset=0, log=lambda *a: None)
    return out, manifest


@pytest.fixture(scope="module")
def ran(packed, tmp_path_factory):
    """A copy of the pack, run once by the runner (bundled tvm, installed tvm_ffi)."""
    folder = tmp_path_factory.mktemp("host") / "pack"
    shutil.copytree(packed[0], folder)
    proc = _run(folder, "--device", "cpu", "--repeat", "20", "--warmup", "1")
    return folder, proc


def test_bundles_fit_the_limit_and_the_manifest_describes_them(packed):
    out, manifest = packed
    bundles = sorted(p.name for p in out.glob("bundle-*"))
    assert bundles == ["bundle-artifacts-01.tar.xz", "bundle-runtime.tar.xz"]
    assert json.loads((out / "MANIFEST.json").read_text()) == manifest
    for b in manifest["bundles"]:
        path = out / b["file"]
        assert path.stat().st_size == b["bytes"] <= MAX_MIB * 2**20
        assert hashlib.sha256(path.read_bytes()).hexdigest() == b["sha256"]
        with tarfile.open(path, "r:xz") as tar:  # a valid .tar.xz, though built from xz streams
            assert tar.getnames()
    assert manifest["target"] == "cpu" and manifest["max_mib"] == MAX_MIB and manifest["created"]
    assert {"accelc", "tvm", "tvm_ffi", "numpy", "onnxruntime", "python"} <= set(manifest["versions"])
    assert [c["name"] for c in manifest["cases"]] == CASES
    assert manifest["errors"] == [] and manifest["skipped"] == []
    by = {c["name"]: c for c in manifest["cases"]}
    assert all(c["bundle"] == "bundle-artifacts-01.tar.xz" for c in by.values())
    assert by["gemm-fp16-32x48x64"]["tolerance"] == gpu_host.TOL_GEMM_FP16
    assert by["gemm-int8-20x40x36"]["tolerance"] == {"rtol": 0.0, "atol": 0.0}  # integer: bit-exact
    assert by["gemm-int8-20x40x36"]["outputs"][0]["dtype"] == "int32"
    assert by["gemm-fp32-64"]["flops"] == 2 * 64**3
    assert by["gemm-fp32-64"]["sampled_outputs"] == ["output_0"]  # above --full-expected-mib
    assert by["mlp-tiny"]["outputs"] == [{"name": "y", "shape": [2, 8], "dtype": "float32"}]
    assert "onnxruntime" in by["mlp-tiny"]["reference"]


def test_runtime_bundle_is_runtime_only(packed):
    out, manifest = packed
    with tarfile.open(out / "bundle-runtime.tar.xz", "r:xz") as tar:
        names = tar.getnames()
    libs = {n.rsplit("/", 1)[-1] for n in names if n.startswith("runtime/tvm/lib/")}
    assert {"libtvm_runtime.so", "libtvm_runtime_cuda.so"} <= libs
    assert not any("libtvm_compiler" in n for n in names)
    assert not any("__pycache__" in n or n.endswith((".pyc", ".h", ".cc", ".cu")) for n in names)
    assert not any(n.startswith(("runtime/tvm/include/", "runtime/tvm/src/", "runtime/tvm/3rdparty/"))
                   for n in names)
    assert "runtime/tvm/__init__.py" in names and "runtime/gpu_host_run.py" in names
    assert not any(n.startswith("runtime/wheels/") for n in names)  # --no-wheel
    assert manifest["runtime"]["wheel"] is None


def test_runner_runs_cpu_artifacts_and_passes(ran):
    folder, proc = ran
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads((folder / "RESULTS.json").read_text())
    assert results["summary"] == {"pass": len(CASES), "fail": 0, "error": 0, "missing": 0}
    assert results["runtime"]["mode"] == "bundled"
    assert results["device"]["kind"] == "cpu"
    for case in results["cases"]:
        lat = case["latency"]
        assert case["status"] == "pass" and lat["runs"] == 20
        assert 0 < lat["median_ms"] < 1e4 and 0 < lat["batched_ms"] < 1e4
        assert case["max_abs"] is not None and case["max_abs"] <= 1e-3
    gemm = next(c for c in results["cases"] if c["name"] == "gemm-fp32-64")
    assert "sampled" in gemm["outputs"]["output_0"]["checked"] and gemm["tflops"] > 0
    assert "mlp-tiny" in proc.stdout and "median ms" in proc.stdout  # the table
    # idempotent: the second run unpacks nothing and uses the installed TVM on request
    again = _run(folder, "--device", "cpu", "--use-installed-tvm", "--cases", "mlp-tiny", "--repeat", "20",
                 "--out", str(folder / "again.json"))
    assert again.returncode == 0, again.stdout + again.stderr
    assert "unpacked (" not in again.stdout
    second = json.loads((folder / "again.json").read_text())
    assert set(second["bundles"].values()) == {"already unpacked"}
    assert second["runtime"]["mode"] == "installed" and len(second["cases"]) == 1


def test_corrupt_expected_is_a_failure(ran, tmp_path):
    folder = tmp_path / "pack"
    shutil.copytree(ran[0], folder)
    exp = folder / "cases" / "mlp-tiny" / "expected.npz"
    with np.load(exp) as z:
        bad = {k: z[k] + 1.0 for k in z.files}
    np.savez(exp, **bad)
    gexp = folder / "cases" / "gemm-fp32-64" / "expected.npz"
    with np.load(gexp) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["output_0::rowsum"] = arrays["output_0::rowsum"] + 5.0  # only the sums are off
    np.savez(gexp, **arrays)
    proc = _run(folder, "--device", "cpu", "--use-installed-tvm", "--repeat", "20")
    assert proc.returncode == 1
    results = {c["name"]: c for c in json.loads((folder / "RESULTS.json").read_text())["cases"]}
    assert results["mlp-tiny"]["status"] == "fail" and results["mlp-tiny"]["max_abs"] == pytest.approx(1.0, abs=1e-3)
    assert results["gemm-fp32-64"]["status"] == "fail"
    assert results["gemm-fp16-32x48x64"]["status"] == "pass"
    assert results["gemm-int8-20x40x36"]["status"] == "pass" and results["gemm-int8-20x40x36"]["max_abs"] == 0
    assert "fail" in proc.stdout


def test_corrupt_or_missing_bundle_is_reported(packed, tmp_path):
    folder = tmp_path / "pack"
    folder.mkdir()
    shutil.copy(packed[0] / "MANIFEST.json", folder)
    shutil.copy(packed[0] / "bundle-runtime.tar.xz", folder)
    data = bytearray((packed[0] / "bundle-artifacts-01.tar.xz").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (folder / "bundle-artifacts-01.tar.xz").write_bytes(bytes(data))
    proc = _run(folder, "--device", "cpu", "--repeat", "20")
    assert proc.returncode == 1
    assert "bundle-artifacts-01.tar.xz: corrupt: sha256" in proc.stdout
    results = json.loads((folder / "RESULTS.json").read_text())
    assert {c["status"] for c in results["cases"]} == {"missing"}
    assert "has not arrived" in results["cases"][0]["error"]


def test_oversize_artifact_is_one_clear_error(tmp_path):
    out = tmp_path / "small"
    proc = subprocess.run([sys.executable, "-m", "accelc.benchmarks.gpu_host", "pack", "--target", "cpu",
                           "--cases", "mlp-tiny", "--no-runtime", "--max-mib", "0.004", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert "case 'mlp-tiny'" in errors[0] and "MiB compressed" in errors[0] and "0.004 MiB" in errors[0]
    manifest = json.loads((out / "MANIFEST.json").read_text())
    assert manifest["cases"] == [] and manifest["bundles"] == [] and len(manifest["errors"]) == 1
    assert not list(out.glob("bundle-*"))


def test_split_oversize_ships_parts_the_runner_joins(tmp_path):
    out = tmp_path / "split"
    manifest = gpu_host.pack(out, cases=["mlp-tiny"], target="cpu", runtime=False, max_mib=0.004,
                             split_oversize=True, preset=0, log=lambda *a: None)
    assert manifest["errors"] == []
    (bundle,) = manifest["bundles"]
    assert len(bundle["parts"]) >= 2
    for part in bundle["parts"]:
        assert (out / part["file"]).stat().st_size == part["bytes"] <= 0.004 * 2**20
    last = bundle["parts"][-1]["file"]
    (out / last).rename(tmp_path / last)  # not all parts have arrived yet
    early = _run(out, "--unpack-only")
    assert early.returncode == 0 and "incomplete" in early.stdout
    (tmp_path / last).rename(out / last)
    proc = _run(out, "--device", "cpu", "--use-installed-tvm", "--repeat", "20")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads((out / "RESULTS.json").read_text())["cases"][0]["status"] == "pass"


def test_unknown_case_and_bad_arch_fail_before_compiling(tmp_path):
    with pytest.raises(gpu_host.PackError, match="unknown case 'nope'"):
        gpu_host.pack(tmp_path, cases=["nope"], target="cpu", wheel=False)
    with pytest.raises(Exception, match="--arch"):
        gpu_host.pack(tmp_path, arch="sm_5", cases=["mlp-tiny"], wheel=False)
    with pytest.raises(gpu_host.PackError, match="unknown zoo model"):
        gpu_host.default_cases(["nope"])
    assert gpu_host.default_cases(["deit-tiny"]) == ["deit-tiny", "deit-tiny+linearize", "deit-tiny+shift-add",
                                                     "gemm-fp32-1024", "gemm-fp16-4096", "gemm-int8-1024"]
    assert gpu_host.default_cases(["resnet-small"]) == ["resnet-small", *gpu_host.DEFAULT_GEMMS]


@pytest.mark.parametrize("case,match", [("nope+linearize", "unknown zoo model 'nope'"),
                                        ("deit-tiny+nosuch", "unknown pass 'nosuch'"),
                                        ("deit-tiny+shift-add:terms=x", "option 'terms' expects int"),
                                        ("deit-tiny+", "expected MODEL\\+PASS")])
def test_bad_rewrite_case_fails_before_compiling(tmp_path, case, match):
    with pytest.raises(gpu_host.PackError, match=match):
        gpu_host.pack(tmp_path, cases=["mlp-tiny", case], target="cpu", wheel=False)
    assert not list(tmp_path.iterdir())  # nothing packed, nothing compiled


def test_rewrite_case_runs_and_reports_its_speedup_over_the_original(tmp_path):
    """A ``MODEL+PASS`` case: its reference is the CPU build of the same rewrite, its fidelity
    against onnxruntime on the original travels in the case, and the runner reports its speed-up
    over the original model timed in the same run."""
    out = tmp_path / "pack"
    cases = ["resnet-small", "resnet-small+shift-add"]
    manifest = gpu_host.pack(out, cases=cases, target="cpu", max_mib=32, wheel=False, preset=0, log=lambda *a: None)
    assert manifest["errors"] == [] and [c["name"] for c in manifest["cases"]] == cases
    rw = manifest["cases"][1]
    assert rw["base"] == "resnet-small" and rw["passes"] == ["shift-add"]
    assert "CPU build of the same rewrite" in rw["reference"]
    assert 0.9 < rw["fidelity"]["cosine"] < 1.0 - 1e-9  # the rewrite changes the numbers, a little
    proc = _run(out, "--device", "cpu", "--repeat", "20", "--warmup", "1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads((out / "RESULTS.json").read_text())
    assert results["summary"]["pass"] == 2
    by = {r["name"]: r for r in results["cases"]}
    assert by["resnet-small+shift-add"]["max_abs"] < 1e-3  # the packed CPU reference of the same rewrite
    (row,) = results["rewrites"]
    assert row["name"] == "resnet-small+shift-add" and row["base"] == "resnet-small"
    assert row["speedup"] == pytest.approx(by["resnet-small"]["median_ms"] / by["resnet-small+shift-add"]["median_ms"])
    assert row["cosine"] == rw["fidelity"]["cosine"]
    assert "rewrites vs their original models" in proc.stdout


def test_rewrite_speedup_needs_both_to_pass():
    res = [{"name": "m", "status": "fail", "median_ms": 2.0},
           {"name": "m+x", "status": "pass", "median_ms": 1.0, "base": "m", "fidelity": {"cosine": 0.99}},
           {"name": "n+x", "status": "pass", "median_ms": 1.0, "base": "n"}]
    rows = runner.rewrite_speedups(res)
    assert [(r["name"], r["speedup"]) for r in rows] == [("m+x", None), ("n+x", None)]
    res[0]["status"] = "pass"
    assert runner.rewrite_speedups(res)[0]["speedup"] == 2.0


def test_gemm_inputs_are_deterministic_and_exact():
    a = runner.pattern_array((64, 96), "float16", seed=1)
    assert np.array_equal(a, runner.pattern_array((64, 96), "float16", seed=1))
    assert not np.array_equal(a, runner.pattern_array((64, 96), "float16", seed=2))
    k = a.astype(np.float64) * 8
    assert np.array_equal(k, np.round(k)) and k.min() == -8 and k.max() == 8
    w = runner.pattern_array((96, 32), "float16", seed=2)
    exact = a.astype(np.float64) @ w.astype(np.float64)
    assert np.array_equal(a.astype(np.float32) @ w.astype(np.float32), exact)
    ref = runner.sampled_reference(exact.astype(np.float32), 100)
    assert runner.compare(exact.astype(np.float32), ref, 1e-4, 1e-3)["ok"]
    off = exact.astype(np.float32).copy()
    off[3, :] += 0.5  # a wrong row, maybe not sampled: the row sums catch it
    assert not runner.compare(off, ref, 1e-4, 1e-3)["ok"]


def _cached_wheel() -> bool:
    import tvm_ffi

    return bool(list(gpu_host.WHEEL_CACHE.glob(f"apache_tvm_ffi-{tvm_ffi.__version__}-cp312-*.whl")))


@pytest.mark.skipif(not (_cached_wheel() or os.environ.get("ACCELC_NETWORK_TESTS")),
                    reason="downloads the tvm-ffi cp312 wheel: set ACCELC_NETWORK_TESTS=1 (or pack once)")
def test_runtime_bundle_carries_the_cp312_wheel(tmp_path):
    manifest = gpu_host.pack(tmp_path, cases=["mlp-tiny"], target="cpu", max_mib=MAX_MIB, preset=0,
                             log=lambda *a: None)
    wheel = manifest["runtime"]["wheel"]
    assert wheel.startswith("apache_tvm_ffi-") and "-cp312-cp312-" in wheel and "x86_64" in wheel
    with tarfile.open(tmp_path / "bundle-runtime.tar.xz", "r:xz") as tar:
        data = tar.extractfile(f"runtime/wheels/{wheel}").read()
    (tmp_path / wheel).write_bytes(data)
    with zipfile.ZipFile(tmp_path / wheel) as z:
        assert any(n.startswith("tvm_ffi/") and n.endswith(".so") for n in z.namelist())
