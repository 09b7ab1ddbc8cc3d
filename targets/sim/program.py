"""Building, printing and parsing ``accel`` programs, and the tiled GEMM lowerings.

A *program* is an xDSL ``builtin.module`` of ``accel.program`` ops (see
:mod:`accelc.targets.sim.dialect`). Build one with :class:`ProgramBuilder`::

    b = ProgramBuilder("layer0")
    b.buffer("A", (m, k), "i8")
    t = b.dma_load("A", "ifmap", addr=0, rows=m, cols=k)
    ...
    module = b.module()            # or ModuleBuilder for several programs
    text = to_mlir(module)
    assert to_mlir(parse_mlir(text)) == text
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence

from xdsl.context import Context
from xdsl.dialects.builtin import (
    Builtin,
    DenseArrayBase,
    IntegerAttr,
    IntegerType,
    ModuleOp,
    StringAttr,
    SymbolRefAttr,
    i64,
)
from xdsl.ir import Block, Operation, Region, SSAValue
from xdsl.parser import Parser
from xdsl.printer import Printer
from xdsl.utils.exceptions import ParseError, VerifyException

from ...errors import ArtifactError
from .dialect import (
    ALU_BINARY,
    ALU_KINDS,
    BUFFER_KINDS,
    SCRATCHPADS,
    Accel,
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
    TokenType,
)

#: Element types a buffer or ALU region may have.
ELEM_TYPES = {"i8": 8, "i16": 16, "i32": 32}


def _i64(name: str, v) -> IntegerAttr:
    if isinstance(v, bool) or not isinstance(v, int) and not hasattr(v, "__index__"):
        raise ValueError(f"{name} must be an integer, got {v!r}")
    v = int(v)
    if v < 0:
        raise ValueError(f"{name} must be non-negative, got {v}")
    return IntegerAttr(v, 64)


def _elem(name: str, dtype) -> IntegerType:
    if isinstance(dtype, IntegerType):
        dtype = f"i{dtype.width.data}"
    key = str(dtype).replace("int", "i")
    if key not in ELEM_TYPES:
        raise ValueError(f"{name} must be one of {sorted(ELEM_TYPES)}, got {dtype!r}")
    return IntegerType(ELEM_TYPES[key])


def _spad(name: str, spad: str) -> StringAttr:
    if spad not in SCRATCHPADS:
        raise ValueError(f"{name} must be a scratchpad {SCRATCHPADS}, got {spad!r}")
    return StringAttr(spad)


Deps = Iterable[SSAValue | Operation | None]


def _deps(deps: Deps) -> list[SSAValue]:
    out = []
    for d in deps:
        if d is None:
            continue
        if isinstance(d, Operation):
            d = d.results[0]
        if d not in out:
            out.append(d)
    return out


class ProgramBuilder:
    """Appends buffers and instructions to one ``accel.program``; every instruction method
    returns the instruction's token (an SSA value) for later ``deps``."""

    def __init__(self, name: str = "main"):
        self.name = name
        self.ops: list[Operation] = []
        self.buffers: dict[str, tuple[tuple[int, ...], str]] = {}
        self._built: ProgramOp | None = None

    # -- declarations ---------------------------------------------------------------------
    def buffer(self, name: str, shape: Sequence[int], dtype: str = "i8", kind: str = "input") -> str:
        if self._built is not None:
            raise ValueError(f"program {self.name!r} was already built; start a new ProgramBuilder")
        if name in self.buffers:
            raise ValueError(f"buffer {name!r} declared twice")
        if kind not in BUFFER_KINDS:
            raise ValueError(f"buffer {name!r}: kind must be one of {BUFFER_KINDS}, got {kind!r}")
        shape = tuple(int(_i64(f"buffer {name!r} shape", s).value.data) for s in shape)
        elem = _elem(f"buffer {name!r} dtype", dtype)
        self.buffers[name] = (shape, f"i{elem.width.data}")
        self.ops.append(BufferOp.create(attributes=dict(
            sym_name=StringAttr(name), shape=DenseArrayBase.from_list(i64, list(shape)),
            elem=elem, kind=StringAttr(kind))))
        return name

    def _instr(self, cls, deps: Deps, **attrs) -> SSAValue:
        if self._built is not None:
            raise ValueError(f"program {self.name!r} was already built; start a new ProgramBuilder")
        op = cls.create(operands=_deps(deps), result_types=[TokenType()],
                        attributes={k: v for k, v in attrs.items() if v is not None})
        self.ops.append(op)
        return op.results[0]

    # -- DMA -----------------------------------------------------------------------------
    def _dma(self, cls, buffer, spad, addr, rows, cols, offset, stride, spad_stride, deps):
        if buffer not in self.buffers:
            raise ValueError(f"{cls.name}: unknown buffer {buffer!r} (declare it with buffer())")
        shape = self.buffers[buffer][0]
        if stride is None:
            stride = shape[-1] if shape else 1
        return self._instr(
            cls, deps, buffer=SymbolRefAttr(buffer), offset=_i64("offset", offset),
            rows=_i64("rows", rows), cols=_i64("cols", cols), stride=_i64("stride", stride),
            spad=_spad("spad", spad), addr=_i64("addr", addr),
            spad_stride=_i64("spad_stride", cols if spad_stride is None else spad_stride))

    def dma_load(self, buffer: str, spad: str, addr: int, rows: int, cols: int, offset: int = 0,
                 stride: int | None = None, spad_stride: int | None = None, deps: Deps = ()):
        """DRAM ``buffer`` (element ``offset``, row ``stride`` defaulting to the buffer's last
        dimension) → ``spad`` at byte ``addr``."""
        return self._dma(DmaLoadOp, buffer, spad, addr, rows, cols, offset, stride, spad_stride, deps)

    def dma_store(self, buffer: str, spad: str, addr: int, rows: int, cols: int, offset: int = 0,
                  stride: int | None = None, spad_stride: int | None = None, deps: Deps = ()):
        """``spad`` at byte ``addr`` → DRAM ``buffer``."""
        return self._dma(DmaStoreOp, buffer, spad, addr, rows, cols, offset, stride, spad_stride, deps)

    # -- PE array ------------------------------------------------------------------------
    def gemm(self, m, k, n, a_addr, b_addr, c_addr, accumulate=False, deps: Deps = ()):
        return self._instr(GemmOp, deps, m=_i64("m", m), k=_i64("k", k), n=_i64("n", n),
                           a_addr=_i64("a_addr", a_addr), b_addr=_i64("b_addr", b_addr),
                           c_addr=_i64("c_addr", c_addr), accumulate=_i64("accumulate", int(bool(accumulate))))

    def shift_gemm(self, m, k, n, a_addr, b_addr, c_addr, accumulate=False, deps: Deps = ()):
        return self._instr(ShiftGemmOp, deps, m=_i64("m", m), k=_i64("k", k), n=_i64("n", n),
                           a_addr=_i64("a_addr", a_addr), b_addr=_i64("b_addr", b_addr),
                           c_addr=_i64("c_addr", c_addr), accumulate=_i64("accumulate", int(bool(accumulate))))

    def sddmm(self, m, n, d, nnz, q_addr, k_addr, indptr_addr, indices_addr, out_addr, deps: Deps = ()):
        return self._instr(SddmmOp, deps, m=_i64("m", m), n=_i64("n", n), d=_i64("d", d),
                           nnz=_i64("nnz", nnz), q_addr=_i64("q_addr", q_addr),
                           k_addr=_i64("k_addr", k_addr), indptr_addr=_i64("indptr_addr", indptr_addr),
                           indices_addr=_i64("indices_addr", indices_addr), out_addr=_i64("out_addr", out_addr))

    def spmm(self, m, n, d, nnz, val_addr, indptr_addr, indices_addr, v_addr, c_addr,
             accumulate=False, deps: Deps = ()):
        return self._instr(SpmmOp, deps, m=_i64("m", m), n=_i64("n", n), d=_i64("d", d),
                           nnz=_i64("nnz", nnz), val_addr=_i64("val_addr", val_addr),
                           indptr_addr=_i64("indptr_addr", indptr_addr),
                           indices_addr=_i64("indices_addr", indices_addr), v_addr=_i64("v_addr", v_addr),
                           c_addr=_i64("c_addr", c_addr), accumulate=_i64("accumulate", int(bool(accumulate))))

    # -- vector unit / sync ----------------------------------------------------------------
    def alu(self, kind: str, rows: int, cols: int, src: tuple, dst: tuple, src2: tuple | None = None,
            broadcast: bool = False, mult: int | None = None, shift: int | None = None,
            zero_point: int | None = None, deps: Deps = ()):
        """``src``/``dst``/``src2``: ``(spad, byte addr, dtype)`` of dense regions."""
        if kind not in ALU_KINDS:
            raise ValueError(f"accel.alu kind must be one of {ALU_KINDS}, got {kind!r}")
        if (src2 is None) == (kind in ALU_BINARY):
            raise ValueError(f"accel.alu {kind!r}: src2 is {'required' if kind in ALU_BINARY else 'not allowed'}")
        s2 = {}
        if src2 is not None:
            s2 = dict(src2=_spad("src2", src2[0]), src2_addr=_i64("src2_addr", src2[1]),
                      src2_type=_elem("src2_type", src2[2]),
                      broadcast=_i64("broadcast", 1) if broadcast else None)
        zp = None
        if zero_point is not None:  # may be negative: IntegerAttr directly
            zp = IntegerAttr(int(zero_point), 64)
        return self._instr(
            AluOp, deps, kind=StringAttr(kind), rows=_i64("rows", rows), cols=_i64("cols", cols),
            src=_spad("src", src[0]), src_addr=_i64("src_addr", src[1]), src_type=_elem("src_type", src[2]),
            dst=_spad("dst", dst[0]), dst_addr=_i64("dst_addr", dst[1]), dst_type=_elem("dst_type", dst[2]),
            **s2, mult=None if mult is None else IntegerAttr(int(mult), 64),
            shift=None if shift is None else _i64("shift", shift), zero_point=zp)

    def barrier(self, deps: Deps):
        """A token signalled once all of ``deps`` are."""
        return self._instr(BarrierOp, deps)

    # -- result ----------------------------------------------------------------------------
    def program(self) -> ProgramOp:
        """The ``accel.program`` (a fresh copy on every call after the first)."""
        if self._built is None:
            self._built = ProgramOp.create(attributes=dict(sym_name=StringAttr(self.name)),
                                           regions=[Region(Block(self.ops))])
            return self._built
        return self._built.clone()

    def module(self) -> ModuleOp:
        mod = ModuleOp([self.program()])
        mod.verify()
        return mod


def make_module(programs: Iterable[ProgramOp | ProgramBuilder]) -> ModuleOp:
    """A module of several programs (layers), run in order over one DRAM."""
    mod = ModuleOp([p.program() if isinstance(p, ProgramBuilder) else p for p in programs])
    mod.verify()
    return mod


def context() -> Context:
    """An xDSL context with the ``builtin`` and ``accel`` dialects."""
    ctx = Context()
    ctx.load_dialect(Builtin)
    ctx.load_dialect(Accel)
    return ctx


def to_mlir(program: Operation, generic: bool = False) -> str:
    """MLIR text of a module (or a single ``accel.program``)."""
    buf = io.StringIO()
    Printer(stream=buf, print_generic_format=generic).print_op(program)
    return buf.getvalue() + "\n"


def parse_mlir(text: str, source: str = "program") -> ModuleOp:
    """Parse (custom or generic form) and verify an ``accel`` module."""
    try:
        mod = Parser(context(), text, name=source).parse_module()
        mod.verify()
    except (ParseError, VerifyException) as e:
        raise ArtifactError(f"{source}: not a valid accel MLIR program: {e}") from e
    return mod


def programs(program: Operation) -> list[ProgramOp]:
    """The ``accel.program`` ops of a module (or ``[program]`` for one)."""
    if isinstance(program, ProgramOp):
        return [program]
    if isinstance(program, ModuleOp):
        return [op for op in program.ops if isinstance(op, ProgramOp)]
    raise TypeError(f"expected a builtin.module or accel.program, got {type(program).__name__}")


# ----------------------------------------------------------------------------------------------
# Tiled GEMM lowerings


def _tiles(total: int, tile: int) -> list[tuple[int, int]]:
    return [(s, min(tile, total - s)) for s in range(0, total, tile)]


def _check_dims(**dims):
    for k, v in dims.items():
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(f"{k} must be a positive integer, got {v!r}")


def _lower_tiled(kind: str, m, k, n, tile_m, tile_k, tile_n, terms: int, name: str,
                 a_name: str, b_name: str, c_name: str) -> ModuleOp:
    """Output-tile-major schedule with double buffering: ``for i, j: for kk (, term): load A,
    load B, gemm``; then store C. A/B ping-pong between two scratchpad slots (a load waits on
    the compute that last read its slot), C between two accumulator slots (the first gemm of a
    tile waits on the store that last drained its slot)."""
    _check_dims(m=m, k=k, n=n, tile_m=tile_m, tile_k=tile_k, tile_n=tile_n, terms=terms)
    shift = kind == "shift_gemm"
    a_bytes = 4 if shift else 1
    b = ProgramBuilder(name)
    b.buffer(a_name, (m, k), "i32" if shift else "i8", "input")
    b.buffer(b_name, (terms * k, n) if shift else (k, n), "i8", "input")
    b.buffer(c_name, (m, n), "i32", "output")
    a_slot, b_slot, c_slot = tile_m * tile_k * a_bytes, tile_k * tile_n, tile_m * tile_n * 4
    a_free: list = [None, None]  # token of the last compute reading each slot
    b_free: list = [None, None]
    c_free: list = [None, None]  # token of the last store draining each acc slot
    na = nb = nc = 0
    op = b.shift_gemm if shift else b.gemm
    for i0, tm in _tiles(m, tile_m):
        for j0, tn in _tiles(n, tile_n):
            cs = nc % 2
            nc += 1
            first, last = True, None
            for k0, tk in _tiles(k, tile_k):
                sa = na % 2
                na += 1
                ta = b.dma_load(a_name, "ifmap", sa * a_slot, tm, tk, offset=i0 * k + k0, deps=[a_free[sa]])
                for t in range(terms):
                    sb = nb % 2
                    nb += 1
                    tb = b.dma_load(b_name, "weight", sb * b_slot, tk, tn, offset=(t * k + k0) * n + j0,
                                    deps=[b_free[sb]])
                    last = op(tm, tk, tn, sa * a_slot, sb * b_slot, cs * c_slot, accumulate=not first,
                              deps=[ta, tb, c_free[cs] if first else None])
                    first = False
                    b_free[sb] = last
                a_free[sa] = last
            c_free[cs] = b.dma_store(c_name, "acc", cs * c_slot, tm, tn, offset=i0 * n + j0, deps=[last])
    return b.module()


def lower_gemm(m: int, k: int, n: int, tile_m: int, tile_k: int, tile_n: int, name: str = "gemm",
               a: str = "A", b: str = "B", c: str = "C") -> ModuleOp:
    """``C[m, n] int32 = A[m, k] int8 @ B[k, n] int8`` as a tiled, double-buffered program.

    Scratchpad use: ``ifmap`` 2·tile_m·tile_k bytes, ``weight`` 2·tile_k·tile_n, ``acc``
    2·tile_m·tile_n·4. DRAM traffic: A is read ceil(n/tile_n) times, B ceil(m/tile_m) times,
    C written once.
    """
    return _lower_tiled("gemm", m, k, n, tile_m, tile_k, tile_n, 1, name, a, b, c)


def lower_shift_gemm(m: int, k: int, n: int, tile_m: int, tile_k: int, tile_n: int, terms: int = 1,
                     name: str = "shift_gemm", x: str = "X", w: str = "W", c: str = "C") -> ModuleOp:
    """``C[m, n] int32 = Σ_t Σ_k sign · (X[m, k] >> e)`` on the shift-add array.

    ``X`` int32 ``[m, k]`` (quantized activations), ``W`` int8 ``[terms·k, n]``: the
    integer-path code bytes (``encode_int_codes``) of term ``t`` in rows ``t·k … t·k + k-1``
    (``encode_int_codes(codes).reshape(terms * k, n)`` for codes ``[T, K, N]``). Same
    schedule as :func:`lower_gemm`, the terms innermost (the X tile is loaded once per k tile);
    ``ifmap`` holds 2·tile_m·tile_k·4 bytes.
    """
    return _lower_tiled("shift_gemm", m, k, n, tile_m, tile_k, tile_n, terms, name, x, w, c)
