"""The ``accel`` MLIR dialect: the simulated accelerator's tile-level ISA, defined with xDSL.

A program is plain MLIR text: a ``builtin.module`` holding one or more ``accel.program`` ops
(one per layer), each a single-block region of DRAM buffer declarations and instructions::

    builtin.module {
      accel.program {sym_name = "gemm"} {
        accel.buffer {sym_name = "A", shape = array<i64: 32, 16>, elem = i8, kind = "input"}
        %0 = accel.dma_load {buffer = @A, offset = 0 : i64, rows = 16 : i64, ...}
        %1 = accel.gemm(%0, ...) {m = 16 : i64, k = 16 : i64, n = 16 : i64, ...}
        ...
      }
    }

Machine model (decoupled access-execute, VTA-like):

- Memory spaces: DRAM buffers (named by ``accel.buffer``, addressed in elements, row-major)
  and the byte-addressed scratchpads :data:`SCRATCHPADS` — ``ifmap`` (activations),
  ``weight`` (weights, and the CSR index arrays of the sparse ops), ``acc`` (int32
  accumulators) and ``vec`` (the vector/ALU unit's buffer). Scratchpad regions are 2-D:
  ``rows × cols`` elements starting at byte ``addr`` with a row stride in elements.
- Every instruction runs on one unit (:data:`UNITS`: ``load``, ``compute``, ``alu``,
  ``store``). Instructions on the same unit execute in program order; across units, order
  comes only from tokens: each instruction yields a ``!accel.token`` that is *signalled*
  when it completes, and takes any number of tokens (``deps``) it *waits on* before it starts.
- The PE array ops read their operands from fixed scratchpads: ``gemm`` / ``shift_gemm`` A
  from ``ifmap``, B from ``weight``, C in ``acc``; see each op's docstring.

All integer attributes are ``i64``; element types are MLIR integer types (``i8``, ``i16``,
``i32``). Ops use a small custom syntax, ``%t = accel.op(%deps...) {attrs}``; xDSL's generic
form (``"accel.gemm"(...) {...} : (...) -> !accel.token``) parses as well.
"""

from __future__ import annotations

from typing import ClassVar

from xdsl.dialects.builtin import (
    DenseArrayBase,
    IntegerAttr,
    IntegerType,
    StringAttr,
    SymbolRefAttr,
)
from xdsl.ir import Dialect, ParametrizedAttribute, TypeAttribute
from xdsl.irdl import (
    IRDLOperation,
    attr_def,
    irdl_attr_definition,
    irdl_op_definition,
    opt_attr_def,
    region_def,
    result_def,
    traits_def,
    var_operand_def,
)
from xdsl.traits import NoTerminator

#: Scratchpad names (memory spaces besides DRAM).
SCRATCHPADS = ("ifmap", "weight", "acc", "vec")

#: Execution units; instructions of one unit run in program order.
UNITS = ("load", "compute", "alu", "store")

#: ``accel.alu`` kinds by arity: unary ops read ``src``; binary ops also read ``src2``;
#: reductions write one element per row.
ALU_UNARY = ("copy", "relu", "requant", "exp")
ALU_BINARY = ("add", "sub", "mul", "max")
ALU_REDUCE = ("rowmax", "rowsum")
ALU_KINDS = ALU_UNARY + ALU_BINARY + ALU_REDUCE

#: ``accel.buffer`` kinds: inputs must be fed, outputs are returned, temps start zeroed.
BUFFER_KINDS = ("input", "output", "inout", "temp")


@irdl_attr_definition
class TokenType(ParametrizedAttribute, TypeAttribute):
    """``!accel.token``: completion of one instruction, waited on by later ones."""

    name = "accel.token"


_I64 = IntegerAttr  # every integer attribute is an IntegerAttr of i64 (checked by the builder)

# The assembly format shared by every instruction: optional token dependencies, then attributes.
_INSTR_FORMAT = "(`(` $deps^ `)`)? attr-dict"


class InstrOp(IRDLOperation):
    """Base of the instructions: ``deps`` tokens in, one token out."""

    UNIT: ClassVar[str] = ""
    deps = var_operand_def(TokenType)
    token = result_def(TokenType)
    assembly_format = _INSTR_FORMAT


@irdl_op_definition
class ProgramOp(IRDLOperation):
    """``accel.program``: one program (layer) — a single block of buffers and instructions."""

    name = "accel.program"
    sym_name = attr_def(StringAttr)
    body = region_def("single_block")
    traits = traits_def(NoTerminator())
    assembly_format = "attr-dict-with-keyword $body"


@irdl_op_definition
class BufferOp(IRDLOperation):
    """``accel.buffer``: a DRAM buffer ``sym_name`` of ``shape`` × ``elem``, row-major.

    ``kind``: ``input`` (fed by the caller), ``output`` (returned), ``inout`` (both) or ``temp``
    (zero-initialised, internal). Buffers of the same name in several programs of a module are
    the same DRAM buffer (layers pass tensors that way).
    """

    name = "accel.buffer"
    sym_name = attr_def(StringAttr)
    shape = attr_def(DenseArrayBase)
    elem = attr_def(IntegerType)
    kind = attr_def(StringAttr)
    assembly_format = "attr-dict"


@irdl_op_definition
class DmaLoadOp(InstrOp):
    """``accel.dma_load`` (unit ``load``): DRAM → scratchpad, a 2-D strided block.

    Reads ``rows × cols`` elements of ``buffer`` starting at element ``offset`` with row
    stride ``stride`` (elements) and writes them to scratchpad ``spad`` at byte ``addr`` with
    row stride ``spad_stride`` (elements). The element type is the buffer's.
    """

    name = "accel.dma_load"
    UNIT: ClassVar[str] = "load"
    buffer = attr_def(SymbolRefAttr)
    offset = attr_def(_I64)
    rows = attr_def(_I64)
    cols = attr_def(_I64)
    stride = attr_def(_I64)
    spad = attr_def(StringAttr)
    addr = attr_def(_I64)
    spad_stride = attr_def(_I64)


@irdl_op_definition
class DmaStoreOp(InstrOp):
    """``accel.dma_store`` (unit ``store``): scratchpad → DRAM, the mirror of ``dma_load``."""

    name = "accel.dma_store"
    UNIT: ClassVar[str] = "store"
    buffer = attr_def(SymbolRefAttr)
    offset = attr_def(_I64)
    rows = attr_def(_I64)
    cols = attr_def(_I64)
    stride = attr_def(_I64)
    spad = attr_def(StringAttr)
    addr = attr_def(_I64)
    spad_stride = attr_def(_I64)


@irdl_op_definition
class GemmOp(InstrOp):
    """``accel.gemm`` (unit ``compute``): ``C[m, n] (+)= A[m, k] @ B[k, n]``, int8 × int8 → int32.

    A: int8 at ``ifmap[a_addr]``, B: int8 at ``weight[b_addr]``, C: int32 at ``acc[c_addr]``,
    each dense row-major. ``accumulate`` = 1 adds to C, 0 overwrites it. int32 wrap-around.
    """

    name = "accel.gemm"
    UNIT: ClassVar[str] = "compute"
    m = attr_def(_I64)
    k = attr_def(_I64)
    n = attr_def(_I64)
    a_addr = attr_def(_I64)
    b_addr = attr_def(_I64)
    c_addr = attr_def(_I64)
    accumulate = attr_def(_I64)


@irdl_op_definition
class ShiftGemmOp(InstrOp):
    """``accel.shift_gemm`` (unit ``compute``): the shift-add PE array's tile op.

    ``C[i, j] (+)= Σ_k sign(B[k, j]) · (A[i, k] >> (B[k, j] & 31))`` with A int32 at
    ``ifmap[a_addr]``, B the integer-path weight code bytes of
    ``shift_add_math.encode_int_codes`` (int8 at ``weight[b_addr]``: exponent in bits 0–4,
    bit 7 the sign, 0 a zero weight) and C int32 at ``acc[c_addr]``; arithmetic shifts,
    int32 wrap-around. Several PoT terms are several ``shift_gemm`` ops accumulating.
    """

    name = "accel.shift_gemm"
    UNIT: ClassVar[str] = "compute"
    m = attr_def(_I64)
    k = attr_def(_I64)
    n = attr_def(_I64)
    a_addr = attr_def(_I64)
    b_addr = attr_def(_I64)
    c_addr = attr_def(_I64)
    accumulate = attr_def(_I64)


@irdl_op_definition
class SddmmOp(InstrOp):
    """``accel.sddmm`` (unit ``compute``): sampled dense-dense matmul onto a CSR pattern.

    ``out[p] = Q[i, :] · K[indices[p], :]`` for every stored position ``p`` of row ``i``
    (``indptr[i] <= p < indptr[i + 1]``). Q: int8 ``[m, d]`` at ``ifmap[q_addr]``; K: int8
    ``[n, d]`` at ``weight[k_addr]``; indptr int32 ``[m + 1]`` and indices int32 ``[nnz]`` in
    ``weight``; out int32 ``[nnz]`` at ``acc[out_addr]``.
    """

    name = "accel.sddmm"
    UNIT: ClassVar[str] = "compute"
    m = attr_def(_I64)
    n = attr_def(_I64)
    d = attr_def(_I64)
    nnz = attr_def(_I64)
    q_addr = attr_def(_I64)
    k_addr = attr_def(_I64)
    indptr_addr = attr_def(_I64)
    indices_addr = attr_def(_I64)
    out_addr = attr_def(_I64)


@irdl_op_definition
class SpmmOp(InstrOp):
    """``accel.spmm`` (unit ``compute``): CSR-sparse × dense, ``C[m, d] (+)= S[m, n] @ V[n, d]``.

    S values int8 ``[nnz]`` at ``ifmap[val_addr]``, its indptr / indices int32 in ``weight``;
    V int8 ``[n, d]`` at ``weight[v_addr]``; C int32 at ``acc[c_addr]``.
    """

    name = "accel.spmm"
    UNIT: ClassVar[str] = "compute"
    m = attr_def(_I64)
    n = attr_def(_I64)
    d = attr_def(_I64)
    nnz = attr_def(_I64)
    val_addr = attr_def(_I64)
    indptr_addr = attr_def(_I64)
    indices_addr = attr_def(_I64)
    v_addr = attr_def(_I64)
    c_addr = attr_def(_I64)
    accumulate = attr_def(_I64)


@irdl_op_definition
class AluOp(InstrOp):
    """``accel.alu`` (unit ``alu``): elementwise / row-reduction op on dense ``rows × cols`` regions.

    ``kind`` (:data:`ALU_KINDS`), computed exactly in int64 then saturated to ``dst_type``:

    - ``copy``: ``x``;  ``relu``: ``max(x, 0)``;
    - ``requant``: ``((x · mult + 2**(shift-1)) >> shift) + zero_point`` (round half up);
    - ``exp``: ``floor(exp(x · 2**-shift) · mult)`` (float64, the LUT's exact reference);
    - ``add`` / ``sub`` / ``mul`` / ``max``: with ``src2``, ``rows × cols`` or, with
      ``broadcast`` = 1, ``rows × 1`` (one value per row, e.g. a row max to subtract);
    - ``rowmax`` / ``rowsum``: ``dst`` is ``rows × 1``.

    Regions are ``(spad, addr, type)`` triples: ``src``/``src_addr``/``src_type``,
    ``dst``/``dst_addr``/``dst_type`` and the optional ``src2``/``src2_addr``/``src2_type``.
    """

    name = "accel.alu"
    UNIT: ClassVar[str] = "alu"
    kind = attr_def(StringAttr)
    rows = attr_def(_I64)
    cols = attr_def(_I64)
    src = attr_def(StringAttr)
    src_addr = attr_def(_I64)
    src_type = attr_def(IntegerType)
    dst = attr_def(StringAttr)
    dst_addr = attr_def(_I64)
    dst_type = attr_def(IntegerType)
    src2 = opt_attr_def(StringAttr)
    src2_addr = opt_attr_def(_I64)
    src2_type = opt_attr_def(IntegerType)
    broadcast = opt_attr_def(_I64)
    mult = opt_attr_def(_I64)
    shift = opt_attr_def(_I64)
    zero_point = opt_attr_def(_I64)


@irdl_op_definition
class BarrierOp(InstrOp):
    """``accel.barrier`` (no unit): joins tokens — it is signalled once every token it waits
    on is. Costs nothing."""

    name = "accel.barrier"
    UNIT: ClassVar[str] = ""


INSTRUCTIONS = (DmaLoadOp, DmaStoreOp, GemmOp, ShiftGemmOp, SddmmOp, SpmmOp, AluOp, BarrierOp)

Accel = Dialect("accel", [ProgramOp, BufferOp, *INSTRUCTIONS], [TokenType])
