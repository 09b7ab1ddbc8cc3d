"""Schedule features for accelc's learned cost model: TVM's per-store features plus our own.

``PerStoreFeature`` describes each buffer store of a candidate (164 floats: loop structure,
arithmetic mix, buffer access patterns, arithmetic-intensity curve). What it lacks is the
machine: whether the vectorized loop fills the vector unit, whether the tile a loop level
touches fits L1/L2, how many accumulators the micro-kernel keeps live against the register
file, whether the parallel extent splits evenly over the cores. ``AccelcFeatures`` appends
those, computed from the scheduled TIR and the target, to every per-store row.

Target features come in groups: ``cpu`` (every target runs some kernels on the host) and one
per accelerator kind. The ``sim`` group is computed generically from loop extents and buffer
regions (tile counts, DMA bytes, PE-array mapping efficiency, shift vs multiply ops);
A second ``sim`` set is exact: the plan the sim translator would emit for the candidate
(``targets.sim.translate.static_stats``: compute cycles, DMA bytes, transfers and their latency,
PE-array folds, scratchpad fill), computed from the schedule without translating or running it.
``register_target_features(kind, fn, names)`` plugs in other targets' features.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import lru_cache, partial
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from tvm.ir.utils import derived_object
from tvm.s_tir.meta_schedule.feature_extractor import PerStoreFeature, PyFeatureExtractor

FEATURE_VERSION = 7  # bump when a feature changes meaning under the same name (new names are caught by name)
PER_STORE_LENGTH = 164
_LAYOUT_PREPROC = "meta_schedule.layout_rewrite_preproc"


# -- the scheduled loop nest, as plain Python ----------------------------------------------------
@dataclass
class Loop:
    var: object
    min: int
    extent: int
    kind: int  # tvm.tirx.ForKind
    unroll_max_step: int = 0  # pragma_auto_unroll_max_step on this loop, if any
    thread: str = ""  # GPU: the thread tag a THREAD_BINDING loop binds (blockIdx.x, threadIdx.y…)


@dataclass
class Access:
    """A buffer region of a block: per dimension, its start (compiled, in block variables)
    and extent."""

    buffer: str
    elem_bytes: float
    shape: tuple[int, ...]
    dims: list[tuple[tuple | None, int]]


@dataclass
class Block:
    """One compute block (init blocks included, weight-packing blocks left out). Index
    expressions are compiled to tuples (see ``_compile``) so the features are pure Python."""

    name: str
    loops: list[Loop]  # enclosing loops, outermost first
    bindings: list[tuple | None]  # each block variable, in the loops' indices
    reduce_vars: list[int]  # which block variables are reductions
    accesses: list[Access]  # reads, then writes
    out_bits: int  # element width of what the block writes
    ops: dict[str, int]  # per iteration: "float", "int", "mul", "shift", "special"

    @property
    def iterations(self) -> int:
        return math.prod(lp.extent for lp in self.loops)

    @property
    def is_reduction(self) -> bool:
        return bool(self.reduce_vars)

    @property
    def work(self) -> float:
        return self.iterations * max(1, self.ops["float"] + self.ops["int"])


@dataclass
class Program:
    """A scheduled PrimFunc: its compute blocks, and the bytes of its I/O and scratch buffers."""

    blocks: list[Block]
    io_bytes: float
    scratch_bytes: float  # buffers the schedule allocates (cache stages, rfactor), not weights
    scope_bytes: dict = field(default_factory=dict)  # scratch bytes per storage scope (shared, local, wmma.*)
    mod: object = None  # the scheduled module itself, for feature functions that need more


@dataclass
class TargetInfo:
    """What the features compare a schedule against."""

    num_cores: int = 1
    vector_bits: int = 256
    vector_regs: int = 16
    cache_bytes: tuple[int, int, int] = (32 << 10, 512 << 10, 16 << 20)  # L1d, L2, L3
    kind: str = "cpu"
    sim_array: tuple[int, int] = (32, 32)  # the sim target's default PE array, rows x cols
    sim_scratchpad_bytes: int = 3 * (256 << 10)  # its ifmap + filter + ofmap scratchpads
    extra: dict = field(default_factory=dict)  # for plugged-in feature functions (a machine config)


def parse(mod) -> Program:
    """The compute blocks of ``mod["main"]`` with their loop nests, and its buffer sizes."""
    import tvm
    from tvm import s_tir, tirx

    func = mod["main"] if isinstance(mod, tvm.IRModule) else mod
    blocks: list[Block] = []
    allocs, packed = [], set()

    def visit(stmt, loops):
        if isinstance(stmt, tirx.For):
            ann = stmt.annotations or {}
            step = int(ann["pragma_auto_unroll_max_step"]) if "pragma_auto_unroll_max_step" in ann else 0
            tag = str(stmt.thread_binding.thread_tag) if stmt.thread_binding is not None else ""
            visit(stmt.body, loops + [Loop(stmt.loop_var, _int(stmt.min), _int(stmt.extent), int(stmt.kind), step,
                                           tag)])
        elif isinstance(stmt, tirx.SeqStmt):
            for s in stmt.seq:
                visit(s, loops)
        elif isinstance(stmt, s_tir.SBlockRealize):
            blk = stmt.block
            allocs.extend(blk.alloc_buffers)
            if blk.init is not None:
                visit(blk.init, loops)
            if blk.annotations and _LAYOUT_PREPROC in blk.annotations:
                packed.update(r.source.name for r in blk.writes)  # weights packed ahead of time
            elif blk.iter_vars or blk.name_hint != "root":
                blocks.append(_block(blk, stmt.iter_values, loops))
            visit(blk.body, loops)
        elif isinstance(stmt, tirx.IfThenElse):
            visit(stmt.then_case, loops)
            if stmt.else_case is not None:
                visit(stmt.else_case, loops)
        elif hasattr(stmt, "body") and isinstance(stmt.body, tirx.Stmt):
            visit(stmt.body, loops)

    visit(func.body, [])
    io = sum(_buffer_bytes(p) for p in func.params if getattr(p, "shape", None) is not None)
    scratch = sum(_buffer_bytes(b) for b in allocs if b.name not in packed)
    scopes: dict[str, float] = {}
    for b in allocs:
        if b.name not in packed:
            scope = b.scope()
            scopes[scope] = scopes.get(scope, 0.0) + _buffer_bytes(b)
    return Program(blocks, float(io), float(scratch), scopes, mod)


def _buffer_bytes(buf) -> int:
    return math.prod(_int(d) for d in buf.shape) * _dtype_bits(buf.dtype) // 8


def _block(blk, iter_values, loops: list[Loop]) -> Block:
    loop_index = {lp.var: i for i, lp in enumerate(loops)}
    var_index = {iv.var: i for i, iv in enumerate(blk.iter_vars)}
    accesses = []
    for region in list(blk.reads) + list(blk.writes):
        buf = region.source
        accesses.append(Access(buf.name, _dtype_bits(buf.dtype) / 8, tuple(_int(d) for d in buf.shape),
                               [(_compile(r.min, var_index), _int(r.extent)) for r in region.region]))
    out_bits = max((_dtype_bits(r.source.dtype) for r in blk.writes), default=32)
    return Block(blk.name_hint, loops, [_compile(v, loop_index) for v in iter_values],
                 [i for i, iv in enumerate(blk.iter_vars) if int(iv.iter_type) == 2], accesses, out_bits,
                 _count_ops(blk.body))


def _int(x) -> int:
    return int(x) if hasattr(x, "value") or isinstance(x, int) else 1


def _compile(expr, index: dict):
    """An index expression as nested tuples over variable indices, or None if not affine-ish:
    ``("c", k)``, ``("v", i)``, ``(op, a, b)`` for op in + - * // % min max."""
    from tvm import tirx

    if isinstance(expr, tirx.IntImm):
        return ("c", int(expr.value))
    if isinstance(expr, tirx.Var):
        return ("v", index[expr]) if expr in index else None
    if isinstance(expr, tirx.Cast):
        return _compile(expr.value, index)
    op = _OPS.get(type(expr).__name__)
    if op is None:
        return None
    a, b = _compile(expr.a, index), _compile(expr.b, index)
    return None if a is None or b is None else (op, a, b)


_OPS = {"Add": "+", "Sub": "-", "Mul": "*", "FloorDiv": "//", "Div": "//", "FloorMod": "%", "Mod": "%",
        "Min": "min", "Max": "max"}


def _interval(node, env: list[tuple[int, int]]) -> tuple[int, int] | None:
    """Interval arithmetic: the range of ``node`` when variable ``i`` ranges over ``env[i]``."""
    if node is None:
        return None
    tag = node[0]
    if tag == "c":
        return node[1], node[1]
    if tag == "v":
        return env[node[1]]
    a, b = _interval(node[1], env), _interval(node[2], env)
    if a is None or b is None:
        return None
    if tag == "+":
        return a[0] + b[0], a[1] + b[1]
    if tag == "-":
        return a[0] - b[1], a[1] - b[0]
    if tag == "*":
        p = (a[0] * b[0], a[0] * b[1], a[1] * b[0], a[1] * b[1])
        return min(p), max(p)
    if tag in ("//", "%"):
        if b[0] != b[1] or b[0] <= 0:
            return None
        c = b[0]
        if tag == "//":
            return a[0] // c, a[1] // c
        return (a[0] % c, a[1] % c) if a[0] // c == a[1] // c else (0, c - 1)
    if tag == "min":
        return min(a[0], b[0]), min(a[1], b[1])
    return max(a[0], b[0]), max(a[1], b[1])


def _count_ops(body) -> dict[str, int]:
    """Arithmetic per iteration of a block body: the values stored, not address arithmetic."""
    import tvm
    from tvm import tirx

    ops = {"float": 0, "int": 0, "mul": 0, "shift": 0, "special": 0}

    def expr(e):
        name = type(e).__name__
        if name in ("Add", "Sub", "Mul", "Div", "FloorDiv", "Max", "Min", "LShift", "RShift"):
            ops["float" if "float" in str(e.ty) else "int"] += 1
            ops["mul"] += name == "Mul"
            ops["shift"] += name in ("LShift", "RShift")
            expr(e.a)
            expr(e.b)
        elif isinstance(e, tvm.ir.Call):
            op = str(e.op.name) if hasattr(e.op, "name") else ""
            if "shift" in op:
                ops["int"] += 1
                ops["shift"] += 1
            elif op.startswith("tirx.") and op not in ("tirx.if_then_else", "tirx.likely"):
                ops["special"] += 1
                ops["float" if "float" in str(e.ty) else "int"] += 1
            for arg in e.args:
                expr(arg)
        elif isinstance(e, tirx.Cast):
            expr(e.value)
        elif isinstance(e, tirx.Select):
            expr(e.true_value)
            expr(e.false_value)

    def stmt(st):
        if isinstance(st, tirx.BufferStore):
            expr(st.value)
        elif isinstance(st, tirx.SeqStmt):
            for x in st.seq:
                stmt(x)
        elif isinstance(st, tirx.IfThenElse):
            stmt(st.then_case)
        elif isinstance(st, tirx.For):
            stmt(st.body)

    stmt(body)
    return ops


# -- footprints: the bytes a block touches inside each of its loops ----------------------------
def footprints(block: Block, line: int = 1) -> list[float]:
    """``fp[i]``: bytes the block touches in one execution of loop ``i`` (all its iterations,
    outer loops fixed at their first value); ``fp[len(loops)]`` is one iteration's bytes.
    ``line``: count whole cache lines of that many bytes (a column walk touches a line per
    element), not just the elements."""
    out = []
    for level in range(len(block.loops) + 1):
        env = [(lp.min, lp.min + (lp.extent - 1 if i >= level else 0)) for i, lp in enumerate(block.loops)]
        out.append(_bytes(block, [_interval(b, env) for b in block.bindings], line))
    return out


def _bytes(block: Block, benv: list, line: int = 1) -> float:
    touched: dict[str, float] = {}
    for acc in block.accesses:
        sizes = []
        for dim, (start, extent) in zip(acc.shape, acc.dims):
            rng = _interval(start, benv)
            sizes.append(dim if rng is None else max(1, min(rng[1] - rng[0] + extent, dim)))
        inner = sizes[-1] * acc.elem_bytes if sizes else acc.elem_bytes
        if line > 1 and not (len(sizes) > 1 and sizes[-1] == acc.shape[-1]):  # rows not contiguous
            inner = math.ceil(inner / line) * line
        touched[acc.buffer] = max(touched.get(acc.buffer, 0.0), math.prod(sizes[:-1]) * inner)
    return sum(touched.values())


def traffic_into(block: Block, fp: list[float], capacity: float) -> float:
    """Bytes moved into a cache of ``capacity``: the outermost loop whose footprint fits is
    reloaded once per iteration of the loops above it."""
    trips = 1
    for level, lp in enumerate(block.loops):
        if fp[level] <= capacity:
            return trips * fp[level]
        trips *= lp.extent
    return trips * fp[-1]


# -- the CPU group ------------------------------------------------------------------------------
# Scale-free where it matters: trees split on thresholds, and a threshold on absolute bytes or
# cycles learned on one task means nothing on a task ten times larger. Costs are per operation,
# traffic per I/O byte.
CPU_NAMES = (
    "log_work", "n_blocks", "log_scratch_per_io", "serial_work_frac", "vec_work_frac", "par_work_frac",
    "l1_traffic_per_io", "l2_traffic_per_io", "l3_traffic_per_io",
    "log_cycles_per_op", "log_compute_per_op", "log_memory_per_op",
    "vec_lanes", "vec_fill", "vec_gather", "par_per_core", "par_balance", "log_unroll_step",
    "log_acc_vectors", "acc_reg_pressure", "log_chain", "reduce_innermost", "log_inner_reduce",
    "log_innermost_trip", "log_unrolled", "stride0_frac", "stride1_frac", "stride_far_frac", "depth", "l1_fit_depth",
    "auto_vec",
)
FMA_LATENCY, FMA_PORTS = 4, 2
CACHE_LINE = 64
#: LLVM unrolls an innermost loop completely when the copies stay small (its O3 threshold: a
#: few hundred instructions; a multiply-add with its loads and address arithmetic is ~8);
#: trip counts of up to this many iterations get unrolled and leave the loop around them to
#: the loop vectorizer. On the measured zoo schedules 32 and 64 rank alike.
LLVM_UNROLL_TRIPS = 32
#: LLVM's loop vectorizer still takes the loop around an unrolled body of up to this many
#: scalar operations (a multiply-add counts two; a special function four). Probed on the
#: pinned TVM's LLVM with an R x K multiply-add body unrolled inside a 197-column loop (43
#: shapes): every body of <= 144 multiply-adds was vectorized except single chains (R = 1)
#: longer than 112 terms, half the 192-multiply-add shapes were (those with K <= 32), no body
#: of >= 256 was (``test_cost_model.py`` pins four cases against the assembly); 384 is the
#: halfway point.
LLVM_VECTORIZE_OPS = 384
#: ... and reads that move by up to this many elements per step of that loop: interleaved
#: groups (a weight packed ``[…, j, k % 8]`` read at all 8 offsets by the unrolled k loop) and
#: gathers. In the zoo's assembly, strides of 3 to 48 elements compiled to packed code (a
#: conv reading a 32-element stride, a max pool, dense layers); a DeiT qkv candidate whose j
#: loop moves its weight by 192 elements kept all 192 multiply-adds scalar. Any known stride
#: and this limit rank alike (harness, three seeds: 0.8246 both).
LLVM_GATHER_STRIDE = 64
#: LLVM's own vectors are 256 bits wide on AVX-512 cores (``prefer-vector-width=256``, seen as
#: ymm registers in its output); a schedule's explicit vector loops use the full width.
AUTO_VECTOR_BITS = 256
L1_BW, L2_BW, L3_BW = 64.0, 32.0, 8.0  # bytes/cycle into L1 (from L2), L2 (from L3), L3 (DRAM)


@dataclass
class _Perf:
    """One block under a simple out-of-order core model."""

    lanes: float  # elements per instruction
    cores: float  # cores kept busy
    acc_vectors: float  # independent accumulator vectors in the innermost reduction
    chain: float  # dependent updates in a row before an independent one
    compute: float  # cycles
    memory: float
    traffic: tuple[float, float, float]


def _perf(b: Block, info: TargetInfo) -> _Perf:
    red = [i for i in _reduce_loop_positions(b) if b.loops[i].extent > 1]  # a 1-trip loop carries nothing
    vl = b.loops[-1] if b.loops and b.loops[-1].kind == 2 else None
    bits = info.vector_bits
    if vl is None:
        vl = _auto_vector_loop(b, red)
        bits = min(bits, AUTO_VECTOR_BITS)
    max_lanes = max(bits // b.out_bits, 1)
    lanes = min(vl.extent, max_lanes) if vl else 1.0
    par = math.prod(lp.extent for lp in b.loops if lp.kind == 1)
    cores = par / math.ceil(par / info.num_cores) if par > 1 else 1.0
    issue = _instructions(b)
    if red:
        inner = red[-1]
        acc = math.prod(lp.extent for lp in b.loops[inner + 1:])
        # (a vector loop is one instruction: it does not break a chain of dependent updates)
        spatial = [i for i, lp in enumerate(b.loops) if i not in red and lp.extent > 1 and lp is not vl]
        below = spatial[-1] + 1 if spatial else 0
        chain = math.prod(b.loops[i].extent for i in red if i >= below)
        # only the accumulating add waits for the previous one: the rest of the body issues at
        # the core's rate, so an iteration takes the longer of the add's latency (spread over
        # the independent accumulators) and the issue time of its instructions
        latency = FMA_LATENCY / min(max(acc / lanes, 1.0), FMA_LATENCY * FMA_PORTS)
        per_iteration = max(latency, issue / FMA_PORTS)
    else:
        acc, chain, per_iteration = 1.0, 1.0, issue / FMA_PORTS
    # + one cycle of loop overhead (increment, compare, branch) per trip of the innermost loop
    # that is not unrolled: unrolled and vector loops do not pay it per element
    compute = b.iterations / lanes * (per_iteration + 1.0 / _unrolled(b)) / cores
    fp = footprints(b, CACHE_LINE)
    traffic = tuple(traffic_into(b, fp, c) for c in info.cache_bytes)
    memory = (traffic[0] / L1_BW + traffic[1] / L2_BW) / cores + traffic[2] / L3_BW
    return _Perf(lanes, cores, acc / lanes, chain, compute, memory, traffic)


def _hoisted(b: Block) -> Block:
    """``b`` without the serial loops LLVM hoists it out of. A loop that no block variable
    depends on repeats the same instance (MetaSchedule's compute-at places a row reduction
    inside its consumer's column loop, say); once the body below it is straight-line code
    (TVM's or LLVM's unrolling), LLVM's loop-invariant code motion computes it once. Seen in
    the assembly of the zoo's softmax schedules: the 197-term sum sits in the preheader of
    the column loop, and those schedules run as fast as the ones without the repeat."""
    used: set[int] = set()
    for binding in b.bindings:
        _loops_in(binding, used)
    body = max(_unrolled(b), LLVM_UNROLL_TRIPS)
    loops = [replace(lp, extent=1) if (lp.extent > 1 and i not in used and lp.kind in (0, 3)
                                       and math.prod(x.extent for x in b.loops[i + 1:]) <= body) else lp
             for i, lp in enumerate(b.loops)]
    return b if all(a is c for a, c in zip(loops, b.loops)) else replace(b, loops=loops)


def _instructions(b: Block, fused: bool = True) -> float:
    """Instructions one iteration of ``b`` issues: its float and integer operations (at least
    one; ``fused``: a multiply feeding an add is one fused multiply-add), and a few for each
    special function (exp, floor, reinterpret…)."""
    fma = min(b.ops["mul"], b.ops["float"] - b.ops["mul"]) if fused else 0
    return max(1, b.ops["float"] + b.ops["int"] - fma) + 4 * b.ops["special"]


def _auto_vector_loop(b: Block, red: list[int]) -> Loop | None:
    """The loop LLVM's loop vectorizer turns into vector code where the schedule vectorized
    none. LLVM first unrolls small innermost loops completely (TVM's ``pragma_auto_unroll_max_step``
    does the same), so the loop it vectorizes is the innermost one not unrolled, or one of the
    unrolled ones (its SLP vectorizer packs their copies): counting from the innermost, the
    first loop that is serial, spatial (a float reduction would need reassociation, which LLVM
    does only under fast-math), walks the written buffer contiguously and moves every read by
    at most ``LLVM_GATHER_STRIDE`` elements, while the unrolled body inside it stays within
    ``LLVM_VECTORIZE_OPS`` operations. So a row of ``C[i, j] += A[i, k] * B[k, j]`` over j,
    with a short k loop inside it (or a 64-trip one TVM unrolled), is vector code (checked in
    the assembly of the zoo's attention-score schedules). Reads that stride over several
    elements do not stop it: LLVM loads them as interleaved groups (the members the unrolled
    body reads at offsets 0..s-1 of a stride-s walk, as in a weight packed ``[…, j, k % s]``)
    or gathers (``vec_gather`` for these loops as well as explicit ones gained nothing).
    ``red``: the block's reduction loops (``_reduce_loop_positions``)."""
    if not b.accesses:
        return None
    step = max((lp.unroll_max_step for lp in b.loops), default=0)
    ops = _instructions(b, fused=False)  # per iteration
    body = 1
    for i in reversed([i for i, lp in enumerate(b.loops) if lp.extent > 1]):
        loop = b.loops[i]
        if loop.kind == 2 or body * ops > LLVM_VECTORIZE_OPS:
            return None
        if loop.kind in (0, 3) and i not in red:
            moves = _moves(b, loop)
            if moves[-1] == 1 and all(m is not None and m <= LLVM_GATHER_STRIDE for m in moves[:-1]):
                return loop
        if loop.kind != 3 and body * loop.extent > max(LLVM_UNROLL_TRIPS, step):
            return None  # the innermost loop left rolled: the vectorizer's candidate failed
        body *= loop.extent
    return None


def _unrolled(b: Block) -> int:
    """Iterations of the innermost (non-vector) loops that ``pragma_auto_unroll_max_step``
    or explicit unrolling turns into straight-line code."""
    step = max((lp.unroll_max_step for lp in b.loops), default=0)
    body = 1
    for lp in reversed(b.loops):
        if lp.kind == 2:
            continue
        if lp.kind != 3 and body * lp.extent > step:
            break
        body *= lp.extent
    return body


def cpu_features(prog: Program, info: TargetInfo) -> list[float]:
    blocks = [_hoisted(b) for b in prog.blocks]
    if not blocks:
        return [0.0] * len(CPU_NAMES)
    perf = [_perf(b, info) for b in blocks]
    total = sum(b.work for b in blocks)
    io = max(prog.io_bytes, 1.0)
    k = max(range(len(blocks)), key=lambda i: (blocks[i].work, blocks[i].is_reduction))
    main, mp = blocks[k], perf[k]

    def frac(pred):
        return sum(b.work for b, p in zip(blocks, perf) if pred(b, p)) / total

    vl = main.loops[-1] if main.loops and main.loops[-1].kind == 2 else None
    max_lanes = max(info.vector_bits // main.out_bits, 1)
    par = math.prod(lp.extent for lp in main.loops if lp.kind == 1)
    red = _reduce_loop_positions(main)
    real = [i for i, lp in enumerate(main.loops) if lp.extent > 1]
    innermost = [i for i in real if main.loops[i].kind != 2]
    strides = _innermost_strides(main, main.loops[real[-1]] if real else None)
    fp = footprints(main, CACHE_LINE)
    depth = len(main.loops)
    compute, memory = sum(p.compute for p in perf), sum(p.memory for p in perf)
    cycles = sum(max(p.compute, p.memory) for p in perf)
    return [
        math.log2(total + 1), len(blocks), math.log2(prog.scratch_bytes / io + 1),
        frac(lambda b, p: p.lanes == 1 and p.cores == 1), frac(lambda b, p: p.lanes > 1),
        frac(lambda b, p: p.cores > 1),
        *(math.log2(sum(p.traffic[i] for p in perf) / io + 1) for i in range(3)),
        math.log2(cycles / total), math.log2(compute / total), math.log2(memory / total + 1e-3),
        mp.lanes / max_lanes, (vl.extent / (math.ceil(vl.extent / max_lanes) * max_lanes)) if vl else 0.0,
        _vector_gathers(main, vl) if vl else 0.0,
        math.log2(par / info.num_cores + 1), mp.cores / info.num_cores,
        math.log2(max((lp.unroll_max_step for lp in main.loops), default=0) + 1),
        math.log2(mp.acc_vectors), mp.acc_vectors / info.vector_regs, math.log2(mp.chain),
        float(bool(real) and real[-1] in red), math.log2(main.loops[red[-1]].extent) if red else 0.0,
        math.log2(main.loops[innermost[-1]].extent) if innermost else 0.0, math.log2(_unrolled(main)),
        *strides, len(real), next((i for i in range(depth + 1) if fp[i] <= info.cache_bytes[0]), depth) / max(depth, 1),
        float(vl is None and mp.lanes > 1),
    ]


def _innermost_strides(block: Block, loop: Loop | None) -> list[float]:
    """Fractions of the block's accesses that the innermost loop leaves in place, walks
    contiguously, or moves by a cache line or more per step."""
    if loop is None or not block.accesses:
        return [1.0, 0.0, 0.0]
    moves = _moves(block, loop)
    far = [m is None or m * a.elem_bytes >= 64 for m, a in zip(moves, block.accesses)]
    n = len(moves)
    return [sum(m == 0 for m in moves) / n, sum(m == 1 for m in moves) / n, sum(far) / n]


def _dtype_bits(dtype) -> int:
    import tvm

    return tvm.DataType(str(dtype)).bits


def _loops_in(node, out: set[int]) -> None:
    """Adds to ``out`` the loops a compiled index expression (``_compile``) depends on."""
    if node is None or node[0] == "c":
        return
    if node[0] == "v":
        out.add(node[1])
    else:
        _loops_in(node[1], out)
        _loops_in(node[2], out)


def _reduce_loop_positions(block: Block) -> list[int]:
    """Indices of the loops that feed a reduction block variable."""
    used: set[int] = set()
    for i in block.reduce_vars:
        _loops_in(block.bindings[i], used)
    return sorted(used)


def _moves(block: Block, loop: Loop) -> list[int | None]:
    """How far each access's flattened address moves (in elements) when ``loop`` steps once,
    at the first point of the other loops; None where the index is not understood."""
    def addresses(step):
        env = [(lp.min + step * (lp is loop),) * 2 for lp in block.loops]
        benv = [_interval(b, env) for b in block.bindings]
        out = []
        for acc in block.accesses:
            addr, stride = 0, 1
            for dim, (start, _) in reversed(list(zip(acc.shape, acc.dims))):
                rng = _interval(start, benv)
                if rng is None:
                    addr = None
                    break
                addr += rng[0] * stride
                stride *= dim
            out.append(addr)
        return out

    return [None if a is None or b is None else abs(b - a) for a, b in zip(addresses(0), addresses(1))]


def _vector_gathers(block: Block, vl: Loop) -> float:
    """Accesses whose address does not move by 0 or 1 element with the vector loop."""
    return float(sum(m is None or m > 1 for m in _moves(block, vl)))


# -- the sim group (generic; the sim target may register exact ones) ----------------------------
SIM_NAMES = ("sim_log_tiles", "sim_log_dma_bytes", "sim_dma_per_mac", "sim_map_eff_rows", "sim_map_eff_cols",
             "sim_map_eff", "sim_shift_frac", "sim_log_shift_ops", "sim_log_mul_ops")


def sim_features(prog: Program, info: TargetInfo) -> list[float]:
    blocks = prog.blocks
    if not blocks:
        return [0.0] * len(SIM_NAMES)
    main = max(blocks, key=lambda b: (b.is_reduction, b.work))
    fp = footprints(main)  # the DMA engine moves exact bytes
    depth = len(main.loops)
    level = next((i for i in range(depth + 1) if fp[i] <= info.sim_scratchpad_bytes), depth)
    tiles = math.prod(lp.extent for lp in main.loops[:level])
    dma = tiles * fp[level]
    # the array holds a tile's two innermost spatial output dims: rows x cols
    spatial = [lp for i, lp in enumerate(main.loops[level:], level) if i not in _reduce_loop_positions(main)]
    rows_t = spatial[-2].extent if len(spatial) >= 2 else 1
    cols_t = spatial[-1].extent if spatial else 1
    R, C = info.sim_array
    eff_r = rows_t / (math.ceil(rows_t / R) * R)
    eff_c = cols_t / (math.ceil(cols_t / C) * C)
    shifts = sum(b.iterations * b.ops["shift"] for b in blocks)
    muls = sum(b.iterations * b.ops["mul"] for b in blocks)
    macs = max(main.iterations, 1)
    return [math.log2(tiles), math.log2(dma + 1), dma / macs, eff_r, eff_c, eff_r * eff_c,
            shifts / max(shifts + muls, 1), math.log2(shifts + 1), math.log2(muls + 1)]


SIM_EXACT_NAMES = ("simx_planned", "simx_log_compute_cycles", "simx_log_dma_cycles", "simx_log_bound",
                   "simx_log_serial", "simx_compute_frac", "simx_log_dma_bytes", "simx_log_transfers",
                   "simx_log_instructions", "simx_map_eff", "simx_log_tiles", "simx_ifmap_fill",
                   "simx_weight_fill", "simx_acc_fill")


def sim_exact_features(prog: Program, info: TargetInfo) -> list[float]:
    """What the sim translator's plan of this candidate does (``static_stats``), on the machine
    the tuning target names (``info.extra["sim_model"]``; the default machine otherwise): compute
    cycles, DMA cycles (bytes over the DRAM bandwidth plus each transfer's latency), their max
    (the double-buffered bound) and sum, DMA bytes and transfers, instructions, PE-array mapping
    efficiency, tiles, scratchpad fill. A candidate the translator would refuse: all zeros."""
    if prog.mod is None:
        return [0.0] * len(SIM_EXACT_NAMES)
    from ...errors import AccelcError
    from ...targets.sim.tuning import config_for_model
    from ...targets.sim.tuning import sim_features as planned_stats

    cfg = config_for_model(info.extra.get("sim_model"))
    try:
        st = planned_stats(prog.mod, cfg)
    except (AccelcError, ValueError, KeyError, IndexError, ZeroDivisionError):
        return [0.0] * len(SIM_EXACT_NAMES)
    compute = st["compute_cycles"]
    dma = st["dma_bytes"] / cfg.dram.bandwidth_bytes_per_cycle + st["dma_latency_cycles"]
    log = lambda v: math.log2(v + 1.0)  # noqa: E731
    return [1.0, log(compute), log(dma), log(max(compute, dma)), log(compute + dma),
            compute / max(compute + dma, 1.0), log(st["dma_bytes"]), log(st["dma_transfers"]),
            log(st["instructions"]), st["mapping_efficiency"],
            log(st["tiles_m"] * st["tiles_k"] * st["tiles_n"]), st["ifmap_fill"], st["weight_fill"], st["acc_fill"]]


def sim_all_features(prog: Program, info: TargetInfo) -> list[float]:
    return list(sim_features(prog, info)) + sim_exact_features(prog, info)


# -- registry -----------------------------------------------------------------------------------
FeatureFn = Callable[[Program, TargetInfo], Sequence[float]]
CUDA_NAMES = ("gpu_log_threads", "gpu_warp_multiple", "gpu_log_blocks", "gpu_waves", "gpu_wave_fill",
              "gpu_log_work_per_thread", "gpu_log_shared", "gpu_shared_frac", "gpu_log_local",
              "gpu_tensor_core", "gpu_vec_lanes", "gpu_log_unroll", "gpu_log_io_per_work")
_SMS = 132  # streaming multiprocessors of the GPUs we tune for (H100 SXM); a scale, not a limit


def cuda_features(prog: Program, info: TargetInfo) -> list[float]:
    """Launch shape and on-chip memory of a GPU schedule: threads per block (and whether a
    whole number of warps), blocks and waves over the SMs, work per thread, shared and local
    (register) bytes, tensor-core fragments, vector width, unrolling."""
    blocks = prog.blocks
    if not blocks:
        return [0.0] * len(CUDA_NAMES)
    main = max(blocks, key=lambda b: (b.is_reduction, b.work))
    threads = math.prod(lp.extent for lp in main.loops if lp.thread.startswith("threadIdx")) or 1
    grid = math.prod(lp.extent for lp in main.loops if lp.thread.startswith("blockIdx")) or 1
    waves = grid / _SMS
    work = sum(b.work for b in blocks)
    shared = sum(v for k, v in prog.scope_bytes.items() if k.startswith("shared"))
    local = sum(v for k, v in prog.scope_bytes.items() if k == "local")
    tensor_core = float(any(k.startswith(("wmma.", "m16n8k8.", "m16n8k16.")) for k in prog.scope_bytes))
    lanes = max((lp.extent for b in blocks for lp in b.loops if lp.kind == 2), default=1)  # vectorized
    unroll = max((lp.unroll_max_step for b in blocks for lp in b.loops), default=0)
    return [math.log2(threads), float(threads % 32 == 0), math.log2(grid), waves,
            waves / math.ceil(waves) if waves else 0.0, math.log2(max(work / (threads * grid), 1.0)),
            math.log2(shared + 1), shared / 49152.0, math.log2(local + 1), tensor_core, float(lanes),
            math.log2(unroll + 1), math.log2(max(prog.io_bytes, 1.0) / max(work, 1.0) + 1e-9)]


_GROUPS: dict[str, tuple[tuple[str, ...], FeatureFn]] = {
    "cpu": (CPU_NAMES, cpu_features),
    "sim": (SIM_NAMES + SIM_EXACT_NAMES, sim_all_features),
    "cuda": (CUDA_NAMES, cuda_features),
}


def register_target_features(kind: str, fn: FeatureFn, names: Sequence[str] | None = None) -> None:
    """Use ``fn(program, target_info) -> floats`` (one per name) for target ``kind``'s group.

    ``names`` defaults to the group's current names (same length, so saved models stay
    valid); new names change the feature vector, and models saved before will not load.
    """
    from ...errors import UsageError

    names = tuple(names) if names is not None else _GROUPS.get(kind, ((),))[0]
    if not names:
        raise UsageError(f"target features for '{kind}' need names (a new group)")
    _GROUPS[kind] = (names, fn)


def groups_for(kind: str) -> list[str]:
    """Feature groups of a target kind: the host CPU's, plus the accelerator's own."""
    kind = {"llvm": "cpu", "accelc/cpu": "cpu"}.get(kind, kind)
    if kind == "cuda":  # a GPU kernel: no host CPU loop nest to describe
        return ["cuda"]
    return ["cpu"] + ([kind] if kind != "cpu" and kind in _GROUPS else [])


def feature_names(kind: str = "llvm") -> list[str]:
    names = [f"psf{i}" for i in range(PER_STORE_LENGTH)]
    for g in groups_for(kind):
        names += list(_GROUPS[g][0])
    return names


def target_info(target=None, kind: str | None = None, **overrides) -> TargetInfo:
    """``TargetInfo`` for an llvm ``target`` (cores, vector width) and this host's caches."""
    info = TargetInfo(num_cores=1, cache_bytes=host_caches())
    if target is not None and target.kind.name == "llvm":
        from ..cpu.base import has_isa_feature

        info.num_cores = int(target.attrs.get("num-cores", 1)) if "num-cores" in target.attrs else 1

        has = partial(has_isa_feature, target)

        if has("avx512f"):
            info.vector_bits, info.vector_regs = 512, 32
        elif has("avx") or has("avx2"):
            info.vector_bits, info.vector_regs = 256, 16
        elif has("neon") or has("sse2"):
            info.vector_bits, info.vector_regs = 128, 16 if has("sse2") else 32
    info.kind = kind or "cpu"
    if target is not None and "accel-sim" in [str(k) for k in target.keys]:
        info.extra["sim_model"] = str(target.attrs.get("model", ""))
    for key, value in overrides.items():
        setattr(info, key, value)
    return info


@lru_cache(maxsize=1)
def host_caches() -> tuple[int, int, int]:
    """This host's L1d, L2 and L3 sizes in bytes, which the cache-traffic features are sized
    by; ``TargetInfo``'s defaults where Linux does not say."""
    sizes = {}
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    try:
        for idx in base.glob("index*"):
            level = int((idx / "level").read_text())
            if (idx / "type").read_text().strip() in ("Data", "Unified"):
                text = (idx / "size").read_text().strip()
                mult = {"K": 1 << 10, "M": 1 << 20}.get(text[-1], 1)
                sizes[level] = int(text.rstrip("KM")) * mult
    except (OSError, ValueError):
        pass
    default = TargetInfo().cache_bytes
    return tuple(sizes.get(i + 1, default[i]) for i in range(3))


def target_features(mod, info: TargetInfo) -> np.ndarray:
    """The target-feature vector of one scheduled module."""
    prog = parse(mod)
    out = []
    for g in groups_for(info.kind):
        names, fn = _GROUPS[g]
        vals = list(fn(prog, info))
        if len(vals) != len(names):
            raise ValueError(f"target features '{g}' returned {len(vals)} values for {len(names)} names")
        out += vals
    return np.asarray(out, dtype="float32")


@derived_object
class AccelcFeatures(PyFeatureExtractor):
    """``PerStoreFeature`` rows with the target features appended to every row.

    ``target_kind``: ``"llvm"`` (CPU features) or an accelerator group such as ``"sim"``
    (CPU + accelerator features). The target's cores and vector width come from the tuning
    context's target; ``info`` overrides them (tests, other machines).
    """

    def __init__(self, target_kind: str = "llvm", info: TargetInfo | None = None):
        super().__init__()
        self.target_kind = target_kind
        self.info = info
        self.per_store = PerStoreFeature()
        self.names = feature_names(target_kind)

    def _info(self, context) -> TargetInfo:
        if self.info is not None:
            return self.info
        target = context.target if context is not None else None
        return target_info(target, kind=groups_for(self.target_kind)[-1])

    def extract_from(self, context, candidates):
        import tvm

        info = self._info(context)
        rows = self.per_store.extract_from(context, candidates)
        out = []
        for cand, row in zip(candidates, rows):
            base = row.numpy()
            extra = target_features(cand.sch.mod, info)
            out.append(tvm.runtime.tensor(np.hstack([base, np.broadcast_to(extra, (base.shape[0], extra.size))])
                                          .astype("float32")))
        return out
