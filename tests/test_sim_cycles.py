"""The simulated accelerator's GEMM cycle model (accelc.targets.sim.cycles).

The compute model is checked against SCALE-Sim v3's own numbers, recorded in
tests/data/scalesim_gemm.json by ``python -m accelc.benchmarks.validate_scalesim --record ...``
(SCALE-Sim is not installed in CI)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from accelc.errors import TargetError
from accelc.targets.sim.config import ArrayConfig, DramConfig, MachineConfig, ScratchpadConfig
from accelc.targets.sim.cycles import (
    Tiling,
    choose_tiling,
    gemm_compute_cycles,
    gemm_layer_cycles,
    gemm_tile_schedule,
)

RECORDED = json.loads((Path(__file__).parent / "data" / "scalesim_gemm.json").read_text())["rows"]


def _cfg(dataflow="os", pe_type="mac", **kw):
    base = MachineConfig()
    return dataclasses.replace(base, array=ArrayConfig(pe_type=pe_type, dataflow=dataflow), **kw)


def test_recorded_sweep_covers_issue():
    got = {(r["m"], r["k"], r["n"], r["dataflow"]) for r in RECORDED}
    for df in ("os", "ws", "is"):
        assert (197, 192, 576, df) in got  # the issue's non-multiple of 32
        assert (64, 64, 64, df) in got
    assert {r["rows"] for r in RECORDED} == {32} and {r["cols"] for r in RECORDED} == {32}
    assert len(RECORDED) >= 27


@pytest.mark.parametrize(
    "row", RECORDED, ids=[f"{r['m']}x{r['k']}x{r['n']}-{r['dataflow']}" for r in RECORDED]
)
def test_matches_scalesim(row):
    s = gemm_compute_cycles(row["m"], row["k"], row["n"], row["rows"], row["cols"], row["dataflow"])
    ref = row["total_cycles"] - row["stall_cycles"]
    assert abs(s.cycles - ref) <= 0.01 * ref, (s.cycles, ref)
    assert 100 * s.mapping_efficiency == pytest.approx(row["mapping_efficiency_pct"], rel=0.01)
    assert 100 * s.utilisation == pytest.approx(row["compute_util_pct"], rel=0.01)
    assert s.utilisation <= 1 and s.mapping_efficiency <= 1 and s.overall_utilisation <= 1


@pytest.mark.parametrize("df", ["os", "ws", "is"])
def test_one_fold_and_growth_with_folds(df):
    one = gemm_compute_cycles(32, 32, 32, 32, 32, df)
    assert one.folds == 1 and one.mapping_efficiency == 1.0
    # the fill/drain of one fold: os R+C+T-2, ws/is 2R+C+T-2 (minus SCALE-Sim's last-row index)
    assert one.cycles == (94 if df == "os" else 126) - 1
    prev = one
    for mult in (2, 3, 4):
        s = gemm_compute_cycles(32 * mult, 32 * mult, 32 * mult, 32, 32, df)
        assert s.folds > prev.folds and s.cycles > prev.cycles
        prev = s
    # a partial fold costs as much as a full one
    assert gemm_compute_cycles(33, 32, 32, 32, 32, df).cycles >= gemm_compute_cycles(32, 32, 32, 32, 32, df).cycles


def test_utilisation_bounds_sweep():
    for m in (1, 7, 32, 33, 100):
        for k in (1, 31, 64, 129):
            for n in (1, 32, 65):
                for df in ("os", "ws", "is"):
                    s = gemm_compute_cycles(m, k, n, 32, 32, df)
                    assert 0 < s.utilisation <= 1
                    assert 0 < s.mapping_efficiency <= 1
                    assert 0 < s.overall_utilisation <= 1
                    assert s.macs == m * k * n


def test_bad_arguments():
    with pytest.raises(TargetError, match="dataflow"):
        gemm_compute_cycles(4, 4, 4, 32, 32, "rs")
    with pytest.raises(TargetError, match="m must be"):
        gemm_compute_cycles(0, 4, 4, 32, 32, "os")
    with pytest.raises(TargetError, match="pe_type"):
        gemm_layer_cycles(64, 64, 64, _cfg(pe_type="mac"), pe_op="shift-add")


SHAPES = [(197, 192, 576), (1, 4096, 4096), (128, 384, 1536), (64, 64, 64), (33, 65, 31), (512, 2048, 512)]


@pytest.mark.parametrize("df", ["os", "ws", "is"])
@pytest.mark.parametrize("shape", SHAPES, ids=["x".join(map(str, s)) for s in SHAPES])
def test_layer_model_consistency(df, shape):
    cfg = _cfg(df)
    st = gemm_layer_cycles(*shape, cfg)
    m, k, n = shape
    assert st.exact
    assert st.total_cycles == st.compute_cycles + st.stall_cycles and st.stall_cycles >= 0
    assert st.compute_cycles >= gemm_compute_cycles(m, k, n, 32, 32, df).cycles - st.tiles
    assert 0 < st.utilisation <= st.compute_utilisation <= 1
    assert 0 < st.mapping_efficiency <= 1
    # every operand crosses DRAM at least once, outputs exactly once (int32)
    assert st.dram_read_bytes >= m * k + k * n
    assert st.dram_write_bytes == 4 * m * n
    t = st.tiling
    s = cfg.scratchpad
    assert t.tm * t.tk <= s.ifmap_bytes // 2 and t.tk * t.tn <= s.filter_bytes // 2
    assert 4 * t.tm * t.tn <= s.ofmap_bytes // 2
    assert st.pe_actions == st.macs == m * k * n
    assert st.spad_to_pe_bytes >= m * k + k * n
    e = st.energy
    assert e.total_pj == pytest.approx(e.pe_pj + e.sram_pj + e.dram_pj)
    assert e.dram_pj == pytest.approx(st.dram_bytes * cfg.energy.dram_per_byte)
    d = st.to_dict()
    assert d["bytes_moved"]["dram->spad"] == st.dram_read_bytes and d["energy"]["total_pj"] == e.total_pj


@pytest.mark.parametrize("df", ["os", "ws", "is"])
@pytest.mark.parametrize("bw,lat", [(32.0, 100), (4.0, 500), (256.0, 0), (1.0, 20)])
def test_double_buffering_never_slower(df, bw, lat):
    cfg = _cfg(df, dram=DramConfig(bandwidth_bytes_per_cycle=bw, latency_cycles=lat))
    for shape in SHAPES:
        tl = choose_tiling(*shape, cfg, double_buffered=True)
        db = gemm_tile_schedule(*shape, cfg, tiling=tl, double_buffered=True)
        serial = gemm_tile_schedule(*shape, cfg, tiling=tl, double_buffered=False)
        assert db.total_cycles <= serial.total_cycles, (shape, tl)
        assert db.compute_cycles == serial.compute_cycles
        assert serial.total_cycles == serial.compute_cycles + serial.dma_busy_cycles
        if db.tiles > 2:
            assert db.total_cycles < serial.total_cycles


def test_bandwidth_bound_and_compute_bound():
    slow = gemm_layer_cycles(1, 4096, 4096, _cfg(dram=DramConfig(bandwidth_bytes_per_cycle=1.0)))
    assert slow.stall_cycles > slow.compute_cycles  # a GEMV streaming 16 MB at 1 B/cycle
    assert slow.total_cycles >= 4096 * 4096  # at least the filter bytes / bandwidth
    fast = gemm_layer_cycles(512, 2048, 512, _cfg(dram=DramConfig(bandwidth_bytes_per_cycle=512.0,
                                                                   latency_cycles=0)))
    assert fast.stall_cycles < 0.05 * fast.total_cycles


def test_scratchpad_capacity_drives_tiling():
    small = _cfg(scratchpad=ScratchpadConfig(ifmap_bytes=4096, filter_bytes=4096, ofmap_bytes=16384))
    big = _cfg()
    a = gemm_layer_cycles(256, 512, 256, small)
    b = gemm_layer_cycles(256, 512, 256, big)
    assert a.tiles > b.tiles
    assert a.dram_read_bytes > b.dram_read_bytes
    t = a.tiling
    assert t.tm * t.tk <= 2048 and t.tk * t.tn <= 2048 and 4 * t.tm * t.tn <= 8192
    with pytest.raises(TargetError, match="does not fit"):
        gemm_tile_schedule(256, 512, 256, small, tiling=Tiling(256, 512, 256))


@pytest.mark.parametrize("df", ["os", "ws", "is"])
def test_shift_add_energy_below_mac(df):
    shape = (197, 192, 768)
    mac = gemm_layer_cycles(*shape, _cfg(df, pe_type="mac"))
    sa = gemm_layer_cycles(*shape, _cfg(df, pe_type="shift-add"))
    both = _cfg(df, pe_type="both")
    assert sa.pe_op == "shift-add" and mac.pe_op == "mac"
    assert sa.total_cycles == mac.total_cycles  # same array timing, cheaper PE action
    assert sa.energy.pe_pj < mac.energy.pe_pj
    assert sa.energy.total_pj < mac.energy.total_pj
    e = MachineConfig().energy
    assert mac.energy.pe_pj == pytest.approx(197 * 192 * 768 * (e.int8_mult + e.int32_add))
    assert sa.energy.pe_pj == pytest.approx(197 * 192 * 768 * (e.int8_shift + e.int32_add))
    assert gemm_layer_cycles(*shape, both, pe_op="shift-add").energy.total_pj == pytest.approx(
        sa.energy.total_pj)
    assert gemm_layer_cycles(*shape, both).pe_op == "mac"


def test_vector_unit():
    from accelc.targets.sim.cycles import vector_op_cycles

    cfg = MachineConfig()
    lanes = cfg.vector.lanes
    add = vector_op_cycles("add", 10 * lanes + 1, cfg)
    assert add.cycles == 11 * cfg.vector.add_cycles
    exp = vector_op_cycles("exp", 10 * lanes + 1, cfg)
    assert exp.cycles == 11 * cfg.vector.exp_cycles and exp.energy_pj > add.energy_pj
    assert vector_op_cycles("reduce", lanes, cfg).cycles > vector_op_cycles("add", lanes, cfg).cycles
    assert vector_op_cycles("mul", 0, cfg).cycles == 0
    with pytest.raises(TargetError, match="unknown vector op"):
        vector_op_cycles("gelu", 4, cfg)
