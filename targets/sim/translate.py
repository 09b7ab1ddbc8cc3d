"""Scheduled, tensorized TIR → an ``accel`` program (the translation the sim target's tuning
builder and the offload use).

The function must be a :mod:`.tensorize` schedule: at root, optional ``pad_einsum`` pad blocks
(a padded copy of a parameter, an *alias*: the program reads the parameter and clips) and
unpad blocks; inside the loops only *stages*, each a perfect loop nest around one block:

=========  =================================================  =============================
stage      block                                              instruction
=========  =================================================  =============================
load       copy DRAM (param or alias) → ``ifmap``/``weight``  ``accel.dma_load``
init       ``acc[...] = 0``                                   none: the next gemm overwrites
compute    tensorized fold(s): ``call_extern("accel.gemm")``  one ``accel.gemm`` per nest
store      copy ``acc`` → DRAM                                ``accel.dma_store``
=========  =================================================  =============================

The control loops (those holding several stages) are run at their concrete extents; a stage's
region is evaluated over its own loops by interval arithmetic, so all folds of one nest become
one instruction of the DMA tile's size. Regions are clipped to the parameters' real extents
(padding never reaches DRAM; a tile wholly in the padding emits nothing). Each scratchpad buffer
gets two slots when the machine is double buffered (else one) and the tokens follow
``_lower_tiled``: a load waits on the last compute that read its slot, the first compute into
an accumulator slot waits on the store that last drained it, a store waits on the last compute.
Tiles that overflow a scratchpad are a :class:`TargetError` naming it (:func:`plan`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ...errors import TargetError
from .config import MachineConfig
from .cycles import spatio_temporal
from .program import ProgramBuilder
from .tensorize import EXTERN, SPAD_OF_SCOPE, fold_shape

_KIND_OF_EXTERN = {v: k for k, v in EXTERN.items()}
_SPAD_FIELD = {"ifmap": "ifmap_bytes", "weight": "filter_bytes", "acc": "ofmap_bytes"}
_ELEM = {"int8": ("i8", 1), "int32": ("i32", 4)}
_NEED_PE = {"gemm": "mac", "shift_gemm": "shift-add"}
#: Operand dtypes of each op: (activation, weight) → int32 accumulators.
_OPERANDS = {"gemm": ("int8", "int8"), "shift_gemm": ("int32", "int8")}


def _err(msg: str) -> TargetError:
    return TargetError(f"sim: {msg}")


# ----------------------------------------------------------------------------------------------
# Interval evaluation of index expressions


class _Env:
    """Loop variable slots (``vals[slot] = (lo, hi)``) and block-iter bindings, compiled."""

    def __init__(self):
        self.vals: list[tuple[int, int]] = []
        self.slots: dict = {}
        self.binds: dict = {}

    def new_slot(self, var, lo: int, hi: int) -> int:
        self.slots[var] = len(self.vals)
        self.vals.append((lo, hi))
        return len(self.vals) - 1

    def compile(self, expr):
        """``expr`` → a function returning its (lo, hi) over the current slot values."""
        from tvm.ir import expr as IE
        from tvm.ir.prim import expr as PE

        vals = self.vals
        if isinstance(expr, PE.IntImm):
            v = int(expr.value)
            return lambda: (v, v)
        if isinstance(expr, IE.Var):
            if expr in self.binds:
                return self.binds[expr]
            if expr not in self.slots:
                raise _err(f"index uses '{expr.name}', which is not a loop or block variable here")
            s = self.slots[expr]
            return lambda: vals[s]
        if isinstance(expr, PE.Cast):
            return self.compile(expr.value)
        ops = {PE.Add: _add, PE.Sub: _sub, PE.Mul: _mul, PE.FloorDiv: _floordiv, PE.FloorMod: _floormod,
               PE.Min: lambda a, b: (min(a[0], b[0]), min(a[1], b[1])),
               PE.Max: lambda a, b: (max(a[0], b[0]), max(a[1], b[1]))}
        op = ops.get(type(expr))
        if op is None:
            raise _err(f"unsupported index expression {expr} ({type(expr).__name__})")
        fa, fb = self.compile(expr.a), self.compile(expr.b)
        return lambda: op(fa(), fb())


def _add(a, b):
    return a[0] + b[0], a[1] + b[1]


def _sub(a, b):
    return a[0] - b[1], a[1] - b[0]


def _mul(a, b):
    p = (a[0] * b[0], a[0] * b[1], a[1] * b[0], a[1] * b[1])
    return min(p), max(p)


def _floordiv(a, b):
    if b[0] != b[1] or b[0] <= 0:
        raise _err("index divides by a non-constant or non-positive value")
    return a[0] // b[0], a[1] // b[0]


def _floormod(a, b):
    if b[0] != b[1] or b[0] <= 0:
        raise _err("index takes a modulo by a non-constant or non-positive value")
    c = b[0]
    return (a[0] % c, a[1] % c) if a[0] // c == a[1] // c else (0, c - 1)


def _const(x, what: str) -> int:
    from tvm.ir.prim import expr as PE

    if not isinstance(x, PE.IntImm):
        raise _err(f"{what} must be a constant, got {x}")
    return int(x.value)


# ----------------------------------------------------------------------------------------------
# The plan: buffers, stages, control loops


@dataclass
class _Buf:
    name: str
    shape: tuple[int, ...]
    dtype: str
    scope: str
    param: bool
    base: str | None = None  # the parameter whose coordinates (and real extents) it shares

    @property
    def spad(self) -> str | None:
        return SPAD_OF_SCOPE.get(self.scope)


@dataclass
class _Region:
    buf: str
    dims: list  # per dimension: (start function over the nest's loops, block's constant extent)

    def span(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(starts, extents) of the union over the stage's own loops, at the current control
        loop values (unclipped: padded coordinates)."""
        los, exts = [], []
        for f, e in self.dims:
            lo, hi = f()
            los.append(lo)
            exts.append(hi + e - lo)
        return tuple(los), tuple(exts)

    def nominal(self) -> tuple[int, ...]:
        return self.span()[1]

    def one(self) -> tuple[int, ...]:
        """Extents of one block instance (one fold of a compute stage)."""
        return tuple(e for _, e in self.dims)


@dataclass
class Stage:
    """One perfect loop nest around one block, executed as (at most) one instruction."""

    kind: str  # load / store / init / compute / pad / unpad
    block: str
    reads: list
    writes: list
    iterations: int  # product of the nest's own loop extents
    depth: int  # enclosing control loops
    execs: int = 1  # executions: product of the enclosing control loop extents
    op: str | None = None  # gemm / shift_gemm for a compute stage


@dataclass
class _Loop:
    slot: int
    start: int
    extent: int
    body: list


@dataclass
class Plan:
    """What :func:`translate` executes: the program's DRAM buffers, the loop tree of stages
    and each scratchpad buffer's slot size and base address."""

    name: str
    bufs: dict
    tree: list
    stages: list
    env: _Env
    slot_bytes: dict = field(default_factory=dict)  # spad buffer → bytes of one slot
    base_addr: dict = field(default_factory=dict)  # spad buffer → byte address of slot 0
    nslots: int = 2
    ops: set = field(default_factory=set)

    def real(self, buf: str) -> tuple[int, ...]:
        b = self.bufs[buf]
        return self.bufs[b.base].shape if b.base else b.shape

    def dram(self, buf: str) -> str:
        b = self.bufs[buf]
        return b.base or b.name


def _func(mod):
    import tvm

    if hasattr(mod, "mod") and not isinstance(mod, tvm.ir.IRModule):  # a Schedule
        mod = mod.mod
    if isinstance(mod, tvm.ir.IRModule):
        funcs = [f for _, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
        if len(funcs) != 1:
            raise _err(f"expected one PrimFunc in the module, got {len(funcs)}")
        return funcs[0]
    if isinstance(mod, tvm.tirx.PrimFunc):
        return mod
    raise _err(f"expected a PrimFunc, IRModule or Schedule, got {type(mod).__name__}")


def _regions(env: _Env, regions) -> list[_Region]:
    out = []
    for r in regions:
        dims = [(env.compile(rng.min), _const(rng.extent, "a region extent")) for rng in r.region]
        out.append(_Region(str(r.source.name), dims))
    return out


def _classify(block, bufs) -> tuple[str, str | None]:
    import tvm.tirx.stmt as S
    from tvm.ir import expr as IE
    from tvm.ir.prim import expr as PE

    name = str(block.name_hint)
    body = block.body
    if isinstance(body, S.Evaluate) and isinstance(body.value, IE.Call) and block.init is None:
        for arg in body.value.args:
            if isinstance(arg, IE.StringImm) and str(arg.value) in _KIND_OF_EXTERN:
                return "compute", _KIND_OF_EXTERN[str(arg.value)]
    if block.init is not None:
        if any(bufs[str(r.source.name)].spad is None for r in block.writes):
            raise _err(f"block '{name}' computes on DRAM buffers: it is not tensorized onto an accel "
                       f"intrinsic (schedule it with accelc.targets.sim.tensorize.schedule_gemm)")
        raise _err(f"block '{name}' still has a reduction init: decompose_reduction before translating")
    if not isinstance(body, S.BufferStore) or len(block.writes) != 1:
        raise _err(f"block '{name}' is not an accelerator stage (not a copy, a zero fill or a "
                   f"tensorized accel instruction)")
    dst = bufs[str(body.buffer.name)]
    reads = [bufs[str(r.source.name)] for r in block.reads]
    if not reads and isinstance(body.value, PE.IntImm) and int(body.value.value) == 0 and dst.spad == "acc":
        return "init", None
    if len(reads) != 1:
        raise _err(f"block '{name}' is not an accelerator stage: it computes on "
                   f"{', '.join(b.name for b in reads) or 'nothing'} (not tensorized onto an accel intrinsic)")
    src = reads[0]
    if dst.scope == "global" and not dst.param and src.param:
        return "pad", None
    value = body.value
    if not (isinstance(value, IE.TensorLoad) and len(value.indices) == len(body.indices)
            and all(a.same_as(b) for a, b in zip(value.indices, body.indices))):
        raise _err(f"block '{name}' moves {src.name} → {dst.name} but is not a plain copy")
    if dst.param and src.scope == "global" and not src.param:
        return "unpad", None
    if dst.spad in ("ifmap", "weight") and src.spad is None:
        return "load", None
    if src.spad == "acc" and dst.spad is None:
        return "store", None
    raise _err(f"block '{name}' copies {src.name} ({src.scope}) → {dst.name} ({dst.scope}); the accelerator "
               f"only loads into ifmap/weight and stores from acc")


def _parse(stmt, env: _Env, bufs, stages: list, depth: int, execs: int) -> list:
    import tvm.tirx.stmt as S
    from tvm.s_tir.stmt import SBlockRealize

    if isinstance(stmt, S.SeqStmt):
        return [n for s in stmt for n in _parse(s, env, bufs, stages, depth, execs)]
    chain = []
    while isinstance(stmt, S.For):
        if stmt.thread_binding is not None or int(stmt.kind) != 0:
            raise _err(f"loop '{stmt.loop_var.name}' is not a plain serial loop")
        chain.append(stmt)
        stmt = stmt.body
    if isinstance(stmt, SBlockRealize):
        iters = 1
        for loop in chain:
            lo, ext = _const(loop.min, "a loop start"), _const(loop.extent, "a loop extent")
            env.new_slot(loop.loop_var, lo, lo + ext - 1)
            iters *= ext
        blk = stmt.block
        if not (hasattr(stmt.predicate, "value") and int(stmt.predicate.value) == 1):
            raise _err(f"block '{blk.name_hint}' has a predicate ({stmt.predicate}); pad instead of "
                       f"guarding partial tiles")
        for iv, val in zip(blk.iter_vars, stmt.iter_values):
            env.binds[iv.var] = env.compile(val)
        kind, op = _classify(blk, bufs)
        st = Stage(kind, str(blk.name_hint), _regions(env, blk.reads), _regions(env, blk.writes), iters,
                   depth, execs, op)
        if kind in ("pad", "unpad") and depth:
            raise _err(f"padding block '{st.block}' must be at the function's top level")
        stages.append(st)
        return [st]
    if not chain:
        raise _err(f"unsupported statement {type(stmt).__name__} in the schedule")
    loops = []
    for loop in chain:
        lo, ext = _const(loop.min, "a loop start"), _const(loop.extent, "a loop extent")
        loops.append(_Loop(env.new_slot(loop.loop_var, lo, lo), lo, ext, []))
        depth, execs = depth + 1, execs * ext
    loops[-1].body = _parse(stmt, env, bufs, stages, depth, execs)
    for outer, inner in zip(loops, loops[1:]):
        outer.body = [inner]
    return [loops[0]]


def _bufs(func) -> dict:
    root = func.body.block
    bufs = {}
    for p in func.params:
        bufs[str(p.name)] = _Buf(str(p.name), tuple(int(s) for s in p.shape), str(p.dtype), "global", True)
    for b in root.alloc_buffers:
        name = str(b.name)
        if name in bufs:
            raise _err(f"buffer name '{name}' is used twice")
        bufs[name] = _Buf(name, tuple(int(s) for s in b.shape), str(b.dtype), str(b.scope()), False)
    for b in bufs.values():
        if b.dtype not in _ELEM:
            raise _err(f"buffer '{b.name}' has dtype {b.dtype}; the accelerator moves int8 and int32")
        if b.scope != "global" and b.spad is None:
            raise _err(f"buffer '{b.name}' is in scope '{b.scope}', not DRAM or an accelerator scratchpad")
    return bufs


def plan(mod, cfg: MachineConfig, name: str | None = None, check_fit: bool = True) -> Plan:
    """Parse and check a scheduled function (structure, machine support and, with
    ``check_fit``, scratchpad capacity) without emitting anything; raises
    :class:`TargetError` on the first problem."""
    from tvm.s_tir.stmt import SBlockRealize

    func = _func(mod)
    if not isinstance(func.body, SBlockRealize):
        raise _err("the function has no root block (is it s_tir?)")
    bufs = _bufs(func)
    env = _Env()
    stages: list[Stage] = []
    tree = _parse(func.body.block.body, env, bufs, stages, 0, 1)

    def link(spad_buf: str, dram_buf: str, block: str):
        b = bufs[spad_buf]
        base = bufs[dram_buf].base or dram_buf
        if b.base not in (None, base):
            raise _err(f"scratchpad buffer '{spad_buf}' mirrors both '{b.base}' and '{base}' (block '{block}')")
        b.base = base

    for st in stages:  # aliases first: a load may read a padded copy
        if st.kind in ("pad", "unpad"):
            alias, param = (st.writes[0].buf, st.reads[0].buf) if st.kind == "pad" else (st.reads[0].buf,
                                                                                             st.writes[0].buf)
            link(alias, param, st.block)
    for st in stages:
        if st.kind == "load":
            link(st.writes[0].buf, st.reads[0].buf, st.block)
        elif st.kind == "store":
            link(st.reads[0].buf, st.writes[0].buf, st.block)
    computes = [st for st in stages if st.kind == "compute"]
    if not computes:
        raise _err("the schedule has no tensorized accelerator instruction (schedule it with "
                   "accelc.targets.sim.tensorize.schedule_gemm or the tuning design space)")
    p = Plan(name or computes[0].op, bufs, tree, stages, env,
             nslots=2 if cfg.scratchpad.double_buffered else 1, ops={st.op for st in computes})
    for op in p.ops:
        if cfg.pe_type not in (_NEED_PE[op], "both"):
            raise _err(f"accel.{op} needs {_NEED_PE[op]} PEs, but the machine has array.pe_type = '{cfg.pe_type}'")
    for st in stages:
        if st.kind == "compute":
            _check_operands(st, bufs)
        for r in st.reads + st.writes:
            b = bufs[r.buf]
            if b.spad and b.base is None:
                raise _err(f"scratchpad buffer '{b.name}' is never loaded or stored (block '{st.block}')")
    for st in stages:
        _check_tiling(st, bufs)
    _fit(p, cfg, check_fit)
    return p


def _check_tiling(st: Stage, bufs) -> None:
    """The nest's block instances must tile its union region exactly (nothing counted twice):
    then the union is one instruction. A copy moves one element per instance; a compute
    stage's instance is one fold."""
    if st.kind in ("pad", "unpad"):
        return
    if st.kind == "compute":
        by = {bufs[r.buf].spad: r for r in st.reads + st.writes}
        one = math.prod(by["acc"].one()) * by["ifmap"].one()[-1]
        union = math.prod(by["acc"].nominal()) * by["ifmap"].nominal()[-1]
    else:
        one, union = 1, math.prod(st.writes[0].nominal())
    if st.iterations * one != union:
        raise _err(f"block '{st.block}': its {st.iterations} instances do not tile one region of "
                   f"{union} elements (an index mapping the translator cannot merge)")


def _check_operands(st: Stage, bufs) -> None:
    roles = {}
    for r in st.reads + st.writes:
        roles.setdefault(bufs[r.buf].spad, r)
    if set(roles) != {"ifmap", "weight", "acc"}:
        raise _err(f"block '{st.block}' must read ifmap and weight and accumulate in acc, "
                   f"got {sorted(map(str, roles))}")
    want = _OPERANDS[st.op]
    got = (bufs[roles["ifmap"].buf].dtype, bufs[roles["weight"].buf].dtype)
    if got != want or bufs[roles["acc"].buf].dtype != "int32":
        raise _err(f"accel.{st.op} takes {want[0]} activations and {want[1]} weights into int32, "
                   f"block '{st.block}' has {got[0]}, {got[1]}, {bufs[roles['acc'].buf].dtype}")


def _fit(p: Plan, cfg: MachineConfig, check: bool = True) -> None:
    """Slot size of every scratchpad buffer (its largest clipped region) and the capacity check."""
    shapes = {}
    for st in p.stages:
        for r in st.reads + st.writes:
            b = p.bufs[r.buf]
            if b.spad:
                ext = [min(e, d) for e, d in zip(r.nominal(), p.real(r.buf))]
                size = math.prod(ext) * _ELEM[b.dtype][1]
                if size > p.slot_bytes.get(r.buf, -1):
                    p.slot_bytes[r.buf], shapes[r.buf] = size, ext
    for spad, key in _SPAD_FIELD.items():
        names = [n for n in p.slot_bytes if p.bufs[n].spad == spad]
        addr = 0
        for n in names:
            p.base_addr[n] = addr
            addr += -(-p.nslots * p.slot_bytes[n] // 4) * 4
        cap = getattr(cfg.scratchpad, key)
        if check and addr > cap:
            what = ", ".join(f"{p.dram(n)} tile {'x'.join(map(str, shapes[n]))} {p.bufs[n].dtype} = "
                             f"{p.slot_bytes[n]} B" for n in names)
            slots = f" x {p.nslots} slots (double buffered)" if p.nslots == 2 else ""
            raise _err(f"tiles do not fit the '{spad}' scratchpad (scratchpad.{key} = {cap} B): "
                       f"{what}{slots} = {addr} B")


# ----------------------------------------------------------------------------------------------
# Emission


def _flat(los, exts, shape, what: str, dense: bool = False) -> tuple[int, int, int]:
    """(element offset, rows, cols) of a box in a row-major array of ``shape``: every dim but
    the last folds into rows, which must be contiguous; ``dense``: rows must also be whole (an
    instruction operand in a scratchpad tile has no row stride)."""
    strides = [math.prod(shape[d + 1:]) for d in range(len(shape))]
    outer = [d for d in range(len(shape) - 1) if exts[d] > 1]
    if outer and any(exts[d] != shape[d] for d in range(outer[0] + 1, len(shape) - 1)):
        raise _err(f"{what}: region {list(exts)} of {list(shape)} is not a set of contiguous rows")
    rows = math.prod(exts[:-1])
    if dense and rows > 1 and exts[-1] != shape[-1]:
        raise _err(f"{what}: region {list(exts)} inside a {list(shape)} tile is not dense")
    return sum(lo * s for lo, s in zip(los, strides)), rows, exts[-1]


@dataclass
class _Tile:
    los: tuple
    exts: tuple
    slot: int
    addr: int
    token: object = None  # load: its token; acc: the last compute into it
    written: list = field(default_factory=list)  # acc: regions computed since the init


class _Emitter:
    def __init__(self, p: Plan, prefix: str = ""):
        self.p, self.prefix = p, prefix
        self.b = ProgramBuilder(p.name)
        used = {p.dram(r.buf) for st in p.stages for r in st.reads + st.writes}
        written = {p.dram(st.writes[0].buf) for st in p.stages if st.kind in ("store", "unpad")}
        for name, buf in p.bufs.items():
            if buf.param and name in used:
                rows = math.prod(buf.shape[:-1]) if len(buf.shape) > 1 else 1
                self.b.buffer(prefix + name, (rows, buf.shape[-1]) if len(buf.shape) != 2 else buf.shape,
                              _ELEM[buf.dtype][0], "output" if name in written else "input")
        self.next = {n: 0 for n in p.slot_bytes}
        self.free = {n: [None] * p.nslots for n in p.slot_bytes}
        self.cur: dict = {}

    def box(self, r: _Region):
        """The region clipped to the real extents of the buffer it mirrors."""
        starts, exts = r.span()
        los = tuple(max(lo, 0) for lo in starts)
        return los, tuple(max(0, min(s + e, d) - lo) for s, e, d, lo in zip(starts, exts, self.p.real(r.buf), los))

    def run(self, nodes):
        vals = self.p.env.vals
        for node in nodes:
            if isinstance(node, _Loop):
                for v in range(node.start, node.start + node.extent):
                    vals[node.slot] = (v, v)
                    self.run(node.body)
            else:
                getattr(self, node.kind)(node)

    def pad(self, st):
        pass

    unpad = pad

    def _slot(self, buf: str, los, exts) -> _Tile:
        s = self.next[buf]
        self.next[buf] = (s + 1) % self.p.nslots
        t = _Tile(los, exts, s, self.p.base_addr[buf] + s * self.p.slot_bytes[buf])
        self.cur[buf] = t
        return t

    def load(self, st):
        src, dst = st.reads[0], st.writes[0]
        los, exts = self.box(src)
        if 0 in exts:
            self.cur[dst.buf] = None
            return
        buf = self.p.bufs[dst.buf]
        t = self._slot(dst.buf, los, exts)
        off, rows, cols = _flat(los, exts, self.p.real(src.buf), f"dma_load of {self.p.dram(src.buf)}")
        t.token = self.b.dma_load(self.prefix + self.p.dram(src.buf), buf.spad, t.addr, rows, cols, offset=off,
                                  stride=self.p.real(src.buf)[-1], deps=[self.free[dst.buf][t.slot]])

    def init(self, st):
        los, exts = self.box(st.writes[0])
        self.cur[st.writes[0].buf] = None if 0 in exts else self._slot(st.writes[0].buf, los, exts)

    def _locate(self, st, r: _Region, los, exts) -> tuple[_Tile, int, int, int]:
        t = self.cur.get(r.buf)
        what = "loaded" if self.p.bufs[r.buf].spad != "acc" else "initialised"
        if t is None or any(a < b or a + x > b + y for a, x, b, y in zip(los, exts, t.los, t.exts)):
            raise _err(f"block '{st.block}' uses {r.buf}{list(zip(los, exts))}, which is not in the "
                       f"{what} tile {list(zip(t.los, t.exts)) if t else '(none)'}")
        rel = [a - b for a, b in zip(los, t.los)]
        off, rows, cols = _flat(rel, exts, t.exts, f"scratchpad operand {r.buf} of block '{st.block}'", dense=True)
        return t, t.addr + off * _ELEM[self.p.bufs[r.buf].dtype][1], rows, cols

    def compute(self, st):
        by = {self.p.bufs[r.buf].spad: r for r in st.reads + st.writes}
        boxes = {k: self.box(r) for k, r in by.items()}
        if any(0 in e for _, e in boxes.values()):
            return  # a tile wholly in the padding
        ta, a_addr, m, k = self._locate(st, by["ifmap"], *boxes["ifmap"])
        tb, b_addr, kb, n = self._locate(st, by["weight"], *boxes["weight"])
        tc, c_addr, mc, nc = self._locate(st, by["acc"], *boxes["acc"])
        if (kb, mc, nc) != (k, m, n):
            raise _err(f"block '{st.block}': operand shapes {m}x{k}, {kb}x{n}, {mc}x{nc} do not form a GEMM")
        key = boxes["acc"]
        first = key not in tc.written
        if first and any(_overlap(key, w) for w in tc.written):
            raise _err(f"block '{st.block}': accumulator region {key} partly overlaps an earlier one")
        acc_buf = by["acc"].buf
        op = self.b.shift_gemm if st.op == "shift_gemm" else self.b.gemm
        tok = op(m, k, n, a_addr, b_addr, c_addr, accumulate=not first,
                 deps=[ta.token, tb.token, self.free[acc_buf][tc.slot] if first else None])
        if first:
            tc.written.append(key)
        tc.token = tok
        self.free[by["ifmap"].buf][ta.slot] = tok
        self.free[by["weight"].buf][tb.slot] = tok

    def store(self, st):
        src, dst = st.reads[0], st.writes[0]
        los, exts = self.box(src)
        if 0 in exts:
            return
        t, addr, rows, cols = self._locate(st, src, los, exts)
        covered = sum(math.prod(_intersect((los, exts), w)) for w in t.written)
        if covered != math.prod(exts):
            raise _err(f"block '{st.block}' stores {src.buf}{list(zip(los, exts))} before all of it was computed")
        off, _, _ = _flat(*self.box(dst), self.p.real(dst.buf), f"dma_store to {self.p.dram(dst.buf)}")
        tok = self.b.dma_store(self.prefix + self.p.dram(dst.buf), "acc", addr, rows, cols, offset=off,
                               stride=self.p.real(dst.buf)[-1], deps=[t.token])
        self.free[src.buf][t.slot] = tok


def _intersect(a, b) -> list[int]:
    return [max(0, min(la + ea, lb + eb) - max(la, lb)) for la, ea, lb, eb in zip(a[0], a[1], b[0], b[1])]


def _overlap(a, b) -> bool:
    return math.prod(_intersect(a, b)) > 0


def _positions(padded: int, tile: int, real: int) -> tuple[int, list[int]]:
    """(tile positions along a padded dimension, clipped extents of those holding real data)."""
    starts = range(0, padded, tile)
    return len(starts), [min(tile, real - s) for s in starts if s < real]


def static_stats(p: Plan, cfg: MachineConfig) -> dict:
    """What the translated program will do, computed from the plan without running its loops
    (exact for schedules whose stages tile their buffers, as :mod:`.tensorize`'s do): tiles,
    instruction counts, DMA bytes, PE-array folds and the Σ of the compute instructions'
    cycles, mapping efficiency, useful MAC / shift-add ops, scratchpad fill (floats)."""
    R, C = cfg.rows, cfg.cols
    f = {"tiles_m": 0, "tiles_k": 0, "tiles_n": 0, "tile_m": 0, "tile_k": 0, "tile_n": 0,
         "gemm_instructions": 0, "array_folds": 0, "mapping_efficiency": 0.0, "compute_cycles": 0,
         "mac_ops": 0, "shift_add_ops": 0, "dma_load_bytes": 0, "dma_store_bytes": 0,
         "dma_transfers": 0, "dma_latency_cycles": 0}
    used = slots = 0.0
    for st in p.stages:
        if st.kind == "compute":
            by = {p.bufs[r.buf].spad: r for r in st.reads + st.writes}
            (tm, tn), tk = by["acc"].nominal()[-2:], by["ifmap"].nominal()[-1]
            (pm, pn), pk = p.bufs[by["acc"].buf].shape[-2:], p.bufs[by["ifmap"].buf].shape[-1]
            (rm, rn), rk = p.real(by["acc"].buf)[-2:], p.real(by["ifmap"].buf)[-1]
            dims = {"m": _positions(pm, tm, rm), "k": _positions(pk, tk, rk), "n": _positions(pn, tn, rn)}
            reps = st.execs / math.prod(n for n, _ in dims.values())
            for d, t in zip("mkn", (tm, tk, tn)):
                f[f"tiles_{d}"], f[f"tile_{d}"] = len(dims[d][1]), t
            sr, sc, tt = spatio_temporal(*(dims[d][1] for d in "mkn"), cfg.dataflow)
            fold_r, fold_c = sum(-(-x // R) for x in sr), sum(-(-x // C) for x in sc)
            count = reps * len(sr) * len(sc) * len(tt)
            folds = reps * fold_r * fold_c * len(tt)
            f["gemm_instructions"] += count
            f["array_folds"] += folds
            used += reps * sum(sr) * sum(sc) * len(tt)
            slots += folds * R * C
            per_fold = R + C - 2 if cfg.dataflow == "os" else 2 * R + C - 2
            f["compute_cycles"] += folds * per_fold + reps * fold_r * fold_c * sum(tt) - count
            f["shift_add_ops" if st.op == "shift_gemm" else "mac_ops"] += reps * rm * rk * rn
        elif st.kind in ("load", "store"):
            dram = st.reads[0] if st.kind == "load" else st.writes[0]
            buf = p.bufs[dram.buf]
            pos = [_positions(pd, t, rd) for pd, t, rd in zip(buf.shape, dram.nominal(), p.real(dram.buf))]
            reps = st.execs / math.prod(n for n, _ in pos)
            nbytes = reps * math.prod(sum(c) for _, c in pos) * (4 if buf.dtype == "int32" else 1)
            f["dma_load_bytes" if st.kind == "load" else "dma_store_bytes"] += nbytes
            transfers = reps * math.prod(len(c) for _, c in pos)
            f["dma_transfers"] += transfers
            f["dma_latency_cycles"] += transfers * cfg.dram.latency_cycles
    f["mapping_efficiency"] = used / slots if slots else 0.0
    f["dma_bytes"] = f["dma_load_bytes"] + f["dma_store_bytes"]
    for spad, key in (("ifmap", "ifmap_bytes"), ("weight", "filter_bytes"), ("acc", "ofmap_bytes")):
        need = sum(p.nslots * b for n, b in p.slot_bytes.items() if p.bufs[n].spad == spad)
        f[f"{spad}_fill"] = need / getattr(cfg.scratchpad, key)
    f["fold_rows"], f["fold_k"], f["fold_cols"] = fold_shape(cfg)
    f["instructions"] = f["gemm_instructions"] + f["dma_transfers"]
    return {k: float(v) for k, v in f.items()}


def translate(mod, cfg: MachineConfig, name: str | None = None, prefix: str = ""):
    """The ``accel`` program (an xDSL ``builtin.module``) of a scheduled, tensorized function
    (PrimFunc, IRModule or Schedule) on machine ``cfg``; ``name`` defaults to the op, its DRAM
    buffers are the function's parameters with ``prefix`` (layers sharing one DRAM)."""
    p = plan(mod, cfg, name)
    em = _Emitter(p, prefix)
    em.run(p.tree)
    return em.b.module()


__all__ = ["Plan", "Stage", "plan", "static_stats", "translate"]
