"""Times an ``accel`` program on a machine config: the same instruction stream the functional
simulator executes, so outputs, counts and cycles all describe one program.

Units (``load``, ``compute``, ``alu``, ``store``) each run their instructions in program
order; an instruction starts when its unit is free and every token it waits on is signalled.
DMA transfers also share the one DRAM channel (latency + bytes / bandwidth each). Compute
instructions cost the systolic model of ``cycles`` (SCALE-Sim-exact per tile); ALU
instructions the vector unit's cycles per element. Overlap between units (double buffering)
falls out of the tokens the lowering wrote.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .config import MachineConfig
from .cycles import _xfer, gemm_compute_cycles, vector_op_cycles
from .dialect import AluOp, BarrierOp, BufferOp, DmaLoadOp, DmaStoreOp, GemmOp, ProgramOp, SddmmOp, ShiftGemmOp, SpmmOp
from .functional import SimError, _iv, run, unit_queues
from .program import programs

_ELEM_BYTES = {8: 1, 16: 2, 32: 4}
#: ALU kinds → the vector unit's op whose cycles they cost.
_ALU_COST = {"copy": "add", "relu": "max", "requant": "shift", "exp": "exp", "add": "add", "sub": "add",
             "mul": "mul", "max": "max", "rowmax": "reduce", "rowsum": "reduce"}


@dataclass
class Timeline:
    """When each instruction ran, and the totals the report shows."""

    total_cycles: int = 0
    busy: dict = field(default_factory=dict)  # unit → busy cycles
    compute_cycles: int = 0  # compute-unit busy cycles
    stall_cycles: int = 0  # total − compute busy: cycles the array waited
    dram_busy_cycles: int = 0
    ops: list = field(default_factory=list)  # (position, op name, unit, start, end)

    def to_dict(self) -> dict:
        return {"total_cycles": self.total_cycles, "compute_cycles": self.compute_cycles,
                "stall_cycles": self.stall_cycles, "dram_busy_cycles": self.dram_busy_cycles,
                "busy": dict(self.busy), "instructions": len(self.ops)}


def _dma_bytes(op, elem_bytes: dict) -> int:
    """Bytes one DMA moves: its rows × cols elements of the buffer's element type."""
    return _iv(op, "rows") * _iv(op, "cols") * elem_bytes[op.buffer.root_reference.data]


def _cost(op, cfg: MachineConfig, elem_bytes: dict) -> tuple[int, bool]:
    """(cycles, uses the DRAM channel)."""
    if isinstance(op, (DmaLoadOp, DmaStoreOp)):
        return _xfer(_dma_bytes(op, elem_bytes), cfg), True
    if isinstance(op, (GemmOp, ShiftGemmOp)):
        need = "shift-add" if isinstance(op, ShiftGemmOp) else "mac"
        if cfg.array.pe_type not in (need, "both"):
            raise SimError(f"{op.name}: needs {need} PEs, but the machine has array.pe_type = "
                           f"'{cfg.array.pe_type}'")
        return gemm_compute_cycles(_iv(op, "m"), _iv(op, "k"), _iv(op, "n"), cfg.rows, cfg.cols,
                                   cfg.dataflow).cycles, False
    if isinstance(op, (SddmmOp, SpmmOp)):
        # nnz·d products, one per PE per cycle, plus the array's fill and drain.
        work = _iv(op, "nnz") * _iv(op, "d")
        return math.ceil(work / (cfg.rows * cfg.cols)) + cfg.rows + cfg.cols - 1 if work else 0, False
    if isinstance(op, AluOp):
        kind = op.kind.data if hasattr(op.kind, "data") else str(op.kind)
        return vector_op_cycles(_ALU_COST.get(kind, "add"), _iv(op, "rows") * _iv(op, "cols"), cfg).cycles, False
    if isinstance(op, BarrierOp):
        return 0, False
    raise SimError(f"{op.name}: no cycle model")


def time_program(program, cfg: MachineConfig) -> Timeline:
    """Event-driven timing of every ``accel.program`` in ``program`` (one after another)."""
    tl = Timeline()
    clock = 0
    for prog in programs(program):
        clock = _time_one(prog, cfg, tl, clock)
    tl.total_cycles = clock
    tl.compute_cycles = tl.busy.get("compute", 0)
    tl.stall_cycles = tl.total_cycles - tl.compute_cycles
    return tl


def _time_one(prog: ProgramOp, cfg: MachineConfig, tl: Timeline, start: int) -> int:
    elem_bytes = {op.sym_name.data: _ELEM_BYTES[op.elem.width.data]
                  for op in prog.body.block.ops if isinstance(op, BufferOp)}
    queues = unit_queues(prog)
    head = dict.fromkeys(queues, 0)
    unit_free = dict.fromkeys(queues, start)
    done: dict = {}  # token → cycle it is signalled
    dram_free = start
    end = start
    remaining = sum(len(q) for q in queues.values())
    while remaining:
        # The ready instruction that can start earliest (ties: program order).
        best = None
        for unit, q in queues.items():
            if head[unit] >= len(q):
                continue
            pos, op = q[head[unit]]
            if not all(d in done for d in op.operands):
                continue
            ready = max([unit_free[unit]] + [done[d] for d in op.operands])
            if best is None or (ready, pos) < (best[0], best[2]):
                best = (ready, unit, pos, op)
        if best is None:
            raise SimError(f"program '{prog.sym_name.data}': deadlock (a token is never signalled)")
        ready, unit, pos, op = best
        cycles, dram = _cost(op, cfg, elem_bytes)
        begin = max(ready, dram_free) if dram else ready
        finish = begin + cycles
        if dram:
            dram_free = finish
            tl.dram_busy_cycles += cycles
        unit_free[unit] = finish
        done[op.results[0]] = finish
        tl.busy[unit] = tl.busy.get(unit, 0) + cycles
        tl.ops.append((pos, op.name, unit, begin, finish))
        end = max(end, finish)
        head[unit] += 1
        remaining -= 1
    return end


def energy_pj(stats: dict, cfg: MachineConfig) -> dict:
    """Energy of the functional simulator's counts on ``cfg``'s table (pJ): PE actions (a MAC
    is multiply + int32 add, a shift-add is shift + int32 add), SRAM and DRAM bytes, ALU ops."""
    e = cfg.energy
    pe = stats["mac"] * (e.int8_mult + e.int32_add) + stats["shift_add"] * (e.int8_shift + e.int32_add)
    sram = (sum(stats["sram_read_bytes"].values()) * e.sram_read_per_byte
            + sum(stats["sram_write_bytes"].values()) * e.sram_write_per_byte)
    dram = (stats["dram_read_bytes"] + stats["dram_write_bytes"]) * e.dram_per_byte
    alu = stats["alu_ops"] * e.fp32_add
    return {"pe": pe, "sram": sram, "dram": dram, "alu": alu, "total": pe + sram + dram + alu}


def simulate(program, dram: dict, cfg: MachineConfig) -> dict:
    """Run ``program`` functionally on ``cfg``'s scratchpads and time it: outputs, counts,
    cycles (compute vs stall), utilisation and energy."""
    cfg.validate()
    spads = {"ifmap": cfg.scratchpad.ifmap_bytes, "weight": cfg.scratchpad.filter_bytes,
             "acc": cfg.scratchpad.ofmap_bytes, "vec": cfg.scratchpad.ifmap_bytes}
    result = run(program, dram, spads)
    tl = time_program(program, cfg)
    stats = result["stats"]
    pe_actions = stats["mac"] + stats["shift_add"]
    util = pe_actions / (tl.total_cycles * cfg.rows * cfg.cols) if tl.total_cycles else 0.0
    return {"outputs": result["outputs"], "stats": stats, "timeline": tl.to_dict(),
            "utilisation": util, "energy_pj": energy_pj(stats, cfg),
            "latency_us": tl.total_cycles / cfg.clock_mhz}


__all__ = ["Timeline", "energy_pj", "simulate", "time_program"]
