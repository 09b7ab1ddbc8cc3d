"""The sim accelerator's offloaded ops as schedulable TIR, its tile instructions as tensor
intrinsics, and the schedules (hand-set and MetaSchedule-sampled) that map one onto the other.

Workloads (:func:`workload`): ``gemm`` ``C[m, n] int32 = Σ_k A[m, k] int8 · B[k, n] int8`` and
``shift_gemm`` ``C[m, n] int32 = Σ_t Σ_k sign(W[t, k, n]) · (X[m, k] >> (W[t, k, n] & 31))``
(``W`` int8 code bytes ``[terms, k, n]``, the same memory as ``lower_shift_gemm``'s
``[terms·k, n]``). A schedule pads the iteration space (``pad_einsum``) to whole tiles, splits
each dimension into DMA tile × fold × fold-inner loops, ``cache_read``\\s the operands into the
``ifmap`` / ``weight`` scratchpads at a tile loop (DMA loads), ``cache_write``\\s the result
through the ``acc`` scratchpad (DMA stores), and tensorizes the fold onto the intrinsic.

Why a *fold* intrinsic: a TensorIntrin has a fixed shape while MetaSchedule samples and mutates
tile sizes. The intrinsic is one PE-array fold (``rows × kc × cols``, ``kc = min(rows, cols)``)
under the sampled DMA tile loops, so every mutated trace still tensorizes; the translator
(:mod:`.translate`) merges the folds of one DMA tile back into one ``accel.gemm`` of the
tile's size and clips padded tiles to the real extents. The impl is a ``call_extern`` of
``accel.gemm`` / ``accel.shift_gemm``: a marker for the translator, never run on the CPU.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import threading
from functools import cache

from ...errors import TargetError
from .config import ACC_BYTES, MachineConfig

#: TIR storage scopes of the scratchpads (``global.<tag>``: TVM only knows a few ranks).
SCOPES = {"ifmap": "global.accel_ifmap", "weight": "global.accel_weight", "acc": "global.accel_acc"}
SPAD_OF_SCOPE = {v: k for k, v in SCOPES.items()}
#: The extern name each op's intrinsic calls (what the translator looks for).
EXTERN = {"gemm": "accel.gemm", "shift_gemm": "accel.shift_gemm"}
KINDS = tuple(EXTERN)
#: Workload attributes: the op, and a digest of the machine (a tuned schedule is per machine).
ATTR_OP, ATTR_CONFIG = "accelc.sim_op", "accelc.sim_config"
#: Loop orders of the output tiles: "mn" (m tiles outer, as ``_lower_tiled``) or "nm".
ORDERS = ("mn", "nm")

_INTRIN_RE = re.compile(r"^accel_(gemm|shift_gemm)_(\d+)x(\d+)x(\d+)$")
_LOCK = threading.Lock()
_REGISTERED: set[str] = set()


def activation_bytes(kind: str) -> int:
    """Bytes of one activation element: int8 for gemm, int32 (fixed point) for shift_gemm."""
    return 4 if kind == "shift_gemm" else 1


def config_digest(cfg: MachineConfig) -> str:
    """What a schedule's cost depends on (array, scratchpads, DRAM), hashed: tuned records of
    one machine must not be found for another."""
    d = cfg.to_dict()
    blob = json.dumps({k: d[k] for k in ("array", "scratchpad", "dram")}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def fold_shape(cfg: MachineConfig) -> tuple[int, int, int]:
    """(rows, k chunk, cols) of one fold: the intrinsic's shape in the sampled design space."""
    return cfg.rows, min(cfg.rows, cfg.cols), cfg.cols


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise TargetError(f"sim: unknown accelerator op '{kind}'; expected one of {', '.join(KINDS)}")


#: Each op's update, ``C[i, j] = <this>``, written once for the workload and its intrinsic (so
#: tensorize matches them structurally); ``{a}``/``{b}`` name the operands, ``{i}``... index.
_BODY = {
    "gemm": '{c}[{i}, {j}] + T.Cast("int32", {a}[{i}, {r}]) * T.Cast("int32", {b}[{r}, {j}])',
    "shift_gemm": ('{c}[{i}, {j}] + T.if_then_else({b}[{t}, {r}, {j}] == T.int8(0), 0, T.if_then_else('
                   '{b}[{t}, {r}, {j}] < T.int8(0), -1, 1) * T.shift_right({a}[{i}, {r}], T.Cast("int32", '
                   'T.bitwise_and({b}[{t}, {r}, {j}], T.int8(31)))))'),
}


def _parse(src: str):
    import tvm
    from tvm.script import tirx as T

    return tvm.script.from_source(src, extra_vars={"T": T})


def workload(kind: str, m: int, k: int, n: int, terms: int = 1, cfg: MachineConfig | None = None):
    """The op as a TIR PrimFunc with one block ``C`` (params ``A, B, C`` or ``X, W, C``)."""
    _check_kind(kind)
    for name, v in (("m", m), ("k", k), ("n", n), ("terms", terms)):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise TargetError(f"sim: {kind} {name} must be a positive integer, got {v!r}")
    attrs = {"global_symbol": "main", "tirx.noalias": True, ATTR_OP: kind}
    if cfg is not None:
        attrs[ATTR_CONFIG] = config_digest(cfg)
    shift = kind == "shift_gemm"
    a, b = ("X", "W") if shift else ("A", "B")
    loops, iters, kinds = ("i, j, t, r", "vi, vj, vt, vr", "SSRR") if shift else ("i, j, r", "vi, vj, vr", "SSR")
    body = _BODY[kind].format(a=a, b=b, c="C", i="vi", j="vj", r="vr", t="vt")
    b_shape, grid = ((terms, k, n), (m, n, terms, k)) if shift else ((k, n), (m, n, k))
    return _parse(
        "@T.prim_func(s_tir=True)\n"
        f"def main({a}: T.Buffer(({m}, {k}), '{'int32' if shift else 'int8'}'), "
        f"{b}: T.Buffer({b_shape}, 'int8'), C: T.Buffer(({m}, {n}), 'int32')):\n"
        f"    T.func_attr({attrs!r})\n"
        f"    for {loops} in T.grid{grid}:\n"
        "        with T.sblock('C'):\n"
        f"            {iters} = T.axis.remap('{kinds}', [{loops}])\n"
        "            with T.init():\n"
        "                C[vi, vj] = 0\n"
        f"            C[vi, vj] = {body}\n")


# ----------------------------------------------------------------------------------------------
# Tensor intrinsics


def intrinsic_name(kind: str, rows: int, kc: int, cols: int) -> str:
    return f"accel_{kind}_{rows}x{kc}x{cols}"


def _intrinsic_funcs(kind: str, rows: int, kc: int, cols: int):
    """(desc, impl) PrimFuncs of one fold. Written from a template because a fold dimension of
    extent 1 keeps its loop but must have no block iter (blockize drops unit iters and
    tensorize compares the iter lists), which TVMScript cannot express conditionally."""
    shift = kind == "shift_gemm"
    dims = [(v, e, t) for v, e, t in (("i", rows, "S"), ("j", cols, "S"), ("r", kc, "R")) if e > 1]
    idx = {v: (f"v{v}" if e > 1 else "0") for v, e in (("i", rows), ("j", cols), ("r", kc))}
    b_shape = f"(1, {kc}, {cols})" if shift else f"({kc}, {cols})"
    b_region = f"B[0:1, 0:{kc}, 0:{cols}]" if shift else f"B[0:{kc}, 0:{cols}]"
    a_region = f"A[0:{rows}, 0:{kc}]"
    # The block reads C, then its operands in the order the workload's body does.
    reads = ", ".join([f"C[0:{rows}, 0:{cols}]"] + ([b_region, a_region] if shift else [a_region, b_region]))
    head = (
        "@T.prim_func(s_tir=True)\n"
        "def f(a: T.handle, b: T.handle, c: T.handle):\n"
        "{decl}"
        f"    A = T.match_buffer(a, ({rows}, {kc}), '{'int32' if shift else 'int8'}', offset_factor=1, "
        f"scope='{SCOPES['ifmap']}'{{sa}})\n"
        f"    B = T.match_buffer(b, {b_shape}, 'int8', offset_factor=1, scope='{SCOPES['weight']}'{{sb}})\n"
        f"    C = T.match_buffer(c, ({rows}, {cols}), 'int32', offset_factor=1, scope='{SCOPES['acc']}'{{sc}})\n"
        "    with T.sblock('root'):\n"
        f"        T.reads({reads})\n"
        f"        T.writes(C[0:{rows}, 0:{cols}])\n")
    desc = head.format(sa="", sb="", sc="", decl="")
    desc += f"        for i, j, r in T.grid({rows}, {cols}, {kc}):\n"
    desc += "            with T.sblock('fold'):\n"
    if dims:
        names, loops = ", ".join("v" + v for v, _, _ in dims), ", ".join(v for v, _, _ in dims)
        desc += f"                {names} = T.axis.remap('{''.join(t for *_, t in dims)}', [{loops}])\n"
    body = _BODY[kind].format(a="A", b="B", c="C", t="0", **idx)
    desc += f"                C[{idx['i']}, {idx['j']}] = {body}\n"
    decl = "".join(f"    s{n} = T.int32()\n" for n in range(4 if shift else 3))
    impl = head.format(sa=", strides=[s0, 1]", sb=", strides=[s1, s3, 1]" if shift else ", strides=[s1, 1]",
                       sc=", strides=[s2, 1]", decl=decl)
    impl += (f"        T.evaluate(T.call_extern('int32', '{EXTERN[kind]}', A.access_ptr('r'), B.access_ptr('r'), "
             f"C.access_ptr('rw'), {rows}, {kc}, {cols}))\n")
    return _parse(desc), _parse(impl)


def register_intrinsic(kind: str, rows: int, kc: int, cols: int) -> str:
    """Register (once per process) the fold intrinsic ``rows × kc × cols`` of ``kind``; its name."""
    from tvm.s_tir import TensorIntrin

    _check_kind(kind)
    name = intrinsic_name(kind, rows, kc, cols)
    with _LOCK:
        if name not in _REGISTERED:
            TensorIntrin.register(name, *_intrinsic_funcs(kind, rows, kc, cols), override=True)
            _REGISTERED.add(name)
    return name


def register_intrinsics(cfg: MachineConfig) -> list[str]:
    """Register the design space's fold intrinsics of ``cfg`` (both ops). Do it before opening a
    tuning database holding sim records: loading one replays every trace."""
    return [register_intrinsic(kind, *fold_shape(cfg)) for kind in KINDS]


def ensure_intrinsics(trace) -> None:
    """Register every accel intrinsic a trace tensorizes onto, before it is replayed: small
    layers tensorize onto per-shape intrinsics no config predicts, and TVM replays every trace
    to load a tuning database. ``trace``: a ``Trace``, or its JSON form as a database stores it
    (so this is also the sim target's ``database.register_trace_hook``)."""
    if hasattr(trace, "insts"):
        attrs = [a for inst in trace.insts for a in inst.attrs]
    else:
        attrs = [a for inst in (trace[0] if trace else ()) for a in (inst[2] if len(inst) > 2 else ())]
    for attr in attrs:
        m = _INTRIN_RE.match(attr.strip('"')) if isinstance(attr, str) else None
        if m:
            register_intrinsic(m.group(1), *map(int, m.groups()[1:]))


# ----------------------------------------------------------------------------------------------
# Schedules


def workload_kind(func) -> str:
    """``gemm`` or ``shift_gemm`` for a :func:`workload` PrimFunc (by its attribute, else by
    its parameters: a 3-D weight is a shift GEMM)."""
    attrs = func.attrs or {}
    if ATTR_OP in attrs:
        return str(attrs[ATTR_OP])
    return "shift_gemm" if len(func.params) == 3 and len(func.params[1].shape) == 3 else "gemm"


def _dims(func, kind):
    a, w = func.params[0], func.params[1]
    m, k = (int(v) for v in a.shape)
    n = int(w.shape[-1])
    terms = int(w.shape[0]) if kind == "shift_gemm" else 1
    return m, k, n, terms


def _compute_block(sch):
    """The workload's one reduction block (after padding, still the one named ``C``)."""
    try:
        return sch.get_sblock("C")
    except Exception:  # noqa: BLE001 - TVM raises its own error types
        raise TargetError("sim: the function is not an accelerator workload (no block 'C'; build it "
                          "with accelc.targets.sim.tensorize.workload)") from None


def _read_index(sch, block, param) -> int:
    names = [str(r.source.name) for r in sch.get(block).reads]
    for cand in (f"{param}_pad", param):
        if cand in names:
            return names.index(cand)
    raise TargetError(f"sim: block 'C' does not read '{param}' (reads {names})")


def _build(sch, kind, fold, pads, order, stationary, tile):
    """The schedule shared by the hand-set and the sampled variants. ``pads``: padded extents
    (m, k, n); ``tile(loop, fold, dim)`` splits a padded loop into (tile, folds, fold-inner)."""
    func = sch.mod["main"]
    params = [str(p.name) for p in func.params]
    blk = _compute_block(sch)
    pm, pk, pn = pads
    shift = kind == "shift_gemm"
    padding = [pm, pn, 1, pk] if shift else [pm, pn, pk]
    m, k, n, _ = _dims(func, kind)
    if (pm, pk, pn) != (m, k, n):
        sch.pad_einsum(blk, padding)
    loops = sch.get_loops(blk)
    i, j, r = loops[0], loops[1], loops[-1]
    t = loops[2] if shift else None
    store = sch.cache_write(blk, 0, SCOPES["acc"])
    it, i_f, i_in = tile(i, fold[0], "m")
    jt, j_f, j_in = tile(j, fold[2], "n")
    if stationary:
        r_f, r_in = sch.split(r, [None, fold[1]])
        rt = None
    else:
        rt, r_f, r_in = tile(r, fold[1], "k")
    outer = [it, jt] if order == "mn" else [jt, it]
    inner = [x for x in (rt, t) if x is not None]
    sch.reorder(*outer, *inner, i_f, j_f, r_f, i_in, j_in, r_in)
    ca = sch.cache_read(blk, _read_index(sch, blk, params[0]), SCOPES["ifmap"])
    cb = sch.cache_read(blk, _read_index(sch, blk, params[1]), SCOPES["weight"])
    if stationary:  # the outer tile loop's operand stays in its scratchpad across the inner one
        sch.compute_at(ca, it)
        sch.compute_at(cb, t if shift else jt)
    else:
        sch.compute_at(ca, rt)
        sch.compute_at(cb, t if shift else rt)
    sch.reverse_compute_at(store, outer[1])
    sch.decompose_reduction(blk, inner[0] if inner else i_f)
    sch.tensorize(i_in, intrinsic_name(kind, *fold))
    return sch


def _round_up(x: int, q: int) -> int:
    return -(-x // q) * q


def schedule_gemm(sch, cfg: MachineConfig, tiles: tuple[int, int, int], order: str = "mn",
                  stationary: bool = False):
    """Schedule a :func:`workload` with fixed DMA tiles ``(tile_m, tile_k, tile_n)``.

    ``order="mn"`` with ``stationary=False`` is ``lower_gemm``/``lower_shift_gemm``'s program
    (output-tile-major, K tiles innermost, terms inside K). ``stationary=True`` loads the outer
    tile loop's operand once per outer tile and keeps it across the inner loop (whole K per
    tile; ``tile_k`` is ignored). Any tile sizes work: the space is padded to whole tiles and
    the fold is ``gcd(tile, array dim)``; the translator clips the padding away.
    """
    func = sch.mod["main"]
    kind = workload_kind(func)
    if order not in ORDERS:
        raise TargetError(f"sim: schedule order must be one of {', '.join(ORDERS)}, got {order!r}")
    if stationary and order == "nm" and kind == "shift_gemm":
        raise TargetError("sim: a weight-stationary ('nm') shift_gemm schedule is not supported")
    m, k, n, _ = _dims(func, kind)
    if len(tiles) != 3 or any(isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in tiles):
        raise TargetError(f"sim: tiles must be three positive integers (tile_m, tile_k, tile_n), got {tiles!r}")
    tm, tk, tn = min(tiles[0], m), min(k if stationary else tiles[1], k), min(tiles[2], n)
    R, KC, C = fold_shape(cfg)
    fold = (math.gcd(tm, R), math.gcd(tk, KC), math.gcd(tn, C))
    register_intrinsic(kind, *fold)
    sizes = {"m": tm, "k": tk, "n": tn}

    def tile(loop, f, dim):
        to, ti = sch.split(loop, [None, sizes[dim]])
        ff, fi = sch.split(ti, [None, f])
        return to, ff, fi

    pads = (_round_up(m, tm), _round_up(k, fold[1] if stationary else tk), _round_up(n, tn))
    return _build(sch, kind, fold, pads, order, stationary, tile)


def _smooth(x: int) -> int:
    """The smallest 2^a·3^b ≥ x: fold counts padded to it have many divisors to tile by."""
    best = 1 << (x - 1).bit_length()
    p3 = 1
    while p3 < best:
        p2 = p3
        while p2 < x:
            p2 *= 2
        best = min(best, p2)
        p3 *= 3
    return best


def _halves(cfg: MachineConfig) -> dict[str, int]:
    s = cfg.scratchpad
    h = 2 if s.double_buffered else 1
    return {"ifmap": s.ifmap_bytes // h, "weight": s.filter_bytes // h, "acc": s.ofmap_bytes // h}


def _caps(cfg, kind, m, k, n, folds, stationary):
    """Largest fold count per dimension whose tile fits every scratchpad it is part of, the
    other dimensions at one fold (``max_innermost_factor`` of the sampled split); ``None`` if
    even one fold does not fit."""
    R, KC, C = fold_shape(cfg)
    half, ab = _halves(cfg), activation_bytes(kind)
    unit = {"m": R, "k": KC, "n": C}
    real = {"m": m, "k": k, "n": n}

    def ext(dim, f):
        return min(f * unit[dim], real[dim])

    def fits(fm, fk, fn):
        tm, tk, tn = ext("m", fm), ext("k", fk), ext("n", fn)
        return tm * tk * ab <= half["ifmap"] and tk * tn <= half["weight"] and tm * tn * ACC_BYTES <= half["acc"]

    base = {"m": 1, "k": folds["k"] if stationary else 1, "n": 1}
    if not fits(base["m"], base["k"], base["n"]):
        return None
    caps = {}
    for dim in ("m", "k", "n"):
        f = base[dim]
        while f < folds[dim] and fits(**{f"f{d}": (f + 1 if d == dim else base[d]) for d in "mkn"}):
            f += 1
        caps[dim] = f
    return caps


def design_spaces(sch, cfg: MachineConfig) -> list:
    """Every design space of a workload: one copy of ``sch`` per (order, stationary) variant,
    its DMA tiles sampled (``sample_perfect_tile`` over the fold counts, capped so one
    dimension alone fits the scratchpads; the joint fit is the postproc's)."""
    func = sch.mod["main"]
    kind = workload_kind(func)
    m, k, n, _ = _dims(func, kind)
    fold = fold_shape(cfg)
    register_intrinsic(kind, *fold)
    folds = {"m": _smooth(-(-m // fold[0])), "k": _smooth(-(-k // fold[1])), "n": _smooth(-(-n // fold[2]))}
    variants = [("mn", False), ("nm", False), ("mn", True)] + ([("nm", True)] if kind == "gemm" else [])
    out = []
    for order, stationary in variants:
        caps = _caps(cfg, kind, m, k, n, folds, stationary)
        if caps is None:
            continue
        s = sch.copy()

        def tile(loop, f, dim, s=s, caps=caps):
            fo, fi = s.split(loop, [None, f])
            factors = s.sample_perfect_tile(fo, n=2, max_innermost_factor=caps[dim])
            to, ff = s.split(fo, factors)
            return to, ff, fi

        pads = (folds["m"] * fold[0], folds["k"] * fold[1], folds["n"] * fold[2])
        out.append(_build(s, kind, fold, pads, order, stationary, tile))
    if not out:
        raise TargetError(f"sim: no {kind} {m}x{k}x{n} tile fits the scratchpads of {cfg.name}")
    return out


#: Candidates whose program would exceed this many instructions are not simulated: building,
#: printing and parsing costs ~3 ms per instruction, and such tilings are never competitive.
MAX_INSTRUCTIONS = 4096


def design_space(cfg: MachineConfig, max_instructions: int = MAX_INSTRUCTIONS):
    """MetaSchedule space generator: :func:`design_spaces`, the scratchpad-fit postproc, and
    MutateTileSize (mutated traces replay onto the same fold intrinsic)."""
    from tvm.s_tir import meta_schedule as ms

    cfg.validate()
    return ms.space_generator.ScheduleFn(
        lambda sch: design_spaces(sch, cfg), sch_rules=[], postprocs=[fits_postproc(cfg, max_instructions)],
        mutator_probs={ms.mutator.MutateTileSize(): 1.0})


def fits_postproc(cfg: MachineConfig, max_instructions: int = MAX_INSTRUCTIONS):
    """A postproc rejecting what the builder would reject (tiles that overflow a scratchpad,
    structure the translator cannot map) and programs over ``max_instructions``."""
    return _postproc_class()(cfg, max_instructions)


@cache
def _postproc_class():
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.postproc import PyPostproc

    from .translate import plan, static_stats

    @derived_object
    class AccelFits(PyPostproc):
        def __init__(self, cfg: MachineConfig, max_instructions: int):
            super().__init__()
            self.cfg, self.max_instructions = cfg, max_instructions

        def _initialize_with_tune_context(self, context) -> None:
            pass

        def apply(self, sch) -> bool:
            try:
                p = plan(sch.mod, self.cfg)
            except TargetError:
                return False
            return static_stats(p, self.cfg)["instructions"] <= self.max_instructions

        def clone(self):
            return fits_postproc(self.cfg, self.max_instructions)

    return AccelFits


__all__ = ["EXTERN", "KINDS", "MAX_INSTRUCTIONS", "ORDERS", "SCOPES", "config_digest", "design_space", "design_spaces",
           "ensure_intrinsics", "fits_postproc", "fold_shape", "intrinsic_name", "register_intrinsic",
           "register_intrinsics",
           "schedule_gemm", "workload", "workload_kind"]
