"""The softmax-attention matcher shared by ``polarize`` and ``linearize``.

Finds, in a Relax ``main`` function as the ONNX importer writes it (PyTorch/HF BERT, ViT,
GPT-2; heads split by reshape/permute; fused or split QKV)::

    S = matmul(Q, Kᵀ)              Q [B, H, N, d], Kᵀ [B, H, d, N]
    S = S * c  |  S / c            optional constant scale (else 1)
    S = S + bias                   optional: a key bias broadcast as [B|1, 1, 1, N] (padding
                                   masks), or a constant [.., N, N] 0/−big causal mask
    S = where(C, S, −big)          optional: C a constant lower-triangular (causal) mask
    P = softmax(S, axis=-1)
    O = matmul(P, V)               V [B, H, N, d]

and proves what it can: a site is only reported as matched when the subgraph computes exactly
``softmax(scale·QKᵀ + key_bias [+ causal mask]) V``; anything else (other masks, P used
elsewhere, dynamic shapes, non-float32) is a skipped site with the reason, so a rewrite can
never change what the model computes beyond the rewrite's own approximation.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from dataclasses import dataclass, field

import numpy as np

from . import static_shape

#: Additive / select masks at or below this count as −∞ (HF writes finfo.min, others −1e4).
_NEG_BIG = -1e4


@dataclass
class AttentionSite:
    """One matched softmax attention (or one skipped, with ``skip`` set)."""

    index: int
    name: str  # the layer (ONNX node-name prefix of the Q projection, else attention_<i>)
    shape: tuple = ()  # (B, H, N, d)
    scale: float = 1.0
    causal: bool = False
    q: object = None  # relax exprs
    k_t: object = None  # Kᵀ as matched: [B, H, d, N]
    v: object = None
    key_bias: object = None  # relax expr broadcastable as [B, 1, 1, N], or None
    probs: object = None  # the softmax output var (calibration reads it)
    output: object = None  # the matmul(P, V) call the rewrite replaces
    skip: str = ""  # why the site is left as is ("" = matched)
    extras: dict = field(default_factory=dict)

    @property
    def matched(self) -> bool:
        return not self.skip

    def describe(self) -> str:
        if self.skip:
            return f"{self.name}: skipped ({self.skip})"
        b, h, n, d = self.shape
        mask = "causal" if self.causal else ("key bias" if self.key_bias is not None else "no mask")
        return f"{self.name}: B={b} H={h} N={n} d={d} scale={self.scale:.4g} {mask}"


def _op(expr) -> str:
    from tvm import relax

    return str(expr.op.name) if isinstance(expr, relax.Call) and hasattr(expr.op, "name") else ""


def _dtype(expr) -> str:
    return str(getattr(getattr(expr, "ty", None), "dtype", ""))


def _const(expr) -> np.ndarray | None:
    import tvm

    if isinstance(expr, tvm.ir.GenericConst) and hasattr(expr.value, "numpy"):
        return expr.value.numpy()
    return None


def _scalar(expr) -> float | None:
    arr = _const(expr)
    return float(arr.reshape(-1)[0]) if arr is not None and arr.size == 1 else None


def _is_causal(mask: np.ndarray, n: int) -> bool:
    """``mask`` (bool: True = keep) is exactly the lower triangle over its last two axes."""
    if mask.shape[-2:] != (n, n):
        return False
    tri = np.tril(np.ones((n, n), bool))
    return bool(np.all(mask.reshape(-1, n, n) == tri))


class _Graph:
    """Bindings of a function's dataflow blocks, and how often each var is used."""

    def __init__(self, func):
        from tvm import relax

        self.value: dict = {}
        self.uses: dict = {}
        for block in func.body.blocks:
            for b in block.bindings:
                self.value[b.var] = b.value

        def count(expr):
            if isinstance(expr, relax.Var):
                self.uses[expr] = self.uses.get(expr, 0) + 1

        for value in self.value.values():
            relax.analysis.post_order_visit(value, count)
        relax.analysis.post_order_visit(func.body.body, count)

    def resolve(self, expr):
        from tvm import relax

        while isinstance(expr, relax.Var) and expr in self.value and isinstance(self.value[expr], relax.Var):
            expr = self.value[expr]
        return self.value.get(expr, expr) if isinstance(expr, relax.Var) else expr


def find_sites(func, weight_names: dict | None = None) -> list[AttentionSite]:
    """Every ``softmax → matmul`` in ``func`` (program order), matched or skipped."""
    from tvm import relax

    g = _Graph(func)
    names = _projection_names(g, weight_names or {})
    consumers: dict = {}
    for var, value in g.value.items():
        if _op(value) == "relax.matmul" and isinstance(value.args[0], relax.Var):
            consumers.setdefault(value.args[0], []).append((var, value))
    sites: list[AttentionSite] = []
    for var, value in g.value.items():
        if _op(value) != "relax.nn.softmax":
            continue
        site = AttentionSite(len(sites), f"attention_{len(sites)}", probs=var)
        sites.append(site)
        _match(g, var, value, consumers.get(var, []), site)
        if site.q is not None:
            site.name = names.get(site.q, site.name)
    return sites


def _match(g: _Graph, p_var, softmax, users, site: AttentionSite) -> None:
    from tvm import relax

    s_shape = static_shape(softmax)
    if s_shape is None or len(s_shape) != 4:
        site.skip = f"scores of shape {s_shape} (need static [B, H, N, N])"
        return
    axis = int(softmax.attrs.axis)
    if axis not in (-1, 3):
        site.skip = f"softmax over axis {axis}, not the key axis"
        return
    if g.uses.get(p_var, 0) != 1 or len(users) != 1:
        site.skip = "attention probabilities are used outside P·V"
        return
    out_var, pv = users[0]
    v = pv.args[1]
    b, h, n, n2 = s_shape
    v_shape = static_shape(v)
    if n != n2 or v_shape is None or v_shape[:3] != [b, h, n] or _dtype(softmax) != "float32":
        site.skip = f"P·V with P {s_shape}, V {v_shape} is not square self-attention"
        return
    d = v_shape[3]
    expr = g.resolve(softmax.args[0])
    causal, key_bias = False, None
    # where(C, S, -big): a constant select mask (GPT-2's causal mask).
    if _op(expr) == "relax.where":
        cond, keep, fill = expr.args
        mask, fill_value = _const(cond), _scalar(fill)
        if mask is None or fill_value is None or fill_value > _NEG_BIG:
            site.skip = "a select mask that is not constant with a −∞ fill"
            return
        if mask.all():
            pass
        elif _is_causal(mask.astype(bool), n):
            causal = True
        else:
            site.skip = "a constant select mask that is neither all-true nor causal"
            return
        expr = g.resolve(keep)
    # S + bias: key bias [B|1, 1, 1, N] (padding) or a constant causal additive mask.
    if _op(expr) == "relax.add":
        lhs, rhs = expr.args
        bias, scores = (rhs, lhs) if _op(g.resolve(lhs)) in ("relax.matmul", "relax.multiply", "relax.divide") else (lhs, rhs)
        bshape = static_shape(bias)
        const = _const(bias)
        if bshape is None or len(bshape) != 4 or _dtype(bias) != "float32":
            site.skip = f"an additive mask of shape {bshape}"
            return
        if bshape[1:3] == [1, 1] and bshape[3] == n and bshape[0] in (1, b):
            key_bias = None if const is not None and not const.any() else bias
        elif const is not None and bshape[-2:] == [n, n] and bshape[0] == 1 and bshape[1] == 1:
            if not const.any():
                pass
            elif _is_causal(const.reshape(n, n) > _NEG_BIG, n) and not (const.reshape(n, n)[np.tril_indices(n)]).any():
                causal = True
            else:
                site.skip = "a constant additive mask that is neither zero nor causal"
                return
        else:
            site.skip = f"an additive mask of shape {bshape} (need a key bias [B, 1, 1, N])"
            return
        expr = g.resolve(scores)
    scale = 1.0
    if _op(expr) in ("relax.multiply", "relax.divide"):
        lhs, rhs = expr.args
        mul = _op(expr) == "relax.multiply"
        c, scores = _scalar(rhs), lhs
        if c is None and mul:  # c · S
            c, scores = _scalar(lhs), rhs
        if c is None or c == 0:
            site.skip = f"scores scaled by a non-constant ({_op(expr)})"
            return
        scale = c if mul else 1.0 / c
        expr = g.resolve(scores)
    if _op(expr) != "relax.matmul":
        site.skip = f"scores come from {_op(expr) or type(expr).__name__}, not matmul(Q, Kᵀ)"
        return
    q, k_t = expr.args
    if static_shape(q) != [b, h, n, d] or static_shape(k_t) != [b, h, d, n]:
        site.skip = f"Q·Kᵀ with Q {static_shape(q)}, Kᵀ {static_shape(k_t)} (need [B, H, N, d]·[B, H, d, N])"
        return
    if isinstance(v, relax.Var) and not _dtype(v) == "float32":
        site.skip = "V is not float32"
        return
    site.shape, site.scale, site.causal = (b, h, n, d), float(scale), causal
    site.q, site.k_t, site.v, site.key_bias, site.output = q, k_t, v, key_bias, (out_var, pv)


def _projection_names(g: _Graph, weight_names: dict) -> dict:
    """Q expr → the ONNX node-name prefix of the projection producing it (``/enc/layer.0/attn``).

    Walks back through reshapes, transposes, takes, splits and adds to the first matmul with a
    named constant weight; a name like ``/blocks/blocks.3/attn/qkv/MatMul`` gives
    ``/blocks/blocks.3/attn``.
    """
    from tvm import relax

    from .naming import fingerprint

    cache: dict = {}

    def name_of(expr, depth=0):
        if depth > 12 or not isinstance(expr, (relax.Var, relax.Call, relax.TupleGetItem)):
            return None
        if isinstance(expr, relax.Var):
            if expr in cache:
                return cache[expr]
            value = g.value.get(expr)
            found = name_of(value, depth + 1) if value is not None else None
            cache[expr] = found
            return found
        if isinstance(expr, relax.TupleGetItem):
            return name_of(expr.tuple_value, depth + 1)
        if _op(expr) == "relax.matmul":
            w = _const(g.resolve(expr.args[1]))
            if w is None and _op(g.resolve(expr.args[1])) == "relax.permute_dims":
                inner = _const(g.resolve(g.resolve(expr.args[1]).args[0]))
                w = None if inner is None else inner.T
            if w is not None and w.ndim == 2 and w.dtype == np.float32:
                node = weight_names.get(fingerprint(np.ascontiguousarray(w)))
                if node:
                    return node.rsplit("/", 2)[0] if node.count("/") >= 2 else node
            return None
        for arg in expr.args:
            found = name_of(arg, depth + 1)
            if found:
                return found
        return None

    names: dict = {}
    for value in g.value.values():
        if _op(value) == "relax.matmul":
            q = value.args[0]
            if isinstance(q, relax.Var) and q not in names:
                found = name_of(q)
                if found:
                    names[q] = found
    return names


def select_sites(sites: list[AttentionSite], layers=(), exclude=(), keep_last: int = 0,
                 knob_owner: str = "pass") -> list[AttentionSite]:
    """The matched sites a pass rewrites: allow/deny fnmatch patterns over site names, and the
    last ``keep_last`` matched sites left as softmax. Patterns matching nothing raise."""
    from ..errors import PassError

    for pats, knob in ((layers, "layers"), (exclude, "exclude")):
        for p in pats:
            if not any(fnmatch.fnmatchcase(s.name, p) for s in sites):
                listed = ", ".join(s.name for s in sites[:6]) or "none"
                raise PassError(f"{knob_owner}: {knob} pattern '{p}' matches no attention site ({listed})")
    chosen = []
    for s in sites:
        if not s.matched:
            continue
        if layers and not any(fnmatch.fnmatchcase(s.name, p) for p in layers):
            s.extras["kept"] = "not in layers"
        elif any(fnmatch.fnmatchcase(s.name, p) for p in exclude):
            s.extras["kept"] = "excluded"
        else:
            chosen.append(s)
    if keep_last and not layers:
        for s in chosen[-keep_last:]:
            s.extras["kept"] = "last layer stays softmax"
        chosen = chosen[:-keep_last] if keep_last < len(chosen) else []
    return chosen


def key_transposed(bb, site: AttentionSite):
    """K as [B, H, N, d] from the matched Kᵀ (one transpose, folded when Kᵀ was one)."""
    from tvm import relax

    return bb.emit(relax.op.permute_dims(site.k_t, [0, 1, 3, 2]))


def key_bias_2d(bb, site: AttentionSite):
    """The matched key bias as a float32 [B, N] tensor (broadcast over a batch of 1)."""
    from tvm import relax

    b, _, n, _ = site.shape
    bias = site.key_bias
    bshape = static_shape(bias)
    flat = bb.emit(relax.op.reshape(bias, (bshape[0], n)))
    if bshape[0] != b:
        flat = bb.emit(relax.op.broadcast_to(flat, (b, n)))
    return flat


def notice_skipped(pass_name: str, sites: list[AttentionSite], stream=None) -> None:
    """One line per skipped site on stderr (never a silent non-rewrite)."""
    import sys

    stream = stream or sys.stderr
    for s in sites:
        if not s.matched:
            print(f"accelc: {pass_name}: {s.name} left as is: {s.skip}", file=stream)


def plan(mod, pass_name: str, opts, refuse=None) -> tuple[list[AttentionSite], list[AttentionSite]]:
    """What an attention pass rewrites in ``mod``: every site of ``main`` and the chosen ones
    (``opts.layers``/``exclude``/``keep_last``; ``refuse(site)`` may name a reason to skip a
    matched site). Skipped sites get one notice line each, and an empty choice one line saying
    the model compiles unchanged."""
    import sys

    from ..errors import PassError
    from .naming import module_weight_names

    if "main" not in [gv.name_hint for gv in mod.get_global_vars()]:
        raise PassError(f"{pass_name}: the module has no 'main' function")
    sites = find_sites(mod["main"], module_weight_names(mod))
    for s in sites:
        why = refuse(s) if refuse is not None and s.matched else ""
        if why:
            s.skip = why
    chosen = select_sites(sites, opts.layers, opts.exclude, opts.keep_last, pass_name)
    notice_skipped(pass_name, sites)
    if not chosen:
        print(f"accelc: {pass_name}: nothing to rewrite ({len(sites)} attention sites, none selected); "
              f"the model compiles unchanged", file=sys.stderr)
    return sites, chosen


def require_maps(pass_name: str, chosen: list[AttentionSite], maps: dict | None, what: str = "") -> None:
    """Raise unless ``maps`` holds the calibrated attention map of every chosen site."""
    from ..errors import PassError

    missing = [s.name for s in chosen if not maps or s.name not in maps]
    if missing:
        raise PassError(f"{pass_name}: {what}needs calibrated attention maps (give --calib SAMPLES.npz); "
                        f"none for {', '.join(missing[:3])}")


def site_inputs(bb, site: AttentionSite) -> list:
    """The kernel operands every attention kernel starts with: Q, K (as [B, H, N, d]), V and,
    with a padding mask, the key bias as [B, N]."""
    args = [site.q, key_transposed(bb, site), site.v]
    if site.key_bias is not None:
        args.append(key_bias_2d(bb, site))
    return args


def pass_record(pass_name: str, opts, sites: list[AttentionSite], infos: list[dict]) -> dict:
    """The ``accelc.rewrites`` entry of an attention pass: options, rewritten sites, kept ones."""
    from . import options_record

    return {"pass": pass_name, "options": options_record(opts), "describe": opts.describe(),
            "sites": infos, "kept": skipped_records(sites)}


def rewrite_sites(mod, chosen: list[AttentionSite], emit) -> object:
    """``mod`` with each chosen site's ``matmul(P, V)`` replaced by ``emit(bb, site)`` (an
    expression of the same [B, H, N, d] type); the now-dead score/softmax chain is removed."""
    from . import replace_calls

    def emit_site(bb, _call, site, remap):
        # The site's Q, Kᵀ, V and bias as the rewritten function sees them.
        view = dataclasses.replace(site, q=remap(site.q), k_t=remap(site.k_t), v=remap(site.v),
                                   key_bias=None if site.key_bias is None else remap(site.key_bias))
        return emit(bb, view)

    return replace_calls(mod, {s.output[1]: s for s in chosen}, emit_site)


def site_record(site: AttentionSite) -> dict:
    b, h, n, d = site.shape or (0, 0, 0, 0)
    return {"name": site.name, "batch": b, "heads": h, "tokens": n, "head_dim": d,
            "scale": site.scale, "causal": site.causal, "key_bias": site.key_bias is not None}


def skipped_records(sites: list[AttentionSite]) -> list[dict]:
    """Sites left as softmax and why (not matched, excluded, or kept by a knob)."""
    return [{"name": s.name, "why": s.skip or s.extras.get("kept", "")} for s in sites
            if s.skip or s.extras.get("kept")]


__all__ = ["AttentionSite", "find_sites", "key_bias_2d", "key_transposed", "notice_skipped", "pass_record", "plan",
           "require_maps", "rewrite_sites", "select_sites", "site_inputs", "site_record", "skipped_records"]
