"""Cycle, traffic and energy model of a GEMM on the simulated systolic array.

Two layers:

1. :func:`gemm_compute_cycles` — the array's compute cycles for a GEMM ``M×K×N`` (ifmap M×K,
   filter K×N, ofmap M×N) on an R×C array, **exactly SCALE-Sim v3's compute model** (PyPI
   ``scalesim==3.0.0``, ``scalesim/compute/systolic_compute_{os,ws,is}.py``; the GEMM topology
   mode maps a row ``M, N, K`` to an ifmap operand matrix M×K and a filter K×N). Per dataflow the
   operands are laid out as a spatial ``Sr × Sc`` grid folded onto the array and a temporal
   dimension ``T`` streamed through it:

   ====  ===  ===  ===  ==============================  ==================================
   df    Sr   Sc   T    demand rows per fold (cycles)    window used for "compute util"
   ====  ===  ===  ===  ==============================  ==================================
   os    M    N    K    R + C + T − 2                    R + C + T − 2
   ws    K    N    M    2R + C + T − 2                   2R + 2C + T − 3
   is    K    M    N    2R + C + T − 2                   2R + 2C + T − 3
   ====  ===  ===  ===  ==============================  ==================================

   folds = ⌈Sr/R⌉·⌈Sc/C⌉, every fold padded to the full array (a partial fold costs as much as a
   full one: SCALE-Sim lets each fold drain before the next). SCALE-Sim's reported "Total
   Cycles" (stall-free, ``InterfaceBandwidth: CALC``) is the index of the last serviced demand
   row: ``folds × rows_per_fold − 1``. Mapping efficiency is the average over folds of used PEs /
   (R·C) = Sr·Sc / (folds·R·C); compute utilisation is the average over folds of
   used·T / (R·C·window) = Sr·Sc·T / (folds·R·C·window). SRAM request counts are SCALE-Sim's too.
   ``benchmarks/validate_scalesim.py`` checks this against SCALE-Sim itself.

2. :func:`gemm_layer_cycles` / :func:`gemm_tile_schedule` — our own layer model on top (not
   SCALE-Sim's memory model): the scratchpad capacity decides a tiling ``tm×tk×tn`` (each tile is
   one SCALE-Sim compute run), tiles are loaded from DRAM by one in-order DMA engine (each
   transfer costs ``latency + bytes / bandwidth`` cycles), and with double buffering the load of
   the next tile overlaps the compute of this one (and the store of a finished output tile
   overlaps the next compute). The K loop is innermost, so an output tile stays in the
   accumulator scratchpad until its reduction is complete and is stored once (int32); an ifmap
   (filter) tile is not reloaded when consecutive tiles share it. Returns compute vs stall cycles,
   bytes per level, access counts and an energy breakdown from the config's table (a shift-add PE
   action costs shift + add instead of mult + add).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from functools import lru_cache

from ...errors import TargetError
from .config import ACC_BYTES, DATAFLOWS, OPERAND_BYTES, MachineConfig

# ---------------------------------------------------------------------------------------------
# 1. SCALE-Sim's compute model


@dataclass(frozen=True)
class ComputeStats:
    """One GEMM on the array, as SCALE-Sim's compute model counts it."""

    m: int
    k: int
    n: int
    rows: int
    cols: int
    dataflow: str
    sr: int  # spatial extent mapped on the rows
    sc: int  # spatial extent mapped on the columns
    t: int  # temporal extent
    row_folds: int
    col_folds: int
    folds: int
    cycles_per_fold: int  # demand rows per fold
    cycles: int  # SCALE-Sim "Total Cycles": folds * cycles_per_fold - 1
    macs: int
    mapping_efficiency: float  # SCALE-Sim "Mapping Efficiency" / 100
    utilisation: float  # SCALE-Sim "Compute Util" / 100
    overall_utilisation: float  # SCALE-Sim "Overall Util" / 100: macs / (cycles * R * C)
    ifmap_sram_reads: int  # elements requested from the ifmap scratchpad
    filter_sram_reads: int
    ofmap_sram_writes: int  # elements written to the ofmap scratchpad (partial sums included)

    @property
    def used_pe_folds(self) -> int:
        """Σ over folds of the PEs mapped (= Sr·Sc)."""
        return self.sr * self.sc


def spatio_temporal(m: int, k: int, n: int, dataflow: str) -> tuple[int, int, int]:
    """SCALE-Sim's (Sr, Sc, T) for a GEMM ifmap M×K · filter K×N in a dataflow."""
    if dataflow == "os":
        return m, n, k
    if dataflow == "ws":
        return k, n, m
    if dataflow == "is":
        return k, m, n
    raise TargetError(f"unknown dataflow '{dataflow}'; expected one of {', '.join(DATAFLOWS)}")


@lru_cache(maxsize=65536)
def gemm_compute_cycles(m: int, k: int, n: int, rows: int, cols: int, dataflow: str) -> ComputeStats:
    """Compute cycles of ifmap M×K · filter K×N on a rows×cols array (SCALE-Sim v3, exact)."""
    for name, v in (("m", m), ("k", k), ("n", n), ("rows", rows), ("cols", cols)):
        if not isinstance(v, int) or v <= 0:
            raise TargetError(f"gemm_compute_cycles: {name} must be a positive integer, got {v!r}")
    sr, sc, t = spatio_temporal(m, k, n, dataflow)
    row_folds = -(-sr // rows)
    col_folds = -(-sc // cols)
    folds = row_folds * col_folds
    if dataflow == "os":
        per_fold = rows + cols + t - 2
        window = per_fold
    else:
        per_fold = 2 * rows + cols + t - 2
        window = 2 * rows + 2 * cols + t - 3
    cycles = folds * per_fold - 1
    macs = m * k * n
    pes = rows * cols
    mapping = sr * sc / (folds * pes)
    util = sr * sc * t / (folds * pes * window)
    if dataflow == "os":
        ifr, flr, ofw = col_folds * m * k, row_folds * k * n, m * n
    elif dataflow == "ws":
        ifr, flr, ofw = col_folds * m * k, k * n, row_folds * m * n
    else:
        ifr, flr, ofw = m * k, col_folds * k * n, row_folds * m * n
    return ComputeStats(
        m=m, k=k, n=n, rows=rows, cols=cols, dataflow=dataflow, sr=sr, sc=sc, t=t,
        row_folds=row_folds, col_folds=col_folds, folds=folds, cycles_per_fold=per_fold,
        cycles=cycles, macs=macs, mapping_efficiency=mapping, utilisation=util,
        overall_utilisation=macs / (cycles * pes),
        ifmap_sram_reads=ifr, filter_sram_reads=flr, ofmap_sram_writes=ofw,
    )


# ---------------------------------------------------------------------------------------------
# 2. Our layer model: tiling, DMA, double buffering, traffic, energy


@dataclass(frozen=True)
class Tiling:
    """A scratchpad tiling: tiles of tm×tk (ifmap), tk×tn (filter), tm×tn (ofmap). ``order`` is
    the outer loop ("mn": m outer, n middle; "nm": n outer); K is always innermost."""

    tm: int
    tk: int
    tn: int
    order: str = "mn"

    def counts(self, m: int, k: int, n: int) -> tuple[int, int, int]:
        return -(-m // self.tm), -(-k // self.tk), -(-n // self.tn)


@dataclass(frozen=True)
class EnergyBreakdown:
    """pJ per component."""

    pe_pj: float  # PE actions (mac: mult + add; shift-add: shift + add)
    sram_pj: float  # scratchpad reads and writes (array side and DMA side)
    dram_pj: float

    @property
    def total_pj(self) -> float:
        return self.pe_pj + self.sram_pj + self.dram_pj

    def to_dict(self) -> dict:
        return {"pe_pj": self.pe_pj, "sram_pj": self.sram_pj, "dram_pj": self.dram_pj,
                "total_pj": self.total_pj}


@dataclass(frozen=True)
class GemmLayerStats:
    m: int
    k: int
    n: int
    dataflow: str
    pe_op: str  # "mac" or "shift-add"
    tiling: Tiling
    tiles: int
    double_buffered: bool
    exact: bool  # False when the tile count was too large to schedule tile by tile (estimate)
    compute_cycles: int  # Σ SCALE-Sim cycles of the tiles
    stall_cycles: int  # total - compute: the array waiting for DMA
    total_cycles: int
    dma_busy_cycles: int
    dma_transfers: int
    macs: int
    folds: int
    mapping_efficiency: float  # average over all folds of all tiles
    utilisation: float  # macs / (total_cycles * R * C)
    compute_utilisation: float  # macs / (compute_cycles * R * C)
    dram_read_bytes: int  # DRAM -> scratchpad (ifmap + filter)
    dram_write_bytes: int  # scratchpad -> DRAM (ofmap, int32)
    spad_to_pe_bytes: int  # ifmap + filter scratchpad reads by the array, + partial-sum reads
    pe_to_spad_bytes: int  # ofmap scratchpad writes by the array (int32 partial sums)
    sram_read_bytes: int  # all scratchpad reads: array side + DMA stores
    sram_write_bytes: int  # all scratchpad writes: array side + DMA fills
    pe_actions: int  # mac or shift-add actions (= macs)
    energy: EnergyBreakdown = field(compare=False)

    @property
    def dram_bytes(self) -> int:
        return self.dram_read_bytes + self.dram_write_bytes

    @property
    def arithmetic_intensity(self) -> float:
        """MACs per DRAM byte (the roofline x coordinate)."""
        return self.macs / self.dram_bytes if self.dram_bytes else math.inf

    def bytes_moved(self) -> dict[str, int]:
        return {
            "dram->spad": self.dram_read_bytes,
            "spad->dram": self.dram_write_bytes,
            "spad->pe": self.spad_to_pe_bytes,
            "pe->spad": self.pe_to_spad_bytes,
        }

    def to_dict(self) -> dict:
        d = asdict(self)
        d["energy"] = self.energy.to_dict()
        d["bytes_moved"] = self.bytes_moved()
        d["dram_bytes"] = self.dram_bytes
        return d


def _pe_op(cfg: MachineConfig, pe_op: str | None) -> str:
    kind = cfg.array.pe_type
    if pe_op is None:
        return "shift-add" if kind == "shift-add" else "mac"
    if pe_op not in ("mac", "shift-add"):
        raise TargetError(f"unknown PE op '{pe_op}'; expected mac or shift-add")
    if kind != "both" and kind != pe_op:
        raise TargetError(f"a {pe_op} GEMM cannot run on an array with array.pe_type = '{kind}'")
    return pe_op


def _spatial_units(cfg: MachineConfig) -> tuple[int, int, int]:
    """The array dimension each of M, K, N is folded onto (the temporal one: min(R, C))."""
    r, c, t = cfg.rows, cfg.cols, min(cfg.rows, cfg.cols)
    return {"os": (r, t, c), "ws": (t, r, c), "is": (c, r, t)}[cfg.dataflow]


def _candidates(d: int, unit: int) -> list[int]:
    out = {d, min(d, unit)}
    s = unit
    while s < d:
        out.add(s)
        s *= 2
    for j in (2, 3, 5):
        out.add(min(d, -(-(-(-d // j)) // unit) * unit))
    return sorted(x for x in out if x >= 1)


def _capacities(cfg: MachineConfig, double_buffered: bool) -> tuple[int, int, int]:
    s = cfg.scratchpad
    h = 2 if double_buffered else 1
    return s.ifmap_bytes // h, s.filter_bytes // h, s.ofmap_bytes // h


def _split(d: int, t: int) -> list[tuple[int, int]]:
    """(size, count) classes of tiling a dimension d by t."""
    q, r = divmod(d, t)
    out = [(t, q)] if q else []
    if r:
        out.append((r, 1))
    return out


def _traffic(m, k, n, tl: Tiling):
    """(ifmap load bytes, ifmap transfers, filter bytes, filter transfers, ofmap bytes, ofmap
    transfers) for a tiling."""
    mt, kt, nt = tl.counts(m, k, n)
    if kt == 1 and tl.order == "mn":
        ib, it = m * k, mt
    else:
        ib, it = m * k * nt, mt * kt * nt
    if kt == 1 and tl.order == "nm":
        fb, ft = k * n, nt
    else:
        fb, ft = k * n * mt, mt * kt * nt
    return ib * OPERAND_BYTES, it, fb * OPERAND_BYTES, ft, m * n * ACC_BYTES, mt * nt


def _compute_sum(m, k, n, tl: Tiling, cfg: MachineConfig):
    """Σ over tiles of compute cycles, folds, used-PE folds, SRAM request counts."""
    cyc = folds = used = ifr = flr = ofw = 0
    for sm, cm in _split(m, tl.tm):
        for sk, ck in _split(k, tl.tk):
            for sn, cn in _split(n, tl.tn):
                s = gemm_compute_cycles(sm, sk, sn, cfg.rows, cfg.cols, cfg.dataflow)
                c = cm * ck * cn
                cyc += c * s.cycles
                folds += c * s.folds
                used += c * s.used_pe_folds
                ifr += c * s.ifmap_sram_reads
                flr += c * s.filter_sram_reads
                ofw += c * s.ofmap_sram_writes
    return cyc, folds, used, ifr, flr, ofw


def _xfer(nbytes: int, cfg: MachineConfig) -> int:
    if nbytes <= 0:
        return 0
    return cfg.dram.latency_cycles + math.ceil(nbytes / cfg.dram.bandwidth_bytes_per_cycle)


def _estimate(m, k, n, tl: Tiling, cfg: MachineConfig, double_buffered: bool) -> tuple[float, int]:
    ib, it, fb, ft, ob, ot = _traffic(m, k, n, tl)
    bw, lat = cfg.dram.bandwidth_bytes_per_cycle, cfg.dram.latency_cycles
    dma = (ib + fb + ob) / bw + (it + ft + ot) * lat
    compute = _compute_sum(m, k, n, tl, cfg)[0]
    if double_buffered:
        mt, kt, nt = tl.counts(m, k, n)
        tiles = mt * kt * nt
        first = _xfer(min(tl.tm, m) * min(tl.tk, k), cfg) + _xfer(min(tl.tk, k) * min(tl.tn, n), cfg)
        last = _xfer(min(tl.tm, m) * min(tl.tn, n) * ACC_BYTES, cfg)
        est = max(compute, dma) + (first + last if tiles > 1 else 0)
        if tiles == 1:
            est = compute + dma
    else:
        est = compute + dma
    return est, ib + fb + ob


def choose_tiling(m: int, k: int, n: int, cfg: MachineConfig, double_buffered: bool | None = None) -> Tiling:
    """The tiling (among array-aligned candidates that fit the scratchpads, or their halves when
    double buffered) with the least estimated cycles; ties go to less DRAM traffic."""
    db = cfg.scratchpad.double_buffered if double_buffered is None else double_buffered
    return _choose_tiling(m, k, n, cfg, db)


@lru_cache(maxsize=4096)
def _choose_tiling(m, k, n, cfg: MachineConfig, db: bool) -> Tiling:
    cap_i, cap_f, cap_o = _capacities(cfg, db)
    um, uk, un = _spatial_units(cfg)
    best = None
    for tm in _candidates(m, um):
        for tn in _candidates(n, un):
            if tm * tn * ACC_BYTES > cap_o:
                continue
            for tk in _candidates(k, uk):
                if tm * tk * OPERAND_BYTES > cap_i or tk * tn * OPERAND_BYTES > cap_f:
                    continue
                for order in ("mn", "nm"):
                    tl = Tiling(tm, tk, tn, order)
                    est, traffic = _estimate(m, k, n, tl, cfg, db)
                    key = (est, traffic, -(tm * tk * tn), order)
                    if best is None or key < best[0]:
                        best = (key, tl)
    if best is None:
        raise TargetError(
            f"no tiling of a {m}x{k}x{n} GEMM fits the scratchpads "
            f"(ifmap {cap_i} B, filter {cap_f} B, ofmap {cap_o} B per buffer)"
        )
    return best[1]


MAX_EXACT_TILES = 200_000


def gemm_tile_schedule(
    m: int,
    k: int,
    n: int,
    cfg: MachineConfig,
    tiling: Tiling | None = None,
    double_buffered: bool | None = None,
    pe_op: str | None = None,
) -> GemmLayerStats:
    """Schedule a GEMM tile by tile: DMA loads/stores on one in-order engine, compute on the
    array, overlapped when double buffered. ``tiling`` defaults to :func:`choose_tiling`."""
    for name, v in (("m", m), ("k", k), ("n", n)):
        if not isinstance(v, int) or v <= 0:
            raise TargetError(f"gemm: {name} must be a positive integer, got {v!r}")
    db = cfg.scratchpad.double_buffered if double_buffered is None else double_buffered
    op = _pe_op(cfg, pe_op)
    tl = tiling or _choose_tiling(m, k, n, cfg, db)
    if tl.order not in ("mn", "nm"):
        raise TargetError(f"tiling order must be 'mn' or 'nm', got {tl.order!r}")
    cap_i, cap_f, cap_o = _capacities(cfg, db)
    tm, tk, tn = min(tl.tm, m), min(tl.tk, k), min(tl.tn, n)
    if tm * tk > cap_i or tk * tn > cap_f or tm * tn * ACC_BYTES > cap_o:
        raise TargetError(f"tiling {tl} does not fit the scratchpads ({cap_i}/{cap_f}/{cap_o} B)")
    tl = Tiling(tm, tk, tn, tl.order)
    mt, kt, nt = tl.counts(m, k, n)
    tiles = mt * kt * nt

    compute, folds, used, ifr, flr, ofw = _compute_sum(m, k, n, tl, cfg)
    ib, it, fb, ft, ob, ot = _traffic(m, k, n, tl)

    exact = tiles <= MAX_EXACT_TILES
    if exact:
        total, dma_busy = _simulate(m, k, n, tl, cfg, db)
    else:
        est, _ = _estimate(m, k, n, tl, cfg, db)
        total = max(int(math.ceil(est)), compute)
        dma_busy = int(math.ceil((ib + fb + ob) / cfg.dram.bandwidth_bytes_per_cycle)) + (
            it + ft + ot) * cfg.dram.latency_cycles

    pes = cfg.rows * cfg.cols
    macs = m * k * n
    # Partial sums: every ofmap write after the first to an element is a read-modify-write.
    psum_reads = ofw - m * n
    spad_to_pe = (ifr + flr) * OPERAND_BYTES + psum_reads * ACC_BYTES
    pe_to_spad = ofw * ACC_BYTES
    sram_reads = spad_to_pe + ob  # + the DMA reading finished outputs out
    sram_writes = pe_to_spad + ib + fb  # + the DMA filling tiles in
    e = cfg.energy
    energy = EnergyBreakdown(
        pe_pj=macs * (e.mac if op == "mac" else e.shift_add),
        sram_pj=sram_reads * e.sram_read_per_byte + sram_writes * e.sram_write_per_byte,
        dram_pj=(ib + fb + ob) * e.dram_per_byte,
    )
    return GemmLayerStats(
        m=m, k=k, n=n, dataflow=cfg.dataflow, pe_op=op, tiling=tl, tiles=tiles,
        double_buffered=db, exact=exact, compute_cycles=compute, stall_cycles=total - compute,
        total_cycles=total, dma_busy_cycles=dma_busy, dma_transfers=it + ft + ot, macs=macs,
        folds=folds, mapping_efficiency=used / (folds * pes), utilisation=macs / (total * pes),
        compute_utilisation=macs / (compute * pes), dram_read_bytes=ib + fb, dram_write_bytes=ob,
        spad_to_pe_bytes=spad_to_pe, pe_to_spad_bytes=pe_to_spad, sram_read_bytes=sram_reads,
        sram_write_bytes=sram_writes, pe_actions=macs, energy=energy,
    )


def _simulate(m, k, n, tl: Tiling, cfg: MachineConfig, db: bool) -> tuple[int, int]:
    """Tile-by-tile timeline. Returns (total cycles, DMA busy cycles)."""
    rows, cols, df = cfg.rows, cfg.cols, cfg.dataflow
    mt, kt, nt = tl.counts(m, k, n)
    msz = [min(tl.tm, m - i * tl.tm) for i in range(mt)]
    ksz = [min(tl.tk, k - i * tl.tk) for i in range(kt)]
    nsz = [min(tl.tn, n - i * tl.tn) for i in range(nt)]
    if tl.order == "mn":
        outer = [(mi, ni) for mi in range(mt) for ni in range(nt)]
    else:
        outer = [(mi, ni) for ni in range(nt) for mi in range(mt)]

    # Per tile: load bytes split in transfers, compute cycles, store bytes (0 unless last k).
    loads: list[int] = []  # cycles of the DMA transfers loading this tile
    comps: list[int] = []
    stores: list[int] = []
    prev_i = prev_f = None
    for mi, ni in outer:
        for ki in range(kt):
            lc = 0
            if (mi, ki) != prev_i:
                lc += _xfer(msz[mi] * ksz[ki] * OPERAND_BYTES, cfg)
            if (ki, ni) != prev_f:
                lc += _xfer(ksz[ki] * nsz[ni] * OPERAND_BYTES, cfg)
            prev_i, prev_f = (mi, ki), (ki, ni)
            loads.append(lc)
            comps.append(gemm_compute_cycles(msz[mi], ksz[ki], nsz[ni], rows, cols, df).cycles)
            stores.append(_xfer(msz[mi] * nsz[ni] * ACC_BYTES, cfg) if ki == kt - 1 else 0)
    dma_busy = sum(loads) + sum(stores)
    t = len(comps)
    if not db:
        return sum(loads) + sum(comps) + sum(stores), dma_busy

    # Double buffered. DMA order: L0, L1, S0, L2, S1, ... (the next load is issued before the
    # previous tile's store). L[i] needs the compute two tiles back finished (its half of the
    # input scratchpads); C[i] needs L[i], C[i-1], and — when it starts a new output tile — the
    # output tile two back stored (its half of the accumulator scratchpad).
    l_end = [0] * t
    c_end = [0] * t
    dma = 0
    out_ids = [i // kt for i in range(t)]  # output tile of each tile (K innermost)
    s_end_of_out: dict[int, int] = {}

    def load(i):
        nonlocal dma
        start = max(dma, c_end[i - 2] if i >= 2 else 0)
        dma = start + loads[i]
        l_end[i] = dma

    load(0)
    for i in range(t):
        if i + 1 < t:
            load(i + 1)
        o = out_ids[i]
        start = max(l_end[i], c_end[i - 1] if i else 0)
        if i % kt == 0 and o >= 2:
            start = max(start, s_end_of_out[o - 2])
        c_end[i] = start + comps[i]
        if stores[i]:
            s_start = max(dma, c_end[i])
            dma = s_start + stores[i]
            s_end_of_out[o] = dma
    return max(dma, c_end[-1]), dma_busy


@lru_cache(maxsize=4096)
def _layer_cached(m, k, n, cfg: MachineConfig, db: bool | None, pe_op: str | None) -> GemmLayerStats:
    return gemm_tile_schedule(m, k, n, cfg, None, db, pe_op)


def gemm_layer_cycles(
    m: int, k: int, n: int, cfg: MachineConfig, pe_op: str | None = None,
    double_buffered: bool | None = None,
) -> GemmLayerStats:
    """The layer-level model of a GEMM (tiling chosen for the scratchpads; cached)."""
    return _layer_cached(m, k, n, cfg, double_buffered, pe_op)


# ---------------------------------------------------------------------------------------------
# 3. The vector/ALU unit (elementwise, softmax, norms, reductions)

_VECTOR_ENERGY = {
    "add": "fp32_add", "max": "fp32_add", "cmp": "fp32_add", "shift": "fp32_add",
    "cast": "fp32_add", "reduce": "fp32_add", "mul": "fp32_mult",
    "exp": "fp32_special", "div": "fp32_special", "rsqrt": "fp32_special",
}


@dataclass(frozen=True)
class VectorStats:
    op: str
    elements: int
    cycles: int  # ceil(elements / lanes) * cycles per op (+ log2(lanes) combine steps for reduce)
    energy_pj: float  # elements x the op's fp32 energy


def vector_op_cycles(op: str, elements: int, cfg: MachineConfig) -> VectorStats:
    """Cycles and energy of one elementwise op (or a reduction) over ``elements`` values on the
    vector unit (operands already in the scratchpad)."""
    per = cfg.vector.cycles_for(op)
    if not isinstance(elements, int) or elements < 0:
        raise TargetError(f"vector op: elements must be a non-negative integer, got {elements!r}")
    lanes = cfg.vector.lanes
    cycles = -(-elements // lanes) * per
    if op == "reduce" and elements > 1:
        cycles += math.ceil(math.log2(min(lanes, elements))) * per
    return VectorStats(op, elements, cycles, elements * getattr(cfg.energy, _VECTOR_ENERGY[op]))
