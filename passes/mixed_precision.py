"""Mixed precision for tensor cores: float32 GEMMs → 16-bit inputs, float32 accumulation.

Pattern: every constant-weight float32 matmul / conv2d (as its im2col GEMM, like the other
weight rewrites), and with ``attention=true`` also the activation × activation matmuls
(Q·Kᵀ, P·V). Rewrite: ``matmul(astype(x, dt), W_dt, out_dtype=float32)``; the weight is
stored in ``dt`` (half the bytes), the accumulator and everything outside the GEMMs stay
float32 (softmax, LayerNorm, residuals). On CUDA, dlight's Matmul rule tensorizes float16
GEMMs onto tensor cores (WMMA); bfloat16 keeps float32's range (no overflow on large
activations) at 3 fewer mantissa bits, and runs on the CUDA cores (TVM 0.27 has no bf16 MMA
intrinsic). On CPU both compile and run (as float32 after the cast), which is how the
fidelity is measured anywhere.

Knobs: ``dtype`` (float16 | bfloat16), ``attention``, ``layers``/``exclude``/``keep_first``/
``keep_last`` as in shift-add. Validate with ``accelc report MODEL --passes fp16``: output
cosine and top-1 against the float32 model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import check_knobs, register, replace_calls, static_shape
from .shift_add import LayerRewrite, _patterns, _probe_cos, rewrite_layers

DTYPES = ("float16", "bfloat16")


@dataclass(frozen=True)
class MixedPrecisionOptions:
    dtype: str = "float16"  # the GEMM input type
    attention: bool = True  # also activation × activation matmuls (attention scores, P·V)
    layers: tuple = ()  # allow patterns (fnmatch over ONNX node names); empty = every layer
    exclude: tuple = ()  # deny patterns
    keep_first: bool = False  # leave the first matched layer in float32
    keep_last: bool = False  # leave the last matched layer in float32

    def __post_init__(self):
        check_knobs(self, [("dtype", self.dtype in DTYPES, f"one of {', '.join(DTYPES)}")])
        object.__setattr__(self, "layers", _patterns(self.layers))
        object.__setattr__(self, "exclude", _patterns(self.exclude))

    def describe(self) -> str:
        return f"{self.dtype} GEMM inputs, float32 accumulate" + (", attention too" if self.attention else "")


def round_to(w: np.ndarray, dtype: str) -> np.ndarray:
    """``w`` rounded to ``dtype`` (round to nearest even), returned as float32 values."""
    w = np.asarray(w, np.float32)
    if dtype == "float16":
        return w.astype(np.float16).astype(np.float32)
    bits = w.view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000  # RNE on the top 16 bits
    out = rounded.astype(np.uint32).view(np.float32)
    return np.where(np.isnan(w), w, out)


def _const(w: np.ndarray, dtype: str):
    """A Relax constant of ``w`` in ``dtype`` (bfloat16 through TVM: NumPy has no bf16)."""
    import tvm
    from tvm import relax

    if dtype == "float16":
        return relax.const(w.astype(np.float16))
    bits = (round_to(w, "bfloat16").view(np.uint32) >> 16).astype(np.uint16)
    arr = tvm.runtime.empty(w.shape, "bfloat16")
    arr.copyfrom(bits)
    return relax.const(arr)


@register("fp16", MixedPrecisionOptions)
def mixed_precision(options: MixedPrecisionOptions | None = None):
    """Tensor-core mixed precision: GEMM inputs in float16 (or bfloat16), float32 accumulate."""
    from . import module_pass

    opts = options or MixedPrecisionOptions()

    @module_pass("accelc.fp16")
    def transform(mod, _ctx):
        return run(mod, opts)

    return transform


def run(mod, opts: MixedPrecisionOptions):
    from tvm import relax

    dt = opts.dtype

    def rewrite(bb, cand):
        w = cand.weight
        k, n = w.shape
        wr = round_to(w, dt)
        macs = cand.rows * k * n
        info = LayerRewrite(cand.name, k, n, cand.rows, f"matmul_{dt}", w.nbytes, w.nbytes // 2,
                            float(np.linalg.norm(wr - w) / max(np.linalg.norm(w), 1e-30)), _probe_cos(w, wr),
                            {"mult": macs, "add": macs, "shift": 0, "lut": 0, "datapath": dt}, cand.op)

        def matmul(x2):
            x16 = bb.emit(relax.op.astype(x2, dt))
            return bb.emit(relax.op.matmul(x16, _const(w, dt), out_dtype="float32"))

        return info, matmul

    out = rewrite_layers(mod, opts, "fp16", rewrite)
    return _activation_matmuls(out, dt) if opts.attention else out


def _activation_matmuls(mod, dt: str):
    """Each remaining float32 matmul of two non-constant operands with 16-bit inputs."""
    import json

    import tvm
    from tvm import relax

    from . import append_record

    op = relax.op
    matmul = tvm.ir.Op.get("relax.matmul")
    found = {}
    for gv, func in mod.functions_items():
        if not isinstance(func, relax.Function):
            continue

        def visit(e):
            if (isinstance(e, relax.Call) and e.op.same_as(matmul)
                    and not any(isinstance(a, tvm.ir.GenericConst) for a in e.args)
                    and all(getattr(a.ty, "dtype", None) == "float32" for a in e.args)):
                found[e] = True

        relax.analysis.post_order_visit(func, visit)
    if not found:
        return mod
    shapes = [(static_shape(c.args[0]), static_shape(c.args[1])) for c in found]

    def emit(bb, call, _ctx, _remap):
        a, b = (bb.emit(op.astype(x, dt)) for x in call.args)
        return op.matmul(a, b, out_dtype="float32")

    new = replace_calls(mod, found, emit)
    attrs = mod.attrs
    records = json.loads(str(attrs["accelc.rewrites"])) if attrs is not None and "accelc.rewrites" in attrs else []
    if records and records[-1].get("pass") == "fp16":  # annotate the layer record, not a new one
        records[-1]["activation_matmuls"] = [{"a": a, "b": b} for a, b in shapes]
        return new.with_attr("accelc.rewrites", json.dumps(records))
    return append_record(mod, new, {"pass": "fp16", "describe": f"{dt} activation matmuls", "layers": [],
                                    "dense": [], "activation_matmuls": [{"a": a, "b": b} for a, b in shapes]})
