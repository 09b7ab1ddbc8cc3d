"""The CPU target: a TVM tag built from the host, and a real lowering pipeline.

``tvm.compile`` on an llvm target only legalizes: no fusion, no schedule, naive loops. This
pipeline legalizes (with vectorizable fast-math kernels), fuses, applies a MetaSchedule
database when given one, schedules everything else with the default rules in
``accelc.schedules.cpu``, folds weight packing into constants, and lowers for the VM.
"""

from __future__ import annotations

import math
import os

import numpy as np
import tvm
from tvm import relax, te, tirx, topi
from tvm.s_tir import dlight as dl
from tvm.target import Target
from tvm.target.codegen import llvm_get_system_cpu

from ..errors import ArtifactError
from ..schedules.cpu import default_rules
from .cpu_attention import fuse_attention
from .cpu_fusion import fuse_layout_into_matmul
from ..passes import constant_take, static_shape
from .graph_opt import fold_batch_norm, has_op

TAG = "accelc/cpu"
# ISA extensions that decide whether code built for one x86 CPU runs on another.
ISA_FEATURES = ("sse4.2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl",
                "avx512vnni", "avxvnni", "amx-tile", "neon", "sve")


def host_cores() -> int:
    """Cores this process may run on (affinity-aware), the default thread count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def host_target(num_cores: int | None = None, mcpu: str | None = None) -> Target:
    """An llvm target for this machine: its real ``mcpu`` (hence ISA features) and cores."""
    cfg = {
        "kind": "llvm",
        "mcpu": mcpu or llvm_get_system_cpu(),
        "num-cores": int(num_cores or host_cores()),
        "keys": ["cpu"],
    }
    return Target(cfg)


def register_tag() -> None:
    """Register ``accelc/cpu`` (this host) with TVM's tag registry; idempotent."""
    cfg = {k: v for k, v in host_target().export().items() if k in ("kind", "mcpu", "num-cores", "keys")}
    tvm.target.tag.register_tag(TAG, cfg, override=True)


def device():
    return tvm.cpu(0)


def isa_features(target: Target) -> list[str]:
    """The ISA extensions ``target`` may use (what an artifact built for it requires)."""
    from ..schedules.cpu.base import has_isa_feature

    return [feat for feat in ISA_FEATURES if has_isa_feature(target, feat)]


def check_runnable(meta_target: dict, required: list[str]) -> None:
    """Refuse an artifact whose code needs ISA extensions this host lacks."""
    if meta_target.get("kind") != "llvm":
        raise ArtifactError(f"artifact targets '{meta_target.get('kind')}', not this CPU")
    missing = sorted(set(required) - set(isa_features(host_target())))
    if missing:
        raise ArtifactError(
            f"artifact was built for CPU '{meta_target.get('mcpu')}' and needs {', '.join(missing)}, "
            f"which this CPU ('{llvm_get_system_cpu()}') lacks: recompile it here"
        )


# -- fast-math legalization ------------------------------------------------------------------
# libm's expf/erff/tanhf are scalar calls that LLVM cannot vectorize; TOPI's fast_* versions are
# polynomial (|rel err| ≲ 1e-6 on float32, well inside the 1e-3 verification tolerance) and
# vectorize. onnxruntime's MLAS kernels make the same trade.
def _unary(fn, name):
    def legalize(bb: relax.BlockBuilder, call: relax.Call):
        if call.args[0].ty.dtype != "float32":
            return None
        return bb.call_te(fn, call.args[0], primfunc_name_hint=name)

    return legalize


def _gelu(bb: relax.BlockBuilder, call: relax.Call):
    if call.args[0].ty.dtype != "float32":
        return None

    def te_gelu(x: te.Tensor):
        erf = topi.fast_erf(x * tirx.const(math.sqrt(0.5), "float32"))
        return x * (tirx.const(0.5, "float32") + erf * tirx.const(0.5, "float32"))

    return bb.call_te(te_gelu, call.args[0], primfunc_name_hint="gelu")


def _gelu_tanh(bb: relax.BlockBuilder, call: relax.Call):
    if call.args[0].ty.dtype != "float32":
        return None

    def te_gelu_tanh(x: te.Tensor):
        c = tirx.const(math.sqrt(2.0 / math.pi), "float32")
        inner = c * x * (tirx.const(1.0, "float32") + tirx.const(0.044715, "float32") * x * x)
        return tirx.const(0.5, "float32") * x * (tirx.const(1.0, "float32") + topi.fast_tanh(inner))

    return bb.call_te(te_gelu_tanh, call.args[0], primfunc_name_hint="gelu_tanh")


def _softmax(bb: relax.BlockBuilder, call: relax.Call):
    x = call.args[0]
    if x.ty.dtype != "float32":
        return None
    rows = _softmax_rows(x, int(call.attrs.axis))
    if rows:  # rows longer than one vector: the written-out kernel
        from ..schedules.softmax import softmax_rows

        gv = bb.add_func(softmax_rows(rows[0], rows[1]), "softmax_rows")
        return relax.call_tir(gv, [x], call.ty)
    return bb.call_te(topi.nn.fast_softmax, x, call.attrs.axis, primfunc_name_hint="softmax")


def _softmax_rows(x: relax.Expr, axis: int):
    """(static shape, lanes) when softmax over ``axis`` runs along the last axis, static, in
    rows longer than one float32 vector of the current target; None otherwise.

    Ragged rows (197 tokens) need the written-out kernel (RowReduction leaves them scalar);
    whole-vector rows are faster in it too: 1.4-1.8x RowReduction's rfactor schedule on rows of
    32 to 1024 (BERT's 12x128x128: 64 vs 87 us, 2 threads)."""
    from ..schedules.cpu.base import cpu_shape

    shape = getattr(x.ty, "shape", None)
    values = getattr(shape, "values", None)
    if values is None or not all(isinstance(v, tirx.IntImm) for v in values):
        return None
    dims = [int(v) for v in values]
    if not dims or axis not in (-1, len(dims) - 1):
        return None
    target = Target.current(allow_none=True)
    if target is None or target.kind.name != "llvm":
        return None
    lanes = cpu_shape(target).lanes("float32")
    return (dims, lanes) if dims[-1] > lanes else None


def _sigmoid(bb: relax.BlockBuilder, call: relax.Call):
    if call.args[0].ty.dtype != "float32":
        return None
    one = tirx.const(1.0, "float32")
    return bb.call_te(lambda x: one / (one + topi.fast_exp(-x)), call.args[0], primfunc_name_hint="sigmoid")


def _divide_by_constant(bb: relax.BlockBuilder, call: relax.Call):
    """``x / c`` with a constant float ``c`` of one element (attention's ``/ sqrt(d)``, GELU's
    ``/ sqrt(2)``) as ``x * (1 / c)``: LLVM keeps a division by a constant (no fast-math flags),
    and a vector division costs about ten times a multiply (``vdivps``: BERT's score write-back
    divided 196 608 elements per layer). Within 1.5 ulp of the division; exact for powers of 2."""
    scalar = _float_scalar_operand(call)
    if scalar is None:
        return None
    x, v, dtype = scalar
    if v == 0 or not np.isfinite(v):
        return None
    recip = tirx.const(float((np.ones((), dtype) / v).astype(dtype)), dtype)
    return bb.call_te(lambda t: te.compute(t.shape, lambda *i: t(*i) * recip, name="T_divide"), x,
                      primfunc_name_hint="divide")


def _power_by_small_integer(bb: relax.BlockBuilder, call: relax.Call):
    """``x ** c`` with a constant ``c`` of 2, 3 or 4 (GELU-tanh's ``x³``, ONNX ``Pow``) as
    multiplications: TVM calls libm's ``powf`` per element, scalar (GPT-2's FFN-in GEMM spent
    most of its 0.8 ms in its write-back's ``powf``). ``x·x`` is exact; ``x·x·x`` and
    ``(x·x)·(x·x)`` are within 1 ulp of the correctly rounded power."""
    scalar = _float_scalar_operand(call)
    if scalar is None or scalar[1] not in (2.0, 3.0, 4.0):
        return None
    x, p = scalar[0], int(scalar[1])

    def power(t):
        def body(*i):
            v = t(*i)
            return (v * v) * (v * v) if p == 4 else v * v * v if p == 3 else v * v

        return te.compute(t.shape, body, name="T_power")

    return bb.call_te(power, x, primfunc_name_hint="power")


def _float_scalar_operand(call: relax.Call):
    """``(x, c, dtype)`` for a binary ``op(x, c)`` of float ``x`` and a constant ``c`` of one
    element and the same dtype (``c`` as a NumPy scalar), else None."""
    x, c = call.args
    dtype = str(call.ty.dtype)
    if (not isinstance(c, tvm.ir.expr.Constant) or dtype not in ("float32", "float64")
            or str(c.ty.dtype) != dtype or str(x.ty.dtype) != dtype):
        return None
    value = c.value.numpy()
    if value.size != 1 or value.ndim > x.ty.ndim:  # ndim -1 (unknown), or broadcasting to more dims
        return None
    return x, value.reshape(()).astype(dtype), dtype


def fast_math_legalize_map() -> dict:
    """Legalizations that trade exact rounding for speed: libm transcendental calls replaced by
    vectorizable polynomials, divisions by a constant and small integer powers by
    multiplications."""
    return {
        "relax.divide": _divide_by_constant,
        "relax.power": _power_by_small_integer,
        "relax.exp": _unary(topi.fast_exp, "fast_exp"),
        "relax.erf": _unary(topi.fast_erf, "fast_erf"),
        "relax.tanh": _unary(topi.fast_tanh, "fast_tanh"),
        "relax.sigmoid": _sigmoid,
        "relax.nn.softmax": _softmax,
        "relax.nn.gelu": _gelu,
        "relax.nn.gelu_tanh": _gelu_tanh,
    }


def _take_constant(bb: relax.BlockBuilder, call: relax.Call):
    """``take(x, i, axis)`` with a constant scalar ``i`` (ONNX Gather of a fixed index, e.g.
    ``qkv[0]`` of a fused attention projection) as a static slice. TVM's legalization reads the
    index from a tensor at run time: an opaque gather (op pattern 8) that fuses with nothing and
    copies element by element; a static slice is injective, so FuseOps fuses it with the
    transpose that follows (DeiT's K) and it vectorizes."""
    taken = constant_take(call)
    if taken is None:  # also out of range: TVM's legalization keeps its own (run-time) behaviour
        return None
    axis, i = taken
    x = call.args[0]
    shape = static_shape(x)
    out_shape = shape[:axis] + shape[axis + 1:]

    def take(t):
        return te.compute(out_shape, lambda *o: t(*o[:axis], i, *o[axis:]), name="T_take")

    return bb.call_te(take, x, primfunc_name_hint="take_const")


_ROW_LANES = 16  # the widest fp32 vector (AVX-512); narrower ones divide it


def _row_reduction(kind: str):
    """``max``/``min``/``sum`` that TVM's lowering leaves scalar, in forms the CPU rules vectorize.

    * Over the last axis of rows that are not whole vectors (the int8 quantizer's row abs-max
      over a 7×7×3 stem's 147-wide patches): two reductions in one kernel, the whole vectors,
      which ``RowReduction`` rfactors into vector partials, and the tail, combined at the end.
      TVM's one reduction over a ragged row stays a scalar chain (a predicated rfactor sums
      the padding lanes: see ``schedules/softmax.py``).
    * Over every axis of a tensor of 4096 elements or more (a per-tensor abs-max): first each
      row along the last axis (as above), then the row results — no rule takes a reduction
      with no spatial axis, which ran as one scalar loop: 106 µs against 9 µs for a
      32×56×56 abs-max.
    """
    reducer, combine = {"max": (te.max, tirx.max), "min": (te.min, tirx.min),
                        "sum": (te.sum, lambda a, b: a + b)}[kind]

    def rows_of(t, rows, n):
        """``t`` reduced along its last axis (``n`` wide) into a tensor of shape ``rows``."""
        main = n - n % _ROW_LANES
        if n % _ROW_LANES == 0 or main < 2 * _ROW_LANES:
            k = te.reduce_axis((0, n), "k")
            return te.compute(rows, lambda *i: reducer(t(*i, k), axis=k), name="row_" + kind)
        k = te.reduce_axis((0, main), "k")
        j = te.reduce_axis((0, n - main), "j")
        head = te.compute(rows, lambda *i: reducer(t(*i, k), axis=k), name="row_main")
        tail = te.compute(rows, lambda *i: reducer(t(*i, main + j), axis=j), name="row_tail")
        return te.compute(rows, lambda *i: combine(head(*i), tail(*i)), name="row_" + kind)

    def legalize(bb: relax.BlockBuilder, call: relax.Call):
        x = call.args[0]
        shape = static_shape(x)
        if shape is None or not shape or x.ty.dtype not in ("float32", "int32"):
            return None
        axes = call.attrs.axis
        axes = sorted({int(a) % len(shape) for a in axes}) if axes is not None else list(range(len(shape)))
        keep = bool(call.attrs.keepdims)
        n, rows = shape[-1], shape[:-1]
        if axes == [len(shape) - 1]:
            if n % _ROW_LANES == 0 or n - n % _ROW_LANES < 2 * _ROW_LANES:
                return None  # whole vectors (RowReduction's own) or too short to split

            def f(t):
                r = rows_of(t, rows, n)
                if not keep:
                    return r
                return te.compute(rows + [1], lambda *i: r(*i[:-1]), name="row_keepdims")

        elif axes == list(range(len(shape))) and len(shape) >= 2 and math.prod(shape) >= 4096 and n >= _ROW_LANES:
            per_row = bb.emit(_as_reduction(bb, bb.call_te(lambda t: rows_of(t, rows, n), x,
                                                            primfunc_name_hint=kind + "_rows")))

            def rest(r):  # one value per row, n times fewer than the input: one plain loop
                ks = [te.reduce_axis((0, d), f"r{i}") for i, d in enumerate(rows)]
                total = te.compute((), lambda: reducer(r(*ks), axis=ks), name="all_" + kind)
                if not keep:
                    return total
                return te.compute([1] * len(shape), lambda *_: total(), name="all_keepdims")

            return bb.call_te(rest, per_row, primfunc_name_hint=kind)
        else:
            return None
        return _as_reduction(bb, bb.call_te(f, x, primfunc_name_hint=kind))

    return legalize


def _as_reduction(bb: relax.BlockBuilder, call: relax.Call) -> relax.Call:
    """Mark ``call``'s PrimFunc a reduction for FuseOps, so elementwise producers (the
    quantizer's ``abs``) fuse in: a multi-block kernel would otherwise be analysed as opaque."""
    gv = call.args[0]
    bb.update_func(gv, bb.get()[gv].with_attr("op_pattern", 3))
    return call


def _legalize(fast_math: bool) -> tvm.transform.Pass:
    custom = {**(fast_math_legalize_map() if fast_math else {}), "relax.take": _take_constant,
              **{f"relax.{k}": _row_reduction(k) for k in ("max", "min", "sum")}}
    return relax.transform.LegalizeOps({k: _with_default(k, v) for k, v in custom.items()})


def _with_default(op_name: str, fn):
    """LegalizeOps calls a customized legalizer unconditionally; fall back to the default one
    where ``fn`` returns None (dtypes the fast kernels do not cover, non-constant indices)."""
    default = tvm.ir.Op.get(op_name).get_attr("FLegalize")

    def legalize(bb, call):
        out = fn(bb, call)
        return default(bb, call) if out is None else out

    return legalize


@tvm.transform.module_pass(opt_level=0, name="accelc.cpu.ChannelsLastConvs")
def channels_last_convs(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """Convert conv2d to NHWC data / OHWI weights (what ``Conv2dNHWC`` schedules), if any.

    Only run when the module has a conv2d, and skipped if layout inference fails: TVM 0.27's
    ConvertLayout crashes on a binary op with a 0-d operand even with no conv in sight
    ("Invalid SLayout: can't find S in source layout ABC" on ``maximum(x, const(1e-9))``).
    NCHW convs then take the fallback schedule: slower, still correct.
    """
    if not has_op(mod, "relax.nn.conv2d"):
        return mod
    try:
        return relax.transform.ConvertLayout({"relax.nn.conv2d": ["NHWC", "OHWI"]})(mod)
    except RuntimeError:  # tvm.error.InternalError
        return mod


def front_passes(target: Target, fast_math: bool = True, fused_attention: bool = True) -> list:
    """Import-level cleanup → softmax attention fused (with fast math) → legalize (fast math) →
    fuse: the PrimFuncs the rules schedule. ``fused_attention=False`` keeps attention as its
    GEMMs and softmax (the cost-model benchmark's fixed tasks were taken that way)."""
    cpu = relax.backend.cpu_generic.pipeline
    return [
        fold_batch_norm,
        channels_last_convs,
        relax.transform.DecomposeOpsForInference(),
        relax.transform.CanonicalizeBindings(),
        *([fuse_attention] if fast_math and fused_attention else []),
        *cpu.library_dispatch_passes(target),
        _legalize(fast_math),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
        fuse_layout_into_matmul,
        relax.transform.AttachAttrLayoutFreeBuffers(),
    ]


def schedule_passes(database=None) -> list:
    """Tuned schedules from ``database`` first, the default rules for everything else, then
    weight packing split out of the kernels and folded into constants."""
    seq = [relax.transform.MetaScheduleApplyDatabase(enable_warning=False)] if database is not None else []
    return seq + [
        dl.ApplyDefaultSchedule(*default_rules()),
        split_weight_packing,
        relax.transform.FoldConstant(),
        relax.transform.DeadCodeElimination(),
    ]


def _packs_weights(func) -> bool:
    import tvm_ffi
    from tvm import s_tir

    found = []
    tvm_ffi.structural_walk(func.body, [(s_tir.SBlock, lambda b: found.append(1) if b.annotations and
                                         "meta_schedule.layout_rewrite_preproc" in b.annotations else None)])
    return bool(found)


@tvm.transform.module_pass(opt_level=0, name="accelc.cpu.SplitWeightPacking")
def split_weight_packing(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """``SplitLayoutRewritePreproc`` applied only to the PrimFuncs that pack a weight.

    Upstream symptom: the pass visits every PrimFunc and aborts on one without compute blocks
    (a scan built with the IR builder): "There should be a compute block if there is only one
    subtree under the root". The others are set aside and put back unchanged.
    """
    aside = {gv: f for gv, f in mod.functions_items()
             if isinstance(f, tvm.tirx.PrimFunc) and not _packs_weights(f)}
    if len(aside) == sum(isinstance(f, tvm.tirx.PrimFunc) for _, f in mod.functions_items()):
        return mod
    work = tvm.IRModule({gv: f for gv, f in mod.functions_items() if gv not in aside}, attrs=mod.attrs)
    out = relax.transform.SplitLayoutRewritePreproc()(work)
    for gv, f in aside.items():
        out[gv] = f
    return out


def back_passes(target: Target) -> list:
    """Relax → VM bytecode lowering (TVM's CPU defaults)."""
    cpu = relax.backend.cpu_generic.pipeline
    return [*cpu.dataflow_lower_passes(target), *cpu.finalize_passes(target)]


def pipeline(target: Target | None = None, database=None, fast_math: bool = True) -> tvm.transform.Pass:
    """The CPU lowering pipeline, as one Pass for ``tvm.compile(..., relax_pipeline=...)``.

    ``target`` defaults to the one ``tvm.compile`` is running for (``Target.current()``).
    Registered with TVM as the Relax pipeline ``"accelc.cpu"``.
    """

    @tvm.transform.module_pass(opt_level=0, name="accelc.cpu.pipeline")
    def _pipeline(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        tgt = target or Target.current(allow_none=True) or host_target()
        seq = front_passes(tgt, fast_math) + schedule_passes(database) + back_passes(tgt)
        with tgt:
            if database is not None:
                with database:
                    return tvm.transform.Sequential(seq)(mod)
            return tvm.transform.Sequential(seq)(mod)

    return _pipeline


@relax.register_pipeline("accelc.cpu")
def _registered_pipeline(database=None, fast_math: bool = True):
    return pipeline(None, database=database, fast_math=fast_math)


register_tag()
