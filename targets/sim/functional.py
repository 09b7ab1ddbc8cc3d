"""Functional interpreter of ``accel`` programs: NumPy, int8/int32 exact.

:func:`run` executes a module's programs in order over one DRAM (the named buffers) and one
set of byte-addressed scratchpads, checking every access, honouring tokens, and counting every
action (the raw counts the energy / cycle models price)::

    res = run(module, {"A": a, "B": b})
    res["outputs"]["C"], res["stats"]["mac"], res["stats"]["dram_read_bytes"]

Execution order: one in-order queue per unit (:data:`dialect.UNITS`); among the queue heads
whose tokens are all signalled, the one earliest in the program runs next. A program whose
dependencies are all on earlier instructions therefore runs in program order; one where no
head can ever run (a token waited on but never signalled: a cycle, a wait on a token from
outside the program, or a wait on a later instruction of the same unit) is an error.

Stats count each operand element once per instruction (tile level): the dataflow-dependent
re-reads inside the PE array are the cycle model's business.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from xdsl.dialects.builtin import IntegerAttr, IntegerType
from xdsl.ir import Operation

from ...errors import AccelcError
from .dialect import (
    ALU_BINARY,
    ALU_KINDS,
    BUFFER_KINDS,
    INSTRUCTIONS,
    SCRATCHPADS,
    AluOp,
    BarrierOp,
    BufferOp,
    DmaLoadOp,
    DmaStoreOp,
    GemmOp,
    ProgramOp,
    SddmmOp,
    ShiftGemmOp,
    SpmmOp,
)
from .program import programs

#: Scratchpad sizes in bytes used when :func:`run` is given none (the machine config's
#: defaults are the authority; these only make standalone runs possible).
DEFAULT_SCRATCHPADS = {"ifmap": 64 * 1024, "weight": 64 * 1024, "acc": 64 * 1024, "vec": 32 * 1024}

_NP = {8: np.int8, 16: np.int16, 32: np.int32}


class SimError(AccelcError):
    """An ``accel`` program the machine cannot execute: an access outside a buffer or
    scratchpad, a token that is never signalled, a bad attribute or a malformed CSR tile."""


def _new_stats() -> dict:
    return {
        "mac": 0,  # int8 multiply-accumulates (gemm, sddmm, spmm)
        "shift_add": 0,  # shift-add PE actions (shift_gemm), zero codes included
        "alu_ops": 0,  # vector-unit element operations
        "alu_by_kind": {},
        "dram_read_bytes": 0,
        "dram_write_bytes": 0,
        "sram_read_bytes": dict.fromkeys(SCRATCHPADS, 0),
        "sram_write_bytes": dict.fromkeys(SCRATCHPADS, 0),
        "instructions": {},  # op name -> count
    }


def _add_stats(into: dict, other: dict) -> None:
    for k, v in other.items():
        if isinstance(v, dict):
            for kk, vv in v.items():
                into[k][kk] = into[k].get(kk, 0) + vv
        else:
            into[k] += v


def _dtype(t: IntegerType, ctx: str) -> type:
    w = t.width.data
    if w not in _NP:
        raise SimError(f"{ctx}: element type i{w} is not supported (i8, i16, i32)")
    return _NP[w]


def _wrap32(v: np.ndarray) -> np.ndarray:
    return ((v.astype(np.int64) + 2**31) % 2**32 - 2**31).astype(np.int32)


def _saturate(v: np.ndarray, dtype) -> np.ndarray:
    info = np.iinfo(dtype)
    return np.clip(v, info.min, info.max).astype(dtype)


class _Buffer:
    def __init__(self, name: str, shape: tuple[int, ...], dtype, kind: str):
        self.name, self.shape, self.dtype, self.kind = name, shape, dtype, kind
        self.data = np.zeros(int(np.prod(shape, dtype=np.int64)), dtype=dtype)


class _Machine:
    def __init__(self, spad_sizes: Mapping[str, int]):
        unknown = set(spad_sizes) - set(SCRATCHPADS)
        if unknown:
            raise SimError(f"unknown scratchpad(s) {sorted(unknown)}; the machine has {SCRATCHPADS}")
        self.spads = {}
        for name in SCRATCHPADS:
            size = spad_sizes.get(name, DEFAULT_SCRATCHPADS[name])
            if isinstance(size, bool) or int(size) != size or size < 0:
                raise SimError(f"scratchpad '{name}' size must be a non-negative integer, got {size!r}")
            self.spads[name] = np.zeros(int(size), dtype=np.uint8)
        self.buffers: dict[str, _Buffer] = {}
        self.stats = _new_stats()
        self.ctx = ""

    # -- regions -------------------------------------------------------------------------
    def _index(self, rows, cols, stride):
        return np.arange(rows, dtype=np.int64)[:, None] * stride + np.arange(cols, dtype=np.int64)

    def _spad_view(self, what, spad, addr, rows, cols, stride, dtype, write):
        if spad not in self.spads:
            raise SimError(f"{self.ctx}: {what} names unknown scratchpad {spad!r} (the machine has {SCRATCHPADS})")
        it = np.dtype(dtype).itemsize
        buf = self.spads[spad]
        if rows > 1 and stride < cols and write:
            raise SimError(f"{self.ctx}: {what} row stride {stride} < cols {cols}: rows would overlap")
        if addr % it:
            raise SimError(f"{self.ctx}: {what} address {addr} in '{spad}' is not aligned to its "
                           f"{np.dtype(dtype).name} elements ({it} bytes)")
        span = ((rows - 1) * stride + cols) * it if rows and cols else 0
        if addr + span > buf.size:
            raise SimError(f"{self.ctx}: {what} region '{spad}'[{addr}:{addr + span}] ({rows}x{cols} "
                           f"{np.dtype(dtype).name}, row stride {stride}) is outside the {buf.size}-byte "
                           f"'{spad}' scratchpad")
        return buf[addr:addr + span].view(dtype), self._index(rows, cols, stride)

    def read(self, what, spad, addr, rows, cols, dtype, stride=None):
        seg, idx = self._spad_view(what, spad, addr, rows, cols, cols if stride is None else stride, dtype, False)
        self.stats["sram_read_bytes"][spad] += idx.size * np.dtype(dtype).itemsize
        return seg[idx] if idx.size else np.zeros((rows, cols), dtype)

    def write(self, what, spad, addr, values, stride=None):
        rows, cols = values.shape
        seg, idx = self._spad_view(what, spad, addr, rows, cols, cols if stride is None else stride,
                                   values.dtype, True)
        self.stats["sram_write_bytes"][spad] += idx.size * values.dtype.itemsize
        if idx.size:
            seg[idx] = values

    def dram_index(self, buf: _Buffer, offset, rows, cols, stride, write):
        if rows > 1 and stride < cols and write:
            raise SimError(f"{self.ctx}: DRAM row stride {stride} < cols {cols}: rows would overlap")
        end = offset + (rows - 1) * stride + cols if rows and cols else offset
        if end > buf.data.size:
            raise SimError(f"{self.ctx}: DRAM access {buf.name}[{offset}:{end}] ({rows}x{cols}, row stride "
                           f"{stride}) is outside buffer '{buf.name}' of {buf.data.size} elements "
                           f"{list(buf.shape)}")
        return offset + self._index(rows, cols, stride)


def _iv(op: Operation, name: str, default=None) -> int:
    a = op.attributes.get(name)
    if a is None:
        return default
    return int(a.value.data)


def _label(op: Operation, pos: int, prog: str) -> str:
    return f"{op.name} (op {pos} of program '{prog}')"


def _csr(mach: _Machine, ctx, m, n, nnz, indptr_addr, indices_addr):
    indptr = mach.read("indptr", "weight", indptr_addr, 1, m + 1, np.int32)[0].astype(np.int64)
    indices = mach.read("indices", "weight", indices_addr, 1, nnz, np.int32)[0].astype(np.int64)
    if indptr[0] != 0 or indptr[-1] != nnz or np.any(np.diff(indptr) < 0):
        raise SimError(f"{ctx}: CSR indptr must rise from 0 to nnz={nnz}, got {indptr.tolist()[:8]}...")
    if nnz and (indices.min() < 0 or indices.max() >= n):
        raise SimError(f"{ctx}: CSR column index out of [0, {n}): {int(indices.min())}..{int(indices.max())}")
    return np.repeat(np.arange(m), np.diff(indptr)), indices


def _matmul_exact(a: np.ndarray, b: np.ndarray, bound: int) -> np.ndarray:
    """Exact int64 ``a @ b``: float32 BLAS while every partial sum stays below 2**24 (int8
    tiles up to k = 1024), float64 below 2**53, else int64."""
    if bound < 2**24:
        return (a.astype(np.float32) @ b.astype(np.float32)).astype(np.int64)
    if bound < 2**53:
        return (a.astype(np.float64) @ b.astype(np.float64)).astype(np.int64)
    return a.astype(np.int64) @ b.astype(np.int64)


def _shift_accumulate(a: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """``Σ_k sign(c[k, j]) · (a[i, k] >> e[k, j])`` exactly (int64), ``e = c & 31``, bit 7 the
    sign, a zero byte a zero weight: every PE's shift-and-add, vectorized over a block of rows
    (the ``[rows, k, n]`` int32 partial terms stay under ~16 MB)."""
    e = (codes.view(np.uint8) & 31).astype(np.int32)
    sign = np.sign(codes).astype(np.int32)
    m, k = a.shape
    out = np.empty((m, codes.shape[1]), np.int64)
    step = max(1, (4 << 20) // max(k * codes.shape[1], 1))
    for i in range(0, m, step):
        terms = np.right_shift(a[i:i + step, :, None], e[None])
        terms *= sign[None]
        out[i:i + step] = terms.sum(axis=1, dtype=np.int64)
    return out


_SIGNED_ATTRS = ("mult", "zero_point")


def _exec(mach: _Machine, op: Operation) -> None:
    s = mach.stats
    ctx = mach.ctx
    for name, attr in op.attributes.items():
        if isinstance(attr, IntegerAttr) and name not in _SIGNED_ATTRS and attr.value.data < 0:
            raise SimError(f"{ctx}: attribute {name} = {attr.value.data} must be non-negative")
    if isinstance(op, (DmaLoadOp, DmaStoreOp)):
        name = op.buffer.root_reference.data
        if name not in mach.buffers:
            raise SimError(f"{ctx}: unknown DRAM buffer @{name}")
        buf = mach.buffers[name]
        rows, cols = _iv(op, "rows"), _iv(op, "cols")
        spad, addr, sstride = op.spad.data, _iv(op, "addr"), _iv(op, "spad_stride")
        load = isinstance(op, DmaLoadOp)
        idx = mach.dram_index(buf, _iv(op, "offset"), rows, cols, _iv(op, "stride"), write=not load)
        nbytes = idx.size * buf.data.itemsize
        if load:
            mach.write("destination", spad, addr, buf.data[idx], sstride)
            s["dram_read_bytes"] += nbytes
        else:
            buf.data[idx] = mach.read("source", spad, addr, rows, cols, buf.dtype, sstride)
            s["dram_write_bytes"] += nbytes
    elif isinstance(op, (GemmOp, ShiftGemmOp)):
        m, k, n = _iv(op, "m"), _iv(op, "k"), _iv(op, "n")
        c_addr = _iv(op, "c_addr")
        if isinstance(op, GemmOp):
            a = mach.read("A", "ifmap", _iv(op, "a_addr"), m, k, np.int8)
            b = mach.read("B", "weight", _iv(op, "b_addr"), k, n, np.int8)
            prod = _matmul_exact(a, b, k * 2**14)
            s["mac"] += m * n * k
        else:
            a = mach.read("A", "ifmap", _iv(op, "a_addr"), m, k, np.int32)
            b = mach.read("B (weight codes)", "weight", _iv(op, "b_addr"), k, n, np.int8)
            prod = _shift_accumulate(a, b)
            s["shift_add"] += m * n * k
        if _iv(op, "accumulate"):
            prod = prod + mach.read("C", "acc", c_addr, m, n, np.int32)
        mach.write("C", "acc", c_addr, _wrap32(prod))
    elif isinstance(op, SddmmOp):
        m, n, d, nnz = _iv(op, "m"), _iv(op, "n"), _iv(op, "d"), _iv(op, "nnz")
        q = mach.read("Q", "ifmap", _iv(op, "q_addr"), m, d, np.int8).astype(np.int64)
        kk = mach.read("K", "weight", _iv(op, "k_addr"), n, d, np.int8).astype(np.int64)
        rows, cols = _csr(mach, ctx, m, n, nnz, _iv(op, "indptr_addr"), _iv(op, "indices_addr"))
        out = np.sum(q[rows] * kk[cols], axis=1) if nnz else np.zeros(0, np.int64)
        mach.write("out", "acc", _iv(op, "out_addr"), _wrap32(out)[None, :])
        s["mac"] += nnz * d
    elif isinstance(op, SpmmOp):
        m, n, d, nnz = _iv(op, "m"), _iv(op, "n"), _iv(op, "d"), _iv(op, "nnz")
        vals = mach.read("values", "ifmap", _iv(op, "val_addr"), 1, nnz, np.int8)[0].astype(np.int64)
        rows, cols = _csr(mach, ctx, m, n, nnz, _iv(op, "indptr_addr"), _iv(op, "indices_addr"))
        v = mach.read("V", "weight", _iv(op, "v_addr"), n, d, np.int8).astype(np.int64)
        out = np.zeros((m, d), dtype=np.int64)
        if nnz:
            np.add.at(out, rows, vals[:, None] * v[cols])
        c_addr = _iv(op, "c_addr")
        if _iv(op, "accumulate"):
            out = out + mach.read("C", "acc", c_addr, m, d, np.int32)
        mach.write("C", "acc", c_addr, _wrap32(out))
        s["mac"] += nnz * d
    elif isinstance(op, AluOp):
        _alu(mach, op)
    elif isinstance(op, BarrierOp):
        pass
    else:  # pragma: no cover - INSTRUCTIONS lists every op above
        raise SimError(f"{ctx}: no semantics for {op.name}")
    s["instructions"][op.name] = s["instructions"].get(op.name, 0) + 1


def _alu(mach: _Machine, op: AluOp) -> None:
    ctx = mach.ctx
    kind = op.kind.data
    if kind not in ALU_KINDS:
        raise SimError(f"{ctx}: unknown ALU kind {kind!r} (one of {ALU_KINDS})")
    rows, cols = _iv(op, "rows"), _iv(op, "cols")
    src_t, dst_t = _dtype(op.src_type, ctx), _dtype(op.dst_type, ctx)
    x = mach.read("src", op.src.data, _iv(op, "src_addr"), rows, cols, src_t).astype(np.int64)
    mult, shift, zp = _iv(op, "mult", 1), _iv(op, "shift", 0), _iv(op, "zero_point", 0)
    if abs(mult) >= 2**31 or shift > 62:
        raise SimError(f"{ctx}: mult must be in (-2**31, 2**31) and shift <= 62, got {mult}, {shift}")
    if kind in ALU_BINARY:
        if op.src2 is None or op.src2_addr is None or op.src2_type is None:
            raise SimError(f"{ctx}: ALU {kind!r} needs src2, src2_addr and src2_type")
        c2 = 1 if _iv(op, "broadcast", 0) else cols
        y = mach.read("src2", op.src2.data, _iv(op, "src2_addr"), rows, c2,
                      _dtype(op.src2_type, ctx)).astype(np.int64)
        r = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "max": np.maximum}[kind](x, y)
    elif kind == "copy":
        r = x
    elif kind == "relu":
        r = np.maximum(x, 0)
    elif kind == "requant":
        r = ((x * mult + ((1 << (shift - 1)) if shift else 0)) >> shift) + zp
    elif kind == "exp":
        with np.errstate(over="ignore"):
            f = np.floor(np.exp(np.ldexp(x.astype(np.float64), -shift)) * mult)
        info = np.iinfo(dst_t)
        r = np.clip(f, info.min, info.max).astype(np.int64)
    elif kind == "rowmax":
        r = x.max(axis=1, keepdims=True) if cols else np.zeros((rows, 1), np.int64)
    else:  # rowsum
        r = x.sum(axis=1, keepdims=True)
    mach.write("dst", op.dst.data, _iv(op, "dst_addr"), _saturate(r, dst_t))
    n = rows * cols
    mach.stats["alu_ops"] += n
    mach.stats["alu_by_kind"][kind] = mach.stats["alu_by_kind"].get(kind, 0) + n


def _declare(mach: _Machine, prog: ProgramOp) -> None:
    pname = prog.sym_name.data
    for op in prog.body.block.ops:
        if not isinstance(op, BufferOp):
            continue
        name, kind = op.sym_name.data, op.kind.data
        shape = tuple(int(v) for v in op.shape.get_values())
        ctx = f"accel.buffer @{name} of program '{pname}'"
        if kind not in BUFFER_KINDS:
            raise SimError(f"{ctx}: kind must be one of {BUFFER_KINDS}, got {kind!r}")
        dtype = _dtype(op.elem, ctx)
        old = mach.buffers.get(name)
        if old is None:
            mach.buffers[name] = _Buffer(name, shape, dtype, kind)
        elif old.shape != shape or old.dtype != dtype:
            raise SimError(f"{ctx}: redeclared as {list(shape)} {np.dtype(dtype).name}, earlier "
                           f"{list(old.shape)} {np.dtype(old.dtype).name}")
        elif kind in ("output", "inout") and old.kind in ("temp", "input"):
            old.kind = "inout" if old.kind == "input" else "output"


def unit_queues(prog: ProgramOp) -> dict[str, list[tuple[int, Operation]]]:
    """The program's instructions per unit, in program order, as ``(position, op)`` (each unit
    runs its queue in order; tokens order the units against each other)."""
    pname = prog.sym_name.data
    queues: dict[str, list[tuple[int, Operation]]] = {}
    for pos, op in enumerate(prog.body.block.ops):
        if isinstance(op, BufferOp):
            continue
        if not isinstance(op, INSTRUCTIONS):
            raise SimError(f"{_label(op, pos, pname)}: not an accel instruction")
        queues.setdefault(op.UNIT or "sync", []).append((pos, op))
    return queues


def _run_program(mach: _Machine, prog: ProgramOp) -> None:
    pname = prog.sym_name.data
    queues = unit_queues(prog)
    head = dict.fromkeys(queues, 0)
    signalled: set = set()
    remaining = sum(len(q) for q in queues.values())
    while remaining:
        best = None
        for unit, q in queues.items():
            if head[unit] < len(q):
                pos, op = q[head[unit]]
                if all(d in signalled for d in op.operands) and (best is None or pos < best[1]):
                    best = (unit, pos, op)
        if best is None:
            raise SimError(_deadlock(queues, head, signalled, pname))
        unit, pos, op = best
        mach.ctx = _label(op, pos, pname)
        _exec(mach, op)
        signalled.add(op.results[0])
        head[unit] += 1
        remaining -= 1


def _deadlock(queues, head, signalled, pname) -> str:
    blocked = sorted(q[head[u]] for u, q in queues.items() if head[u] < len(q))
    pos, op = blocked[0]
    tok = next(d for d in op.operands if d not in signalled)
    owner = tok.owner if isinstance(tok.owner, Operation) else None
    where = {}
    for u, q in queues.items():
        for p, o in q:
            where[id(o)] = (u, p)
    msg = f"{_label(op, pos, pname)} waits on a token that is never signalled: "
    if owner is None or id(owner) not in where:
        return msg + "it is not produced by any instruction of this program"
    u, p = where[id(owner)]
    return (msg + f"its producer {_label(owner, p, pname)} on unit '{u}' can never run "
            f"(a dependency cycle, or a wait on a later instruction of an in-order unit)")


def run(program: Operation, dram: Mapping[str, np.ndarray],
        scratchpads: Mapping[str, int] | None = None) -> dict:
    """Execute ``program`` (a module of ``accel.program`` ops, or one) on DRAM contents ``dram``.

    ``dram`` must hold every ``input`` / ``inout`` buffer (integer arrays of the declared shape
    whose values fit the element type); ``scratchpads`` gives byte sizes (defaults
    :data:`DEFAULT_SCRATCHPADS`). Returns ``{"outputs": {name: array}, "stats": totals,
    "per_program": {program name: stats}}``; stats keys: ``mac``, ``shift_add``, ``alu_ops``,
    ``alu_by_kind``, ``dram_read_bytes``, ``dram_write_bytes``, ``sram_read_bytes`` /
    ``sram_write_bytes`` (per scratchpad), ``instructions`` (count per op name).
    """
    progs = programs(program)
    mach = _Machine(dict(scratchpads or {}))
    for p in progs:
        _declare(mach, p)
    for name, value in dram.items():
        if name not in mach.buffers:
            raise SimError(f"DRAM feed '{name}' names no buffer of the program "
                           f"(buffers: {sorted(mach.buffers)})")
        buf = mach.buffers[name]
        if buf.kind not in ("input", "inout"):
            raise SimError(f"DRAM feed '{name}': buffer is an {buf.kind}, not an input")
        v = np.asarray(value)
        if v.shape != buf.shape:
            raise SimError(f"DRAM feed '{name}': shape {list(v.shape)} != declared {list(buf.shape)}")
        info = np.iinfo(buf.dtype)
        if v.dtype.kind not in "iu" or (v.size and (v.min() < info.min or v.max() > info.max)):
            raise SimError(f"DRAM feed '{name}': needs integers fitting {np.dtype(buf.dtype).name}, "
                           f"got {v.dtype}")
        buf.data[:] = v.reshape(-1).astype(buf.dtype)
    missing = [n for n, b in mach.buffers.items() if b.kind in ("input", "inout") and n not in dram]
    if missing:
        raise SimError(f"DRAM inputs not fed: {missing}")
    per_program: dict[str, dict] = {}
    totals = _new_stats()
    for p in progs:
        mach.stats = _new_stats()
        _run_program(mach, p)
        key, i = p.sym_name.data, 2
        while key in per_program:
            key, i = f"{p.sym_name.data}#{i}", i + 1
        per_program[key] = mach.stats
        _add_stats(totals, mach.stats)
    outputs = {n: b.data.reshape(b.shape).copy() for n, b in mach.buffers.items()
               if b.kind in ("output", "inout")}
    return {"outputs": outputs, "stats": totals, "per_program": per_program}
