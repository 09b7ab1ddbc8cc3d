"""Relax pass of the CPU pipeline: layout ops fused into the GEMMs around them.

TVM's FuseOps fuses an injective op only into an injective consumer, and a matmul
(kOutEWiseFusable) takes only elementwise consumers, so a transpose, slice or reshape next to
a matmul stays a kernel of its own that writes a copy another kernel reads again. In a
transformer block those are the heads split off the Q/K/V projections (with Kᵀ's transpose)
and merged back before the output projection: up to 4 kernels and copies a layer.
``fuse_layout_into_matmul`` (after FuseTIR) groups

1. a GEMM whose only use is a layout op with that op: the Matmul rule reverse-inlines it into
   the write-back, which then stores straight into the new layout;
2. a layout op used only by a GEMM with that GEMM, where it feeds A or a B the rule packs
   anyway: the rule inlines it into A's reads or B's packing (``inline_spatial_around``);

and FuseTIR makes one PrimFunc of each group.
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


def _tensor(binding) -> bool:
    """The binding's value is one tensor (not a tuple of outputs)."""
    return isinstance(binding.var.ty, relax.TensorType)


def _pattern(func) -> int | None:
    value = (func.attrs or {}).get("op_pattern")
    return int(value) if value is not None else None


def _is_layout_op(func) -> bool:
    """Every block only moves data: ``out[...] = in[...]`` (transpose, reshape, slice). Casts
    stay out: a float32→bfloat16→float32 rounding inlined into the GEMM lost its rounding to
    TVM's bfloat16 legalization (the fp16 pass's bf16 model then mismatched)."""
    bodies = _blocks(func)
    return bool(bodies) and all(isinstance(b.body, tirx.BufferStore) and isinstance(b.body.value, tvm.ir.expr.TensorLoad)
                                for b in bodies)


def _keeps_rows_contiguous(func) -> bool:
    """Every copy's innermost output index moves with its innermost input index: a write-back
    storing through it still writes whole vectors along the GEMM's columns. (Kᵀ's transpose,
    [.., seq, d] → [.., d, seq], would scatter them: it is read through by Q·Kᵀ's packing
    instead.)"""
    import tvm_ffi

    def vars_of(expr):
        found = []
        tvm_ffi.structural_walk(expr, [(tirx.Var, found.append)])
        return found

    ok = []
    for b in _blocks(func):
        out_idx, in_idx = list(b.body.indices), list(b.body.value.indices)
        if not out_idx or not in_idx:  # a scalar in or out: nothing to keep contiguous
            return False
        out_vars, in_vars = vars_of(out_idx[-1]), vars_of(in_idx[-1])
        ok.append(any(v.same_as(w) for v in out_vars for w in in_vars))
    return bool(ok) and all(ok)


def _blocks(func) -> list:
    import tvm_ffi

    found = []
    tvm_ffi.structural_walk(func.body, [(s_tir.SBlock, lambda b: found.append(b) if b.name_hint != "root" else None)])
    return found


def _fusable_operands(func) -> set[int]:
    """Parameter positions of a GEMM PrimFunc (one multiply-accumulate reduction over one axis,
    what the Matmul rule schedules) whose producer may be fused in: A (its elements are
    broadcast one at a time, any layout reads alike) and B where the rule packs it anyway
    (``n`` no single register panel). A B the rule reads in place stays a kernel's own output:
    through an inlined reshape/transpose its vector loads got slower (BERT's P·V: +0.25 ms).
    Empty for anything else (a conv reduces over kh, kw and channels: its rule is another)."""
    import math

    from tvm.s_tir.dlight.gpu.matmul import IterKind
    from tvm.target import Target

    from ..schedules.cpu.base import cpu_shape
    from ..schedules.cpu.matmul import detect_iter_traits, gemm_reduction, micro_kernel
    from ..schedules.kernel_attrs import kernel_name

    if (func.attrs or {}).get("tirx.is_scheduled", False) or kernel_name(func) is not None:
        return set()  # written out, or one of our named kernels (their rules rebuild the body)
    try:
        sch = s_tir.Schedule(func)
    except Exception:  # noqa: BLE001 - not a schedulable PrimFunc (opaque blocks, IR builder)
        return set()
    main = gemm_reduction(sch)
    if main is None:
        return set()
    red = sch.get(main)
    if sum(iv.iter_type == tirx.IterVar.CommReduce for iv in red.iter_vars) != 1:
        return set()
    traits = detect_iter_traits(red)
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
        _, nj = micro_kernel(m, n, lanes, shape.vector_registers, shape.loads_per_fma)
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


def _regroup(mod: tvm.IRModule, plan) -> tvm.IRModule | None:
    """Apply ``plan`` to every dataflow block of the module's Relax functions (not the Primitive
    ones made here: those are FuseTIR's). ``plan(mod, block, uses)`` returns ``{binding that
    stays: (bindings it absorbs, make)}``, where ``make(mod) -> (mod, call)`` adds the group's
    Primitive function and gives the call that replaces the binding's value. None when no
    block changed."""
    out, changed = mod, False
    for gv, func in mod.functions_items():
        if not isinstance(func, relax.Function) or not isinstance(func.body, relax.SeqExpr) \
                or (func.attrs and "Primitive" in func.attrs):
            continue
        uses = _uses(func)
        blocks = list(func.body.blocks)
        touched = False
        for bi, block in enumerate(blocks):
            if not isinstance(block, relax.DataflowBlock):
                continue
            groups = plan(mod, block, uses)
            if not groups:
                continue
            dropped = {d for absorbed, _ in groups.values() for d in absorbed}
            bindings = []
            for b in block.bindings:
                if b in dropped:
                    continue
                if b in groups:
                    out, call = groups[b][1](out)
                    b = relax.VarBinding(b.var, call)
                bindings.append(b)
            blocks[bi] = relax.DataflowBlock(bindings)
            touched = changed = True
        if touched:
            out[gv] = relax.Function(func.params, relax.SeqExpr(blocks, func.body.body), func.ret_ty, func.is_pure,
                                     func.attrs)
    return out if changed else None


def _producer_groups(mod, block, uses) -> dict:
    """Each GEMM with its single-use layout-op producers (on A, or on a B it packs)."""
    producers = {}
    for b in block.bindings:
        callee = _prim(mod, b.value) if isinstance(b, relax.VarBinding) else None
        if callee is not None and _pattern(callee) is not None and _pattern(callee) <= _INJECTIVE \
                and uses.get(b.var, 0) == 1 and _tensor(b) and _is_layout_op(callee):
            producers[b.var] = b
    groups = {}
    for b in block.bindings:
        callee = _prim(mod, b.value) if isinstance(b, relax.VarBinding) else None
        if callee is None or _pattern(callee) != _OUT_EWISE_FUSABLE or not _tensor(b):
            continue
        hits = [(i, producers[a]) for i, a in enumerate(b.value.args[1].fields)
                if isinstance(a, relax.Var) and a in producers]
        ok = _fusable_operands(callee) if hits else set()
        hits = [(i, p) for i, p in hits if i in ok]
        if hits:
            groups[b] = ([p for _, p in hits], lambda m, b=b, hits=hits: _group(m, b, hits))
    return groups


def _consumer_groups(mod, block, uses) -> dict:
    """Each layout op (one input) with the GEMM whose only use it is, when the write-back can
    store through it in whole vectors."""
    gemms = {}
    for b in block.bindings:
        callee = _prim(mod, b.value) if isinstance(b, relax.VarBinding) else None
        if callee is not None and _pattern(callee) == _OUT_EWISE_FUSABLE and uses.get(b.var, 0) == 1 \
                and _tensor(b) and _fusable_operands(callee):
            gemms[b.var] = b
    groups = {}
    for b in block.bindings:
        callee = _prim(mod, b.value) if isinstance(b, relax.VarBinding) else None
        if callee is None or _pattern(callee) is None or _pattern(callee) > _INJECTIVE \
                or not _tensor(b) or not _is_layout_op(callee) or not _keeps_rows_contiguous(callee):
            continue
        args = list(b.value.args[1].fields)
        if len(args) == 1 and isinstance(args[0], relax.Var) and args[0] in gemms:
            gemm = gemms[args[0]]
            groups[b] = ([gemm], lambda m, b=b, gemm=gemm: _chain(m, gemm, b))
    return groups


def _primitive(mod, name: str, outer: list, body):
    """Add a Primitive function ``name`` of fresh parameters typed like ``outer``, whose
    dataflow block ``body(bb, params)`` emits (returning its output); returns the module and
    the call of it on ``outer``."""
    params = [relax.Var(f"p{i}", a.ty) for i, a in enumerate(outer)]
    bb = relax.BlockBuilder(mod)
    with bb.function(name, params, attrs={"Primitive": True}, private=True):
        with bb.dataflow():
            out = bb.emit_output(body(bb, params))
        gv = bb.emit_func_output(out)
    return bb.get(), relax.Call(gv, outer)


def _group(mod, cons, hits):
    """The producers in ``hits`` (argument position, binding), then ``cons`` reading them."""
    c_args = list(cons.value.args[1].fields)
    at = dict(hits)
    outer = [a for _, p in hits for a in p.value.args[1].fields] + [a for i, a in enumerate(c_args) if i not in at]
    names = [p.value.args[0].name_hint for _, p in hits] + [cons.value.args[0].name_hint]

    def body(bb, params):
        it = iter(params)
        made = {i: bb.emit(relax.call_tir(p.value.args[0], [next(it) for _ in p.value.args[1].fields], p.var.ty))
                for i, p in hits}
        args = [made[i] if i in made else next(it) for i in range(len(c_args))]
        return relax.call_tir(cons.value.args[0], args, cons.var.ty)

    return _primitive(mod, "_".join(names), outer, body)


def _chain(mod, gemm, layout):
    """``gemm`` then ``layout`` on its output."""
    def body(bb, params):
        t = bb.emit(relax.call_tir(gemm.value.args[0], params, gemm.var.ty))
        return relax.call_tir(layout.value.args[0], [t], layout.var.ty)

    return _primitive(mod, f"{gemm.value.args[0].name_hint}_{layout.value.args[0].name_hint}",
                      list(gemm.value.args[1].fields), body)


@tvm.transform.module_pass(opt_level=0, name="accelc.cpu.FuseLayoutIntoMatmul")
def fuse_layout_into_matmul(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """Group GEMMs with the layout ops around them (see the module docstring), then FuseTIR."""
    def fuse(grouped):  # the groups into PrimFuncs, the parts dropped, op patterns for the next round
        grouped = relax.transform.DeadCodeElimination()(relax.transform.FuseTIR()(grouped))
        return relax.transform.AnnotateTIROpPattern()(grouped)

    mod = relax.transform.AnnotateTIROpPattern()(mod)
    grouped = _regroup(mod, _consumer_groups)  # first: a layout op after a GEMM, into its write-back
    if grouped is not None:
        mod = fuse(grouped)
    for _ in range(4):  # a group's PrimFunc can take a producer of its own next round
        grouped = _regroup(mod, _producer_groups)
        if grouped is None:
            break
        mod = fuse(grouped)
    return mod
