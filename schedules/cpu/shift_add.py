"""CPU schedules for the shift-add kernels (``accelc.schedules.shift_add``).

PoT kernels: one packed weight tile (``tile_n`` outputs) per parallel task, ``rows`` output
rows sharing each weight load, the tile's int32/float32 accumulators vectorized across the
outputs and kept live over the reduction (terms × K) — per weight: a widening load, a per-lane
shift (or exponent subtract), a conditional negate and an add.

BCQ LUT kernel: the tables are built once per row (parallel over table groups), then every
output channel chunk accumulates one table lookup per bit-plane byte.
"""

from __future__ import annotations

from tvm import s_tir
from tvm.s_tir.dlight.analysis import get_root_block

from tvm.target.codegen import target_has_features

from .. import shift_add as kernels
from ..shift_add import kernel_name, kernel_param
from .base import CPURule, cpu_shape, vectorize_inner


def _rows_per_task(m: int) -> int:
    """Rows sharing each decoded weight vector. A row count that does not divide ``m`` leaves
    the last task short (a predicate per row, outside the vector loop): for DeiT's 197 tokens,
    6 rows made the 197x192x768 integer kernel 1.4x faster than the one row it had (15.7 ->
    22.2 G shift-MACs/s on one AVX-512 core); 8 spill the accumulators."""
    for rows in (4, 2):
        if m % rows == 0 and m >= 2 * rows:
            return rows
    return 6 if m >= 12 else 1


class ShiftAddKernels(CPURule):
    """Schedules PrimFuncs tagged ``accelc.kernel`` by the shift-add pass."""

    def apply(self, func, target, _tunable):  # noqa: D102
        name = kernel_name(func)
        if not self.is_target_available(target) or name is None:
            return None
        shape = cpu_shape(target)
        if name == "pot_matmul_int":
            func = self._with_sign_intrinsic(func, target, shape)
        sch = s_tir.Schedule(func)
        if name in ("pot_matmul_int", "pot_matmul_float"):
            self._pot(sch, func, shape)
        elif name == "bcq_matmul_lut":
            self._bcq(sch, func, shape)
        else:
            return None
        return sch

    @staticmethod
    def _with_sign_intrinsic(func, target, shape):
        """The same kernel re-derived with x86's ``psignd`` for the negate-or-zero (one op
        instead of four) when every accumulation loop is a full vector of that instruction's
        width (the GEMV 1×4096² went 1.85× → 3.1–3.6× faster than fp32 dense with it)."""
        lanes = shape.lanes("int32")
        intrinsic = kernels.SIGN_INTRINSICS.get(lanes)
        feature = {8: "avx2", 4: "ssse3"}.get(lanes)
        if intrinsic is None or not target_has_features([feature], target):
            intrinsic = kernels.XOR_SHIFT  # no psignd at this width
        p = {key: kernel_param(func, key) for key in
             ("m", "k", "n", "terms", "frac_bits", "int_bits", "tile_n", "dequantize")}
        if p["tile_n"] % lanes or p["n"] % p["tile_n"]:
            return func  # a ragged last tile is a predicated loop, which stays scalar
        return kernels.pot_matmul_int(p["m"], p["k"], p["n"], p["terms"], p["frac_bits"], p["int_bits"],
                                      tile_n=p["tile_n"], dequantize=bool(p["dequantize"]),
                                      sign_intrinsic=intrinsic).with_attrs(
                                          {k: v for k, v in func.attrs.items()})

    def _pot(self, sch, func, shape) -> None:
        m, tile_n = kernel_param(func, "m"), kernel_param(func, "tile_n")
        lanes = shape.lanes("int32")
        root = get_root_block(sch)
        blocks = {sch.get(b).name_hint: b for b in sch.get_child_blocks(root)}
        acc = blocks["shift_acc"]
        out = blocks.get("dequant") or blocks.get("shift_total")
        if "neg_count" in blocks:  # XOR_SHIFT's per-column correction: once per column
            j, t, kk = sch.get_loops(blocks["neg_count"])
            jo, ji = sch.split(j, [None, lanes])
            sch.reorder(jo, t, kk, ji)
            sch.parallel(jo)
            sch.vectorize(ji)
            sch.vectorize(sch.get_loops(sch.decompose_reduction(blocks["neg_count"], t))[-1])
        prologue = blocks.get("quantize") or blocks.get("float_bits")
        rows = _rows_per_task(m)
        if out is not None:
            i, j = sch.get_loops(out)
            io, ii = sch.split(i, [None, rows])
            jo, ji = sch.split(j, [None, tile_n])
            sch.reorder(io, jo, ii, ji)
            task = sch.fuse(io, jo)
            sch.parallel(task)
            sch.vectorize(ji)
            sch.compute_at(acc, task, preserve_unit_loops=True)
            ai, aj, at, ak = sch.get_loops(acc)[1:]
        else:
            i, j, at, ak = sch.get_loops(acc)
            io, ai = sch.split(i, [None, rows])
            jo, aj = sch.split(j, [None, tile_n])
            sch.reorder(io, jo, ai, aj)
            task = sch.fuse(io, jo)
            sch.parallel(task)
        sch.reorder(at, ak, ai, aj)
        if rows > 1:
            sch.unroll(ai)
        aj_o, aj_i = sch.split(aj, [None, lanes])
        sch.unroll(aj_o)
        sch.vectorize(aj_i)
        init = sch.decompose_reduction(acc, at)
        sch.vectorize(sch.get_loops(init)[-1])
        if prologue is not None:
            loops = sch.get_loops(prologue)
            sch.parallel(loops[0])
            vectorize_inner(sch, prologue, lanes)

    def _bcq(self, sch, func, shape) -> None:
        lanes = shape.lanes("float32")
        lut, part, out = (sch.get_sblock(n) for n in ("lut", "lut_acc", "bcq_scale"))
        # Tables: (row, byte group) parallel; the 256 entries vectorized.
        i, g, idx = sch.get_loops(lut)
        sch.parallel(sch.fuse(i, g))
        vectorize_inner(sch, lut, lanes)
        # Outputs: (row, channel chunk) parallel. Inside a chunk, one alpha group at a time
        # sweeps every channel, so the group's tables (gs/8 KiB) stay in L1 while they serve it.
        i, j, b, q = sch.get_loops(out)
        n = kernel_param(func, "n")
        chunk = max(lanes, min(512, -(-n // (2 * shape.cores)) // lanes * lanes))
        jo, ji = sch.split(j, [None, chunk])
        jio, jii = sch.split(ji, [None, lanes])
        sch.reorder(i, jo, q, b, jio, jii)
        sch.parallel(sch.fuse(i, jo))
        sch.compute_at(part, jio, preserve_unit_loops=True)
        pj, pr = sch.get_loops(part)[-2:]
        sch.reorder(pr, pj)
        sch.vectorize(pj)
        sch.vectorize(jii)
        init = sch.decompose_reduction(out, q)
        vectorize_inner(sch, init, lanes)
        part_init = sch.decompose_reduction(part, pr)
        vectorize_inner(sch, part_init, lanes)
