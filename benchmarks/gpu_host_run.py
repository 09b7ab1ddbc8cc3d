#!/usr/bin/env python3
"""Run a GPU pack (made by ``benchmarks/gpu_host.py pack``) on a machine that has a GPU but no
compiler: no TVM build, no accelc, no package index, no network.

Standard library + NumPy + the TVM *runtime* shipped in ``bundle-runtime.tar.xz`` only; this
file must not import accelc (the compiler library is not on the GPU host).

The one command on the GPU host, once the bundles are in ``gpu-pack/``::

    python3 benchmarks/gpu_host_run.py gpu-pack --out RESULTS.json

(the same file is inside the runtime bundle too: ``python3 gpu-pack/runtime/gpu_host_run.py
gpu-pack`` after a first unpack). It

1. unpacks every bundle present in the folder (``bundle-*.tar.xz``, and the ``.partNofM``
   pieces of a split one once all have arrived), after checking its SHA-256 against
   ``MANIFEST.json``; already unpacked bundles are skipped, so it can run after each arrival;
2. unzips the bundled ``apache-tvm-ffi`` wheel into ``DIR/site``, puts ``DIR/runtime`` (the
   ``tvm`` Python package: ``.py`` files, ``libtvm_runtime.so``, ``libtvm_runtime_cuda.so``,
   ``libcudart``) on ``sys.path`` and sets ``TVM_USE_RUNTIME_LIB=1`` before importing tvm;
3. records the device (name, compute capability, SMs, memory via ``tvm.cuda(0)``; the driver
   via ``nvidia-smi`` when present);
4. per case: loads ``model.so``, runs it on the case's inputs, compares with the reference
   outputs computed on the packing machine (max abs / rel error, pass or fail against the
   case's tolerance), times it (warm-up, then the median of ``--repeat`` ≥ 20 runs, each
   followed by a device sync) and, for the GEMM cases, times cuBLAS on the same device buffers
   when a ``libcublas.so.*`` is found (``"not available"`` otherwise);
5. prints a table (and, for the rewrite cases ``MODEL+PASS``, each one's speed-up over its
   original model timed in the same run, beside the fidelity measured when packing) and
   writes ``RESULTS.json``; exits 1 if any case failed, errored or is missing, 0 when all pass.

Moving the bundles: each bundle is at most ``--max-mib`` (default 60 MiB) so that it fits one
transfer; files written on the GPU host persist between transfers only while it stays up, so
copy each arrival out of the transfer folder (``mkdir -p /tmp/gpu-pack && cp gpu-pack/* /tmp/gpu-pack/``)
and run ``python3 benchmarks/gpu_host_run.py /tmp/gpu-pack --unpack-only`` after each (cheap,
idempotent, frees nothing you still need), then the full command once everything is there.

Self-test on a machine without a GPU: pack CPU artifacts (``gpu_host.py pack --target cpu``)
and run ``gpu_host_run.py DIR --device cpu --use-installed-tvm`` (the installed ``tvm`` and
``tvm_ffi`` instead of the bundled runtime and wheel, still runtime-only).
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import datetime
import gc
import glob
import hashlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
import traceback
import zipfile

import numpy as np

FORMAT = 1
MANIFEST = "MANIFEST.json"
RUNTIME_BUNDLE = "bundle-runtime.tar.xz"
_PART = re.compile(r"^(?P<base>bundle-[\w.-]+\.tar\.xz)\.part(?P<i>\d+)of(?P<n>\d+)$")


# -- shared with the packer (gpu_host.py imports these) -------------------------------------------
def pattern_array(shape, dtype: str, seed: int, levels: int = 17, scale: float = 0.125) -> np.ndarray:
    """Deterministic pseudo-random values ``k·scale``, ``k`` in ``[-(levels//2), levels//2]``,
    from a 64-bit integer hash of the flat index (no RNG: identical on every NumPy).

    With the defaults every value is exact in fp16, and a fp32 GEMM of them is exact up to
    K = 2^18 / levels², whatever the summation order: the reference is the exact answer.
    """
    n = int(np.prod(shape, dtype=np.int64)) if len(shape) else 1
    h = (np.arange(n, dtype=np.uint64) + np.uint64(seed)) * np.uint64(0x9E3779B97F4A7C15)
    h ^= h >> np.uint64(29)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(32)
    k = (h % np.uint64(levels)).astype(np.int64) - levels // 2
    return (k.astype(np.float64) * scale).astype(dtype).reshape(tuple(shape))


def make_inputs(case_dir: str, case: dict) -> dict:
    """The case's feeds: ``inputs.npz`` or the deterministic pattern its ``case.json`` names."""
    spec = case["inputs"]
    if "file" in spec:
        with np.load(os.path.join(case_dir, spec["file"]), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    return {g["name"]: pattern_array(g["shape"], g["dtype"], int(g["seed"]), int(g.get("levels", 17)),
                                     float(g.get("scale", 0.125)))
            for g in spec["generate"]}


def sampled_reference(ref: np.ndarray, samples: int, seed: int = 0) -> dict:
    """What ``expected.npz`` stores for an output too large to ship whole: ``samples`` exact
    entries at random flat positions plus every row's and column's sum and sum of |x| (of the
    output viewed as 2-D, last axis = columns), in float64."""
    flat = ref.reshape(-1)
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(flat.size, size=min(samples, flat.size), replace=False)).astype(np.int64)
    two = ref.reshape(-1, ref.shape[-1] if ref.ndim else 1).astype(np.float64)
    return {"idx": idx, "val": flat[idx], "rowsum": two.sum(1), "rowabs": np.abs(two).sum(1),
            "colsum": two.sum(0), "colabs": np.abs(two).sum(0), "shape": np.array(ref.shape, np.int64)}


def load_expected(path: str) -> dict:
    """``{output: array}`` for whole outputs, ``{output: {"idx": .., ...}}`` for sampled ones
    (stored as ``NAME::idx`` etc.)."""
    out: dict = {}
    with np.load(path, allow_pickle=False) as z:
        for key in z.files:
            if "::" in key:
                name, part = key.split("::", 1)
                out.setdefault(name, {})[part] = z[key]
            else:
                out[key] = z[key]
    return out


def compare(got: np.ndarray, want, rtol: float, atol: float) -> dict:
    """Max abs / rel error and pass (``|a-b| <= atol + rtol·|b|`` everywhere; equal NaN/inf
    count as equal). ``want`` is an array, or a sampled reference (entries + row/col sums,
    whose bound is the elementwise bound summed)."""
    got = np.asarray(got)
    if isinstance(want, dict):
        shape = tuple(int(s) for s in want["shape"])
        if tuple(got.shape) != shape:
            return {"ok": False, "max_abs": float("inf"), "max_rel": float("inf"),
                    "why": f"shape {list(got.shape)}, expected {list(shape)}"}
        res = _compare_arrays(got.reshape(-1)[want["idx"]], want["val"], rtol, atol)
        two = got.reshape(-1, shape[-1] if shape else 1).astype(np.float64)
        sums_ok = True
        for axis, s, a in ((1, "rowsum", "rowabs"), (0, "colsum", "colabs")):
            n = two.shape[axis]
            err = np.abs(two.sum(axis) - want[s])
            bound = atol * n + rtol * want[a] + 1e-9 * want[a]
            if not np.all(np.nan_to_num(err, nan=np.inf) <= bound):
                sums_ok = False
        res["checked"] = f"{len(want['idx'])} sampled entries + row/column sums"
        if not sums_ok:
            res["ok"] = False
            res["why"] = "row/column sums differ beyond the tolerance"
        return res
    want = np.asarray(want)
    if got.shape != want.shape:
        return {"ok": False, "max_abs": float("inf"), "max_rel": float("inf"),
                "why": f"shape {list(got.shape)}, expected {list(want.shape)}"}
    res = _compare_arrays(got, want, rtol, atol)
    res["checked"] = "all entries"
    return res


def _compare_arrays(a: np.ndarray, b: np.ndarray, rtol: float, atol: float) -> dict:
    if a.dtype.kind in "biu" and b.dtype.kind in "biu":
        diff = np.abs(a.astype(np.int64) - b.astype(np.int64))
        worst = float(diff.max(initial=0))
        return {"ok": bool(np.all(diff == 0)), "max_abs": worst, "max_rel": worst}
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    same = (np.isnan(a64) & np.isnan(b64)) | (np.isinf(a64) & (a64 == b64))
    diff = np.where(same, 0.0, np.abs(a64 - b64))
    diff = np.nan_to_num(diff, nan=np.inf)
    bound = atol + rtol * np.where(same, 0.0, np.abs(b64))
    rel = diff / np.maximum(np.abs(b64), 1e-30)
    peak = float(np.abs(np.where(np.isfinite(b64), b64, 0.0)).max(initial=0.0))
    return {"ok": bool(np.all(diff <= bound)), "max_abs": float(diff.max(initial=0.0)),
            "max_rel": float(rel.max(initial=0.0)),
            "max_abs_over_peak": float(diff.max(initial=0.0) / peak) if peak else None}


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# -- unpacking -------------------------------------------------------------------------------------
def _extract(tar_path: str, dest: str) -> list[str]:
    with tarfile.open(tar_path, "r:xz") as tar:
        names = tar.getnames()
        for n in names:  # bundles hold relative paths under runtime/ and cases/ only
            if n.startswith("/") or ".." in n.split("/"):
                raise RuntimeError(f"{os.path.basename(tar_path)}: unsafe member path {n!r}")
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, filter="data")
        else:  # Python < 3.11.4
            tar.extractall(dest)
    return names


def unpack(folder: str, manifest: dict | None, log=print) -> dict:
    """Unpack the bundles present in ``folder`` (idempotent); ``{bundle: status}``."""
    known = {b["file"]: b for b in (manifest or {}).get("bundles", [])}
    done_dir = os.path.join(folder, ".unpacked")
    os.makedirs(done_dir, exist_ok=True)
    status: dict[str, str] = {}
    whole = sorted(f for f in os.listdir(folder) if f.startswith("bundle-") and f.endswith(".tar.xz"))
    parts: dict[str, dict[int, str]] = {}
    counts: dict[str, int] = {}
    for f in os.listdir(folder):
        m = _PART.match(f)
        if m:
            parts.setdefault(m["base"], {})[int(m["i"])] = f
            counts[m["base"]] = int(m["n"])
    for base in sorted(parts):
        have, n = parts[base], counts[base]
        if os.path.exists(os.path.join(done_dir, base + ".json")):
            whole.append(base)
            continue
        if sorted(have) != list(range(1, n + 1)):
            status[base] = f"incomplete: {len(have)} of {n} parts present"
            log(f"  {base}: {status[base]}, not unpacked yet")
            continue
        joined = os.path.join(folder, base)
        with open(joined + ".tmp", "wb") as out:
            for i in range(1, n + 1):
                with open(os.path.join(folder, have[i]), "rb") as src:
                    shutil.copyfileobj(src, out, 1 << 20)
        os.replace(joined + ".tmp", joined)
        whole.append(base)
    for name in sorted(set(whole)):
        path = os.path.join(folder, name)
        marker = os.path.join(done_dir, name + ".json")
        want = known.get(name, {}).get("sha256")
        if os.path.exists(marker):
            with open(marker) as f:
                prev = json.load(f)
            if want is None or prev.get("sha256") == want:
                status[name] = "already unpacked"
                continue
        if not os.path.exists(path):
            status[name] = "missing"
            continue
        digest = sha256_file(path)
        if want is not None and digest != want:
            status[name] = f"corrupt: sha256 {digest[:12]}…, MANIFEST says {want[:12]}…"
            log(f"  {name}: {status[name]}; not unpacked")
            continue
        try:
            names = _extract(path, folder)
        except Exception as err:  # noqa: BLE001
            status[name] = f"cannot unpack: {err}"
            log(f"  {name}: {status[name]}")
            continue
        with open(marker, "w") as f:
            json.dump({"sha256": digest, "members": len(names), "at": _now()}, f)
        status[name] = "unpacked"
        log(f"  {name}: unpacked ({len(names)} files, {os.path.getsize(path) / 2**20:.1f} MiB)")
    return status


# -- the TVM runtime -------------------------------------------------------------------------------
def setup_runtime(folder: str, use_installed: bool, log=print) -> dict:
    """Make ``import tvm`` give the runtime-only TVM of the pack (or the installed one)."""
    os.environ["TVM_USE_RUNTIME_LIB"] = "1"
    info = {"mode": "installed" if use_installed else "bundled"}
    if use_installed:
        return info
    rt = os.path.join(folder, "runtime")
    if not os.path.isdir(os.path.join(rt, "tvm")):
        raise RuntimeError(f"{folder}: no unpacked runtime ({RUNTIME_BUNDLE} has not arrived?); "
                           "or pass --use-installed-tvm")
    wheels = sorted(glob.glob(os.path.join(rt, "wheels", "apache_tvm_ffi-*.whl")))
    site = os.path.join(folder, "site")
    if wheels:
        wheel = wheels[-1]
        marker = os.path.join(site, ".wheel")
        if not (os.path.exists(marker) and open(marker).read() == os.path.basename(wheel)):
            tag = f"cp{sys.version_info[0]}{sys.version_info[1]}"
            if f"-{tag}-" not in os.path.basename(wheel):
                log(f"  warning: {os.path.basename(wheel)} is not for this Python ({tag}); trying anyway")
            shutil.rmtree(site, ignore_errors=True)
            os.makedirs(site)
            with zipfile.ZipFile(wheel) as z:
                z.extractall(site)
            with open(marker, "w") as f:
                f.write(os.path.basename(wheel))
            log(f"  installed {os.path.basename(wheel)} into {site}")
        sys.path.insert(0, site)
        info["tvm_ffi_wheel"] = os.path.basename(wheel)
    else:
        log("  note: no tvm-ffi wheel in the runtime bundle (packed with --no-wheel): "
            "using an installed tvm_ffi")
    sys.path.insert(0, rt)
    try:  # tvm_ffi needs a recent typing_extensions; the pack carries one
        import typing_extensions as te

        ok = hasattr(te, "get_annotations") and hasattr(te, "dataclass_transform")
    except ImportError:
        ok = False
    if not ok and os.path.exists(os.path.join(rt, "extra", "typing_extensions.py")):
        sys.modules.pop("typing_extensions", None)
        sys.path.insert(0, os.path.join(rt, "extra"))
        info["typing_extensions"] = "bundled"
    return info


def load_device_runtime(tvm, device: str) -> dict:
    """Load TVM's CUDA runtime next to ``libtvm_runtime`` (runtime-only TVM does not)."""
    libdir = os.path.dirname(os.path.realpath(tvm.base._LOADED_LIBS["tvm_runtime"]._name))
    loaded = {"libdir": libdir}
    extra = os.path.join(libdir, "libtvm_runtime_extra.so")
    if os.path.exists(extra):
        try:
            ctypes.CDLL(extra, mode=ctypes.RTLD_LOCAL)
            loaded["extra"] = True
        except OSError as err:
            loaded["extra"] = f"not loaded: {err}"
    if device == "cuda":
        lib = os.path.join(libdir, "libtvm_runtime_cuda.so")
        if not os.path.exists(lib):
            raise RuntimeError(f"{lib} is missing: the runtime bundle must carry TVM's CUDA runtime")
        try:
            ctypes.CDLL(lib, mode=ctypes.RTLD_LOCAL)
        except OSError as err:
            raise RuntimeError(f"cannot load libtvm_runtime_cuda.so ({err}); is the NVIDIA driver "
                               "(libcuda.so.1) installed?") from None
        loaded["cuda"] = lib
    return loaded


def device_info(tvm, dev, device: str) -> dict:
    info: dict = {"kind": device, "host": platform.node(), "python": platform.python_version(),
                  "numpy": np.__version__, "tvm": getattr(tvm, "__version__", "?")}
    try:
        import tvm_ffi

        info["tvm_ffi"] = tvm_ffi.__version__
    except Exception:  # noqa: BLE001
        pass
    if device == "cpu":
        info["name"] = _cpu_name()
        info["cpus"] = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        return info
    if not dev.exist:
        raise RuntimeError("tvm.cuda(0) does not exist: no CUDA device visible (driver, CUDA_VISIBLE_DEVICES?)")
    for key in ("device_name", "compute_version", "multi_processor_count", "total_global_memory",
                "max_shared_memory_per_block", "max_clock_rate", "l2_cache_size_bytes", "api_version",
                "driver_version"):
        try:
            info[key] = getattr(dev, key)
        except Exception as err:  # noqa: BLE001
            info[key] = f"unavailable ({type(err).__name__})"
    info["name"] = info.get("device_name")
    cv = str(info.get("compute_version", ""))
    info["arch"] = "sm_" + cv.replace(".", "") if re.fullmatch(r"\d+\.\d+", cv) else None
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=name,driver_version,memory.total,clocks.max.sm,"
                                  "power.limit", "--format=csv,noheader"], capture_output=True,
                                 text=True, timeout=30).stdout.strip().splitlines()
            if out:
                fields = [x.strip() for x in out[0].split(",")]
                info["nvidia_smi"] = dict(zip(["name", "driver", "memory", "max_sm_clock", "power_limit"], fields))
                info["driver"] = info["nvidia_smi"].get("driver")
            ver = subprocess.run([smi], capture_output=True, text=True, timeout=30).stdout
            m = re.search(r"CUDA Version:\s*([\d.]+)", ver)
            if m:
                info["driver_cuda_version"] = m.group(1)
        except Exception as err:  # noqa: BLE001
            info["nvidia_smi"] = f"failed: {err}"
    else:
        info["nvidia_smi"] = "not found"
    return info


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# -- cuBLAS baseline (optional) --------------------------------------------------------------------
_CUDA_R_32F, _CUDA_R_16F, _CUDA_R_8I, _CUDA_R_32I = 0, 2, 3, 10
_CUBLAS_COMPUTE_32F, _CUBLAS_COMPUTE_32I = 68, 72
_CUBLAS_GEMM_DEFAULT = -1


def find_cublas() -> str | None:
    """A loadable ``libcublas.so*`` on this host (system, CUDA toolkit or ``nvidia-cublas`` wheel)."""
    cands = []
    name = ctypes.util.find_library("cublas")
    if name:
        cands.append(name)
    for pat in ("/usr/local/cuda*/lib64/libcublas.so*", "/usr/local/cuda*/targets/*/lib/libcublas.so*",
                "/usr/lib/x86_64-linux-gnu/libcublas.so*", "/usr/lib64/libcublas.so*",
                "/opt/conda/lib/libcublas.so*"):
        cands += sorted(glob.glob(pat), reverse=True)
    for p in sys.path:
        cands += sorted(glob.glob(os.path.join(p, "nvidia", "cu*", "lib", "libcublas.so*")), reverse=True)
        cands += sorted(glob.glob(os.path.join(p, "nvidia", "cublas", "lib", "libcublas.so*")), reverse=True)
    seen = set()
    for c in cands:
        if c in seen or "Lt" in os.path.basename(c):
            continue
        seen.add(c)
        try:
            ctypes.CDLL(c, mode=ctypes.RTLD_GLOBAL)
            return c
        except OSError:
            continue
    return None


class Cublas:
    """``cublasGemmEx`` through ctypes on device buffers TVM allocated (row-major C = A·B)."""

    def __init__(self, path: str, libdir: str | None = None):
        self.path = path
        self.lib = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
        self.handle = ctypes.c_void_p()
        self._check(self.lib.cublasCreate_v2(ctypes.byref(self.handle)), "cublasCreate")
        ver = ctypes.c_int()
        self.version = (ver.value if self.lib.cublasGetVersion_v2(self.handle, ctypes.byref(ver)) == 0
                        else None)
        self.lib.cublasGemmEx.restype = ctypes.c_int
        self.cudart = _cudart(libdir)

    @staticmethod
    def _check(rc: int, what: str) -> None:
        if rc != 0:
            raise RuntimeError(f"{what} failed with cuBLAS status {rc}")

    def gemm(self, a, b, c, m: int, n: int, k: int, in_dtype: str, out_dtype: str) -> None:
        types = {"float32": _CUDA_R_32F, "float16": _CUDA_R_16F, "int8": _CUDA_R_8I, "int32": _CUDA_R_32I}
        integer = in_dtype == "int8"
        scalar = ctypes.c_int if integer else ctypes.c_float
        alpha, beta = scalar(1), scalar(0)
        # column-major view: Cᵀ (n×m) = Bᵀ (n×k) · Aᵀ (k×m)
        rc = self.lib.cublasGemmEx(
            self.handle, 0, 0, n, m, k, ctypes.byref(alpha),
            ctypes.c_void_p(b.data_ptr()), types[in_dtype], n,
            ctypes.c_void_p(a.data_ptr()), types[in_dtype], k, ctypes.byref(beta),
            ctypes.c_void_p(c.data_ptr()), types[out_dtype], n,
            _CUBLAS_COMPUTE_32I if integer else _CUBLAS_COMPUTE_32F, _CUBLAS_GEMM_DEFAULT)
        self._check(rc, "cublasGemmEx")

    def sync(self) -> None:
        if self.cudart is not None:
            rc = self.cudart.cudaDeviceSynchronize()
            if rc != 0:
                raise RuntimeError(f"cudaDeviceSynchronize failed ({rc})")

    def close(self) -> None:
        if self.handle:
            self.lib.cublasDestroy_v2(self.handle)
            self.handle = ctypes.c_void_p()


def _cudart(libdir: str | None = None):
    """The CUDA runtime TVM's CUDA module loaded (the pack's, next to it), for device syncs."""
    names = sorted(glob.glob(os.path.join(libdir, "libcudart.so.*")), reverse=True) if libdir else []
    for name in names + ["libcudart.so.13", "libcudart.so.12", "libcudart.so"]:
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


def cublas_gemm_case(cub: Cublas, tvm, dev, case: dict, feeds: dict, expected: dict, warmup: int,
                     repeat: int) -> dict:
    g = case["gemm"]
    names = [s["name"] for s in case["input_specs"]]
    a = tvm.runtime.tensor(feeds[names[0]], dev)
    b = tvm.runtime.tensor(feeds[names[1]], dev)
    out_spec = case["output_specs"][0]
    c = tvm.runtime.empty(tuple(out_spec["shape"]), out_spec["dtype"], dev)

    def call():
        cub.gemm(a, b, c, g["m"], g["n"], g["k"], g["in_dtype"], g["out_dtype"])

    stats = time_it(call, cub.sync, warmup, repeat)
    tol = case["tolerance"]
    check = compare(c.numpy(), expected[out_spec["name"]], tol["rtol"], tol["atol"])
    stats.update(status="pass" if check["ok"] else "fail", max_abs=check["max_abs"],
                 version=cub.version, library=cub.path)
    stats["tflops"] = _tflops(case, stats["batched_ms"])
    return stats


# -- running a case --------------------------------------------------------------------------------
def time_it(call, sync, warmup: int, repeat: int, batch_ms: float = 5.0) -> dict:
    """Latency of ``call``: ``repeat`` single calls, each followed by ``sync`` (median, spread);
    then 20 samples of ``number`` back-to-back calls and one sync (``batched_ms``, per call:
    what the kernels take once the per-call launch and sync overhead is amortised)."""
    for _ in range(max(warmup, 1)):
        call()
    sync()
    samples = []
    for _ in range(max(repeat, 1)):
        t0 = time.perf_counter()
        call()
        sync()
        samples.append((time.perf_counter() - t0) * 1e3)
    samples.sort()
    q = lambda p: samples[min(len(samples) - 1, int(p * len(samples)))]  # noqa: E731
    med = statistics.median(samples)
    number = max(1, min(1000, int(batch_ms / max(med, 1e-4))))
    batched = []
    for _ in range(20):
        t0 = time.perf_counter()
        for _ in range(number):
            call()
        sync()
        batched.append((time.perf_counter() - t0) * 1e3 / number)
    return {"median_ms": med, "mean_ms": statistics.fmean(samples),
            "std_ms": statistics.pstdev(samples), "min_ms": samples[0], "p10_ms": q(0.1),
            "p90_ms": q(0.9), "max_ms": samples[-1], "runs": len(samples), "warmup": max(warmup, 1),
            "batched_ms": statistics.median(batched), "batch_number": number, "batch_samples": len(batched)}


def _tflops(case: dict, ms: float | None):
    flops = case.get("flops")
    return flops / (ms * 1e-3) / 1e12 if flops and ms else None


def _to_numpy(value, spec: dict) -> np.ndarray:
    if hasattr(value, "numpy"):
        return value.numpy()
    if isinstance(value, tuple):  # ShapeTuple
        return np.array([int(v) for v in value], dtype=spec["dtype"]).reshape(spec["shape"])
    return np.array(getattr(value, "value", value), dtype=spec["dtype"]).reshape(spec["shape"])


def run_case(tvm, dev, device: str, case_dir: str, case: dict, args, cub) -> dict:
    res: dict = {"name": case["name"], "kind": case.get("kind"), "target": case.get("target"),
                 "arch": case.get("arch"), "tolerance": case["tolerance"]}
    res.update({k: case[k] for k in ("base", "passes", "fidelity") if k in case})
    if case.get("target") != device:
        res.update(status="error", error=f"packed for target '{case.get('target')}', running on '{device}'")
        return res
    if device == "cuda" and case.get("arch") and args.device_arch:
        want, have = int(re.sub(r"\D", "", case["arch"])[:3]), int(re.sub(r"\D", "", args.device_arch)[:3])
        if have < want:
            res.update(status="error", error=f"built for {case['arch']}, this GPU is {args.device_arch}")
            return res
    t_load = time.perf_counter()
    mod = tvm.runtime.load_module(os.path.join(case_dir, case["artifact"]))
    vm = tvm.runtime.vm.VirtualMachine(mod, dev)
    res["load_s"] = time.perf_counter() - t_load
    feeds = make_inputs(case_dir, case)
    tensors = []
    for spec in case["input_specs"]:
        arr = feeds.get(spec["name"])
        if arr is None:
            raise RuntimeError(f"input '{spec['name']}' missing from the case's inputs")
        if str(arr.dtype) != spec["dtype"] or list(arr.shape) != list(spec["shape"]):
            raise RuntimeError(f"input '{spec['name']}' is {arr.dtype}{list(arr.shape)}, the artifact "
                               f"wants {spec['dtype']}{list(spec['shape'])}")
        tensors.append(tvm.runtime.tensor(np.ascontiguousarray(arr), dev))
    main = vm["main"]
    t0 = time.perf_counter()
    out = main(*tensors)
    dev.sync()
    res["first_run_ms"] = (time.perf_counter() - t0) * 1e3
    outs = [out] if (isinstance(out, (tvm.runtime.Tensor, tvm.runtime.ShapeTuple))
                     or not hasattr(out, "__len__")) else list(out)
    got = {spec["name"]: _to_numpy(o, spec) for spec, o in zip(case["output_specs"], outs)}
    expected = load_expected(os.path.join(case_dir, case["expected"]))
    tol = case["tolerance"]
    checks = {}
    for name, want in expected.items():
        if name not in got:
            checks[name] = {"ok": False, "max_abs": float("inf"), "max_rel": float("inf"),
                            "why": "output missing"}
        else:
            checks[name] = compare(got[name], want, tol["rtol"], tol["atol"])
    worst = max(checks.values(), key=lambda c: (not c["ok"], c["max_abs"])) if checks else {"ok": False}
    res["outputs"] = checks
    res["max_abs"] = worst.get("max_abs")
    res["max_rel"] = worst.get("max_rel")
    res["status"] = "pass" if checks and all(c["ok"] for c in checks.values()) else "fail"
    if not checks:
        res["why"] = "no expected outputs"
    del got, outs, out
    res["latency"] = time_it(lambda: main(*tensors), dev.sync, args.warmup, args.repeat)
    res["median_ms"] = res["latency"]["median_ms"]
    res["tflops"] = _tflops(case, res["latency"]["batched_ms"])
    if case.get("gemm") and device == "cuda":
        if cub is None:
            res["cublas"] = {"status": "not available", "why": args.cublas_why}
        else:
            try:
                res["cublas"] = cublas_gemm_case(cub, tvm, dev, case, feeds, expected, args.warmup, args.repeat)
            except Exception as err:  # noqa: BLE001 - the baseline is optional
                res["cublas"] = {"status": "error", "why": _one_line(err)}
    del vm, mod, tensors, main
    gc.collect()
    return res


def _one_line(err: BaseException) -> str:
    lines = [ln.strip() for ln in str(err).strip().splitlines() if ln.strip()]
    return f"{type(err).__name__}: {lines[-1] if lines else ''}"[:400]


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _fmt(x, spec: str = ".3g") -> str:
    return "-" if x is None else format(x, spec)


def print_table(results: list[dict], out=sys.stdout) -> None:
    head = ("case", "status", "max abs err", "max rel err", "rtol/atol", "median ms", "p10-p90 ms",
            "batched ms", "TFLOP/s", "cuBLAS batched ms", "cuBLAS TFLOP/s")
    rows = []
    for r in results:
        lat = r.get("latency") or {}
        cub = r.get("cublas") or {}
        tol = r.get("tolerance") or {}
        rows.append((r["name"], r["status"], _fmt(r.get("max_abs")), _fmt(r.get("max_rel")),
                     f"{tol.get('rtol', '-')}/{tol.get('atol', '-')}" if tol else "-",
                     _fmt(lat.get("median_ms"), ".4f"),
                     f"{lat['p10_ms']:.4f}-{lat['p90_ms']:.4f}" if lat else "-",
                     _fmt(lat.get("batched_ms"), ".4f"), _fmt(r.get("tflops"), ".1f"),
                     _fmt(cub.get("batched_ms"), ".4f") if "batched_ms" in cub else (cub.get("status") or "-"),
                     _fmt(cub.get("tflops"), ".1f")))
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    print(line(head), file=out)
    print("  ".join("-" * w for w in widths), file=out)
    for row in rows:
        print(line(row), file=out)
    for r in results:
        if r.get("error") or r.get("why"):
            print(f"  {r['name']}: {r.get('error') or r.get('why')}", file=out)
        for name, c in (r.get("outputs") or {}).items():
            if not c.get("ok") and c.get("why"):
                print(f"  {r['name']}/{name}: {c['why']}", file=out)
    speedups = rewrite_speedups(results)
    if speedups:
        print("\nrewrites vs their original models on this device (speed-up = original median / rewrite "
              "median; fidelity measured when packed):", file=out)
        for s in speedups:
            print(f"  {s['name']:<32} {s['base']:<14} {_fmt(s.get('base_ms'), '.4f'):>10} ms -> "
                  f"{_fmt(s.get('ms'), '.4f'):>10} ms  {_fmt(s.get('speedup'), '.2f')}x  "
                  f"cosine {_fmt(s.get('cosine'), '.5f')}  top-1 {_fmt(s.get('top1'), '.3f')}", file=out)


def rewrite_speedups(results: list[dict]) -> list[dict]:
    """For each passing rewrite case whose original model ran (and passed) in the same run: both
    medians and the speed-up; None where the original is missing or failed."""
    by = {r["name"]: r for r in results}
    rows = []
    for r in results:
        if not r.get("base"):
            continue
        base = by.get(r["base"])
        ok = r.get("status") == "pass" and base is not None and base.get("status") == "pass"
        fid = r.get("fidelity") or {}
        rows.append({"name": r["name"], "base": r["base"], "ms": r.get("median_ms"),
                     "base_ms": base.get("median_ms") if base else None,
                     "speedup": base["median_ms"] / r["median_ms"] if ok and r.get("median_ms") else None,
                     "cosine": fid.get("cosine"), "top1": fid.get("top1")})
    return rows


# -- main ------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir", help="folder holding the bundles (and MANIFEST.json); unpacked in place")
    ap.add_argument("--out", help="results file (default DIR/RESULTS.json)")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--cases", help="comma-separated case names (default: all)")
    ap.add_argument("--repeat", type=int, default=50, help="timed runs per case (≥ 20; default 50)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--unpack-only", action="store_true", help="unpack what has arrived, then stop")
    ap.add_argument("--use-installed-tvm", action="store_true",
                    help="use the installed tvm/tvm_ffi (runtime-only) instead of the bundled ones")
    ap.add_argument("--no-cublas", action="store_true", help="skip the cuBLAS baseline")
    args = ap.parse_args(argv)
    if args.repeat < 20:
        ap.error("--repeat must be at least 20")
    folder = os.path.abspath(args.dir)
    if not os.path.isdir(folder):
        print(f"error: {folder} is not a folder", file=sys.stderr)
        return 2
    mpath = os.path.join(folder, MANIFEST)
    manifest = None
    if os.path.exists(mpath):
        with open(mpath) as f:
            manifest = json.load(f)
    print(f"gpu_host_run: {folder}")
    bundles = unpack(folder, manifest)
    if args.unpack_only:
        _write_json(args.out or os.path.join(folder, "UNPACK.json"), {"bundles": bundles, "at": _now()})
        return 0 if not any(s.startswith(("corrupt", "cannot")) for s in bundles.values()) else 1

    out = args.out or os.path.join(folder, "RESULTS.json")
    try:
        rt_info = setup_runtime(folder, args.use_installed_tvm)
        import tvm  # noqa: E402 - after sys.path and TVM_USE_RUNTIME_LIB are set

        import tvm.runtime.vm  # noqa: F401

        libs = load_device_runtime(tvm, args.device)
        dev = tvm.cuda(0) if args.device == "cuda" else tvm.cpu(0)
        dev_info = device_info(tvm, dev, args.device)
    except (RuntimeError, OSError, ImportError) as err:
        msg = _one_line(err)
        print(f"error: {msg}", file=sys.stderr)
        _write_json(out, {"format": FORMAT, "at": _now(), "folder": folder, "bundles": bundles,
                          "error": msg, "cases": [], "summary": {"pass": 0}})
        return 2
    args.device_arch = dev_info.get("arch")
    print(f"device: {dev_info.get('name')}" + (f" ({dev_info.get('arch')}, driver {dev_info.get('driver') or dev_info.get('driver_version')})"
                                                if args.device == "cuda" else ""))
    print(f"tvm {dev_info.get('tvm')} from {os.path.dirname(tvm.__file__)} (runtime only: {tvm.base._RUNTIME_ONLY})")

    cub, args.cublas_why = None, None
    if args.device == "cuda" and not args.no_cublas:
        path = find_cublas()
        if path is None:
            args.cublas_why = "no libcublas.so* found on this host"
        else:
            try:
                cub = Cublas(path, libs.get("libdir"))
            except Exception as err:  # noqa: BLE001
                args.cublas_why = f"{path}: {_one_line(err)}"
    elif args.no_cublas:
        args.cublas_why = "--no-cublas"

    cases_dir = os.path.join(folder, "cases")
    present = sorted(os.listdir(cases_dir)) if os.path.isdir(cases_dir) else []
    listed = [c["name"] for c in (manifest or {}).get("cases", [])] or present
    wanted = [c.strip() for c in args.cases.split(",")] if args.cases else listed
    unknown = [c for c in wanted if c not in listed and c not in present]
    if unknown:
        print(f"error: unknown case(s) {', '.join(unknown)}; the pack has {', '.join(listed)}", file=sys.stderr)
        return 2
    results = []
    for name in wanted:
        case_dir = os.path.join(cases_dir, name)
        cpath = os.path.join(case_dir, "case.json")
        if not os.path.exists(cpath):
            bundle = next((c.get("bundle") for c in (manifest or {}).get("cases", []) if c["name"] == name), None)
            results.append({"name": name, "status": "missing",
                            "error": f"not unpacked (its bundle {bundle or '?'} has not arrived)"})
            print(f"  {name}: missing")
            continue
        with open(cpath) as f:
            case = json.load(f)
        print(f"  {name}: running ...", flush=True)
        try:
            r = run_case(tvm, dev, args.device, case_dir, case, args, cub)
        except Exception as err:  # noqa: BLE001 - one case's failure must not stop the others
            r = {"name": name, "status": "error", "error": _one_line(err), "tolerance": case.get("tolerance"),
                 "traceback": traceback.format_exc(limit=4)}
        results.append(r)
        print(f"  {name}: {r['status']}" + (f", median {r['median_ms']:.4f} ms" if r.get("median_ms") else "")
              + (f" ({r['error']})" if r.get("error") else ""), flush=True)
    if cub is not None:
        cub.close()
    print()
    print_table(results)
    report = {"format": FORMAT, "at": _now(), "folder": folder, "device": dev_info, "runtime": rt_info,
              "rewrites": rewrite_speedups(results),
              "libraries": libs, "bundles": bundles,
              "cublas": {"library": cub.path, "version": cub.version} if cub else {"status": "not available",
                                                                                   "why": args.cublas_why},
              "pack": {k: (manifest or {}).get(k) for k in ("created", "arch", "target", "versions")},
              "repeat": args.repeat, "warmup": args.warmup, "cases": results,
              "summary": {s: sum(r["status"] == s for r in results) for s in ("pass", "fail", "error", "missing")}}
    _write_json(out, report)
    print(f"\n{report['summary']['pass']}/{len(results)} passed; results in {out}")
    return 0 if results and report["summary"]["pass"] == len(results) else 1


def _write_json(path: str, data) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, default=_json_default)
        f.write("\n")
    os.replace(tmp, path)


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


if __name__ == "__main__":
    sys.exit(main())
