"""Relax pass of the CPU pipeline: softmax attention as one fused kernel.

``fuse_attention`` finds ``softmax(scale·Q·Kᵀ [+ key bias] [causal]) · V`` with the matcher the
attention rewrites share (``passes/attention.py``, which proves the subgraph computes exactly
that) and replaces each site by a ``call_tir`` of ``schedules/cpu/attention_fused.py``: the
[B, H, N, N] scores never leave the task that computes them.

Q, K and V are traced back through the views that split the heads off their projection
(``take`` of a constant index out of a stacked QKV, ``split``, ``reshape``, ``permute_dims``) to the
tensor they were sliced from, and the kernel reads that tensor through strides, so no copy of
them is made; an operand whose head dimension is not contiguous there is passed as the site
computed it. The kernel writes the heads merged, ``[B, N, H, d]``; the ``permute_dims`` back to
``[B, H, N, d]`` that stands in for ``P·V`` cancels against the model's own head merge
(``fold_permutes``).

Runs before legalization, only with fast math (the kernel's ``exp`` is the fast polynomial the
CPU softmax uses) and only for float32 sites whose head dimension is whole vectors.
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.dpl import is_op, rewrite_call, wildcard
from tvm.target import Target

from ..passes import constant_take, static_shape
from ..passes.attention import _Graph, _op, find_sites, key_bias_2d

#: Longest key sequence fused: a task keeps ``mr × N`` scores (14 × 8192 × 4 B = 448 KiB).
MAX_TOKENS = 8192


def _strides(shape) -> list[int]:
    out, acc = [], 1
    for s in reversed(shape):
        out.append(acc)
        acc *= s
    return out[::-1]


def trace_view(g: _Graph, expr, depth: int = 0):
    """``(root, offset, strides)``: ``expr``'s elements as a strided view of ``root``, the
    tensor it was sliced from through ``take`` (constant scalar index), ``split``, ``reshape``
    (where NumPy would reshape the view without a copy) and ``permute_dims``; ``root = expr``
    itself when it is none of those."""
    shape = static_shape(expr)
    if shape is None:
        return None
    own = (expr, 0, _strides(shape))
    value = g.resolve(expr) if isinstance(expr, relax.Var) else expr
    if depth <= 16 and isinstance(value, relax.TupleGetItem):
        return _split_view(g, value, depth) or own
    if depth > 16 or not isinstance(value, relax.Call):
        return own
    op = _op(value)
    if op not in ("relax.permute_dims", "relax.reshape", "relax.take"):
        return own
    src = value.args[0]
    inner = trace_view(g, src, depth + 1)
    src_shape = static_shape(src)
    if inner is None or src_shape is None:
        return own
    root, offset, strides = inner
    if op == "relax.permute_dims":
        return root, offset, [strides[a] for a in _axes(value, len(src_shape))]
    if op == "relax.reshape":
        new = _reshaped_strides(src_shape, strides, shape)
        return own if new is None else (root, offset, new)
    taken = constant_take(value)
    if taken is None:
        return own
    axis, i = taken
    return root, offset + i * strides[axis], strides[:axis] + strides[axis + 1:]


def _axes(permute, ndim: int) -> list[int]:
    """A ``permute_dims`` call's axes (None: reversed)."""
    axes = permute.attrs.axes
    return list(range(ndim))[::-1] if axes is None else [int(a) for a in axes]


def _reshaped_strides(old_shape, old_strides, new_shape):
    """Strides of ``reshape(view, new_shape)`` for a strided view, or None when the reshape
    merges dimensions that are not contiguous with each other (it would need a copy). Dims are
    matched in groups of equal element counts; within a group the old dims must be contiguous
    relative to each other, and the new ones get row-major strides scaled to it."""
    old = [(d, s) for d, s in zip(old_shape, old_strides) if d != 1]
    out, i = [], 0
    for d in new_shape:
        if d == 1:
            out.append(None)
            continue
        if i >= len(old):
            return None
        # consume old dims until their product reaches d (a merge), or split one old dim
        dim, stride = old[i]
        if dim % d == 0 and dim != d:  # d is the outer part of a split of old dim i
            old[i] = (dim // d, stride)
            out.append(stride * (dim // d))
            continue
        prod, inner = dim, stride
        i += 1
        while prod < d and i < len(old):
            nd, ns = old[i]
            if inner != ns * nd:  # not contiguous with the dim before: a merge needs a copy
                return None
            prod, inner = prod * nd, ns
            i += 1
        if prod != d:
            return None
        out.append(inner)
    if i != len(old):
        return None
    return [1 if s is None else s for s in out]


def _split_view(g: _Graph, item, depth: int):
    """``split(x, …)[i]`` (GPT-2's fused QKV) as a view of x: its strides, offset by where
    part i starts along the split axis."""
    tup = g.resolve(item.tuple_value) if isinstance(item.tuple_value, relax.Var) else item.tuple_value
    if _op(tup) != "relax.split":
        return None
    src = tup.args[0]
    src_shape = static_shape(src)
    inner = trace_view(g, src, depth + 1)
    if src_shape is None or inner is None:
        return None
    axis = int(tup.attrs.axis) % len(src_shape)
    sections = tup.attrs.indices_or_sections
    if isinstance(sections, (int, tvm.tirx.IntImm)):
        size = src_shape[axis] // int(sections)
        start = int(item.index) * size
    else:
        start = ([0] + [int(x) for x in sections])[int(item.index)]
    root, offset, strides = inner
    return root, offset + start * strides[axis], list(strides)


def _compose(p1, p2):
    """``permute_dims(permute_dims(x, p1), p2)`` as one permutation of x."""
    return [p1[a] for a in p2]


def fold_permutes(func: relax.Function) -> relax.Function:
    """``permute_dims(permute_dims(x, p1), p2)`` → ``permute_dims(x, p1∘p2)``, or ``x`` when
    that is the identity."""
    inner = is_op("relax.permute_dims")(wildcard())
    pat = is_op("relax.permute_dims")(inner)

    def rewriter(expr, matches):
        first = matches[inner]
        x = first.args[0]
        n = len(static_shape(x) or [])
        if not n:
            return expr
        p = _compose(_axes(first, n), _axes(expr, n))
        return x if p == list(range(n)) else relax.op.permute_dims(x, p)

    return rewrite_call(pat, rewriter, func)


@tvm.transform.module_pass(opt_level=0, name="accelc.cpu.FuseAttention")
def fuse_attention(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """Every matched float32 softmax attention of ``main`` → the fused CPU kernel."""
    from ..passes import replace_calls
    from ..schedules.cpu.attention_fused import View, fused_attention
    from ..schedules.cpu.base import cpu_shape

    target = Target.current(allow_none=True)
    if target is None or target.kind.name != "llvm" or "main" not in [gv.name_hint for gv in mod.get_global_vars()]:
        return mod
    shape = cpu_shape(target)
    lanes = shape.lanes("float32")
    func = mod["main"]
    g = _Graph(func)
    chosen = {}
    for site in find_sites(func):
        if not site.matched:
            continue
        b, h, n, d = site.shape
        if d % lanes or n > MAX_TOKENS or n < 2:
            continue
        views = _operand_views(g, site)
        if views is None:
            continue
        chosen[site.output[1]] = (site, views)
    if not chosen:
        return mod

    def emit(bb, _call, context, remap):
        site, views = context
        b, h, n, d = site.shape
        args, kviews = [], []
        for root, offset, strides in views:
            args.append(remap(root))
            kviews.append(View(tuple(static_shape(root)), int(offset), tuple(int(s) for s in strides)))
        if site.key_bias is not None:
            args.append(key_bias_2d(bb, _remapped_bias(site, remap)))
        kernel = fused_attention(b, h, n, d, site.scale, lanes, shape.vector_registers, *kviews,
                                 key_bias=site.key_bias is not None, causal=site.causal)
        gv = bb.add_func(kernel, "attention_fused")
        out = bb.emit(relax.call_tir(gv, args, relax.TensorType([b, n, h, d], "float32")))
        return relax.op.permute_dims(out, [0, 2, 1, 3])

    out = replace_calls(mod, chosen, emit)
    out["main"] = fold_permutes(out["main"])
    return relax.transform.DeadCodeElimination()(out)


def _operand_views(g: _Graph, site):
    """``[(root, offset, strides)]`` of Q, K and V as [B, H, N, d]. Q is read by scalar
    broadcasts and K by the packing copy, through any strides; V by vectors along d, so a V
    whose d is not contiguous in its root is passed as the site computed it."""
    q, k_t, v = (trace_view(g, e) for e in (site.q, site.k_t, site.v))
    if q is None or k_t is None or v is None:
        return None
    root, offset, (sb, sh, sd, sn) = k_t
    k = (root, offset, [sb, sh, sn, sd])
    if v[2][3] != 1:
        v = (site.v, 0, _strides(static_shape(site.v)))
    return [q, k, v]


def _remapped_bias(site, remap):
    import dataclasses

    return dataclasses.replace(site, key_bias=remap(site.key_bias))


__all__ = ["MAX_TOKENS", "fold_permutes", "fuse_attention", "trace_view"]
