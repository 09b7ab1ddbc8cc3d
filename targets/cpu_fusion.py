"""Relax pass of the CPU pipeline: layout producers fused into the GEMM that consumes them.

TVM's FuseOps fuses an injective op into its consumer only when every op on the way, the
consumer included, is injective, so a transpose, slice or reshape in front of a matmul
(kOutEWiseFusable) stays a kernel of its own that writes a copy the GEMM then reads. In a
transformer block those are Q, K and V cut out of the fused QKV projection (with K's
transpose) and the heads merged back before the output projection: 4 kernels and 4 copies a
layer. This pass groups such a producer with its matmul (when the matmul is its only consumer)
and lets ``FuseTIR`` make one PrimFunc of them; the Matmul rule inlines the producer into its
operand read (A) or its panel packing (B), which it does anyway (``inline_spatial_around``).
"""

from __future__ import annotations

import tvm
from tvm import relax, s_tir, tirx

_INJECTIVE, _OUT_EWISE_FUSABLE = 2, 4


def _prim(mod, call):
    """The PrimFunc a ``call_tir`` calls (None for any other call)."""
    if not isinstance(call, relax.Call) or not isinstance(call.op, tvm.ir.Op) or call.op.name != "relax.call_tir":
        return None
    func = mod[call.args[0]]
    return func if isinstance(func, tirx.PrimFunc) else None


def _pattern(func) -> int | None:
    value = (func.attrs or {}).get("op_pattern")
    return int(value) if value is not None else None


def _fusable_operands(func) -> set[int]:
    """Parameter positions of a GEMM PrimFunc (one multiply-accumulate reduction over one axis,
    what the Matmul rule schedules) whose producer may be fused in: A (its elements are
    broadcast one at a time, any layout reads alike) and B where the rule packs it anyway
    (``n`` no single register panel). A B the rule reads in place stays a kernel's own output:
    through an inlined reshape/transpose its vector loads got slower (BERT's P·V: +0.25 ms).
    Empty for anything else (a conv reduces over kh, kw and channels: its rule is another)."""
    import math

    from tvm.s_tir.dlight.analysis import get_root_block
    from tvm.s_tir.dlight.gpu.matmul import IterKind
    from tvm.target import Target

    from ..schedules.cpu.base import cpu_shape, is_reduction
    from ..schedules.cpu.matmul import _is_multiply_accumulate, detect_iter_traits, micro_kernel

    if (func.attrs or {}).get("tirx.is_scheduled", False):
        return set()
    try:
        sch = s_tir.Schedule(func)
    except Exception:  # noqa: BLE001 - not a schedulable PrimFunc (opaque blocks, IR builder)
        return set()
    reds = [sch.get(b) for b in sch.get_child_blocks(get_root_block(sch)) if is_reduction(sch, b)]
    if len(reds) != 1 or not _is_multiply_accumulate(reds[0]) or len(reds[0].reads) < 2:
        return set()
    red = reds[0]
    traits = detect_iter_traits(red)
    if traits is None or sum(iv.iter_type == tirx.IterVar.CommReduce for iv in red.iter_vars) != 1:
        return set()
    extents = {}
    for t in traits[3]:
        if not isinstance(t.extent, tirx.IntImm):
            return set()
        extents.setdefault(t.kind, []).append(int(t.extent))
    m, n = math.prod(extents.get(IterKind.kIter_I, [1])), math.prod(extents.get(IterKind.kIter_J, [1]))
    target = Target.current(allow_none=True)
    shape = cpu_shape(target) if target is not None else None
    b_packed = True
    if shape is not None:
        lanes = shape.lanes(str(red.reads[1].source.dtype))
        _, nj = micro_kernel(m, n, lanes, shape.vector_registers)
        b_packed = n != nj * lanes
    a, b = red.reads[0].source, red.reads[1].source
    return {i for i, p in enumerate(func.params) if p.same_as(a) or (b_packed and p.same_as(b))}


def _uses(func) -> dict:
    """Var → how many times the function's body uses it."""
    counts: dict = {}

    def visit(e):
        if isinstance(e, relax.Var):
            counts[e] = counts.get(e, 0) + 1

    relax.analysis.post_order_visit(func.body, visit)
    return counts


def _group_all(mod: tvm.IRModule) -> tvm.IRModule | None:
    """Group every GEMM with its single-use injective producers; None when there is none."""
    out, changed = mod, False
    for gv, func in mod.functions_items():
        if not isinstance(func, relax.Function) or not isinstance(func.body, relax.SeqExpr) \
                or (func.attrs and "Primitive" in func.attrs):  # a group made here: FuseTIR's
            continue
        uses = _uses(func)
        blocks = list(func.body.blocks)
        touched = False
        for bi, block in enumerate(blocks):
            if not isinstance(block, relax.DataflowBlock):
                continue
            producers = {}
            for b in block.bindings:
                callee = _prim(mod, b.value) if isinstance(b, relax.VarBinding) else None
                if callee is not None and _pattern(callee) is not None and _pattern(callee) <= _INJECTIVE \
                        and uses.get(b.var, 0) == 1:
                    producers[b.var] = b
            groups = {}  # consumer binding → [(argument position, producer binding)]
            for b in block.bindings:
                callee = _prim(mod, b.value) if isinstance(b, relax.VarBinding) else None
                if callee is None or _pattern(callee) != _OUT_EWISE_FUSABLE:
                    continue
                hits = [(i, producers[a]) for i, a in enumerate(b.value.args[1].fields)
                        if isinstance(a, relax.Var) and a in producers]
                ok = _fusable_operands(callee) if hits else set()
                hits = [(i, p) for i, p in hits if i in ok]
                if hits:
                    groups[b] = hits
            if not groups:
                continue
            dropped = {p for hits in groups.values() for _, p in hits}
            bindings = []
            for b in block.bindings:
                if b in dropped:
                    continue
                if b in groups:
                    out, call = _group(out, b, groups[b])
                    b = relax.VarBinding(b.var, call)
                bindings.append(b)
            blocks[bi] = relax.DataflowBlock(bindings)
            touched = changed = True
        if touched:
            out[gv] = relax.Function(func.params, relax.SeqExpr(blocks, func.body.body), func.ret_ty, func.is_pure,
                                     func.attrs)
    return out if changed else None


def _group(mod, cons, hits):
    """A Primitive function calling the producers in ``hits`` and then ``cons`` (FuseTIR makes
    one PrimFunc of it); returns the module with it and the call that replaces ``cons``."""
    c_args = list(cons.value.args[1].fields)
    at = dict(hits)
    outer = [a for _, p in hits for a in p.value.args[1].fields] + [a for i, a in enumerate(c_args) if i not in at]
    params = [relax.Var(f"p{i}", a.ty) for i, a in enumerate(outer)]
    names = [p.value.args[0].name_hint for _, p in hits] + [cons.value.args[0].name_hint]
    bb = relax.BlockBuilder(mod)
    with bb.function("_".join(names), params, attrs={"Primitive": True}, private=True):
        with bb.dataflow():
            it = iter(params)
            made = {}
            for i, p in hits:
                made[i] = bb.emit(relax.call_tir(p.value.args[0], [next(it) for _ in p.value.args[1].fields], p.var.ty))
            args = [made[i] if i in made else next(it) for i in range(len(c_args))]
            out = bb.emit_output(relax.call_tir(cons.value.args[0], args, cons.var.ty))
        gv = bb.emit_func_output(out)
    return bb.get(), relax.Call(gv, outer)


@tvm.transform.module_pass(opt_level=0, name="accelc.cpu.FuseLayoutIntoMatmul")
def fuse_layout_into_matmul(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """Group every single-use injective producer with the GEMM reading it, then FuseTIR."""
    mod = relax.transform.AnnotateTIROpPattern()(mod)
    for _ in range(4):  # a group's PrimFunc can take a producer of its own next round
        grouped = _group_all(mod)
        if grouped is None:
            break
        mod = relax.transform.FuseTIR()(grouped)
        mod = relax.transform.AnnotateTIROpPattern()(relax.transform.DeadCodeElimination()(mod))
    return mod
