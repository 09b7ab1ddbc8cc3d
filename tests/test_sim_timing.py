"""The timed simulator: one program, executed (outputs, counts) and timed (cycles) together."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from accelc.passes import shift_add_math as sam
from accelc.targets.sim import MachineConfig, gemm_compute_cycles
from accelc.targets.sim.program import lower_gemm, lower_shift_gemm
from accelc.targets.sim.timing import simulate, time_program


def _cfg(**array):
    cfg = MachineConfig()
    return dataclasses.replace(cfg, array=dataclasses.replace(cfg.array, **array)) if array else cfg


@pytest.mark.parametrize("dataflow", ["os", "ws", "is"])
def test_one_tile_gemm_costs_the_scalesim_compute_cycles_plus_its_transfers(dataflow):
    cfg = _cfg(dataflow=dataflow)
    prog = lower_gemm(20, 30, 40, 32, 32, 64)
    tl = time_program(prog, cfg)
    assert tl.busy["compute"] == gemm_compute_cycles(20, 30, 40, 32, 32, dataflow).cycles
    lat, bw = cfg.dram.latency_cycles, cfg.dram.bandwidth_bytes_per_cycle
    loads = (lat + -(-20 * 30 // bw)) + (lat + -(-30 * 40 // bw))
    store = lat + -(-20 * 40 * 4 // bw)
    assert tl.total_cycles == loads + tl.busy["compute"] + store  # nothing to overlap


def test_double_buffering_overlaps_loads_with_compute():
    cfg = _cfg()
    tl = time_program(lower_gemm(128, 256, 128, 32, 32, 32), cfg)
    serial = sum(tl.busy.values())
    assert tl.busy["compute"] < tl.total_cycles < serial
    assert tl.compute_cycles + tl.stall_cycles == tl.total_cycles


def test_simulate_is_exact_and_shift_add_pes_cost_less_energy():
    rng = np.random.default_rng(0)
    m, k, n = 37, 50, 29
    a = rng.integers(-128, 128, (m, k)).astype(np.int8)
    b = rng.integers(-128, 128, (k, n)).astype(np.int8)
    mac = simulate(lower_gemm(m, k, n, 16, 16, 16), {"A": a, "B": b}, _cfg(pe_type="mac"))
    np.testing.assert_array_equal(mac["outputs"]["C"], a.astype(np.int32) @ b.astype(np.int32))
    assert mac["stats"]["mac"] == m * k * n and 0 < mac["utilisation"] <= 1
    codes = (rng.integers(0, 8, (1, k, n)) * rng.choice([-1, 1], (1, k, n))).astype(np.int8)
    x = rng.integers(-2**20, 2**20, (m, k)).astype(np.int32)
    sh = simulate(lower_shift_gemm(m, k, n, 16, 16, 16), {"X": x, "W": sam.encode_int_codes(codes).reshape(k, n)},
                  _cfg(pe_type="shift-add"))
    np.testing.assert_array_equal(sh["outputs"]["C"], sam.shift_matmul_int_ref(x, codes))
    assert sh["stats"]["shift_add"] == m * k * n
    assert sh["energy_pj"]["pe"] < mac["energy_pj"]["pe"]
    assert sh["timeline"]["compute_cycles"] == mac["timeline"]["compute_cycles"]


def test_scratchpads_come_from_the_config():
    from accelc.targets.sim.functional import SimError

    cfg = MachineConfig()
    small = dataclasses.replace(cfg, scratchpad=dataclasses.replace(cfg.scratchpad, ifmap_bytes=4096))
    a = np.zeros((128, 128), np.int8)
    with pytest.raises(SimError, match="ifmap"):
        simulate(lower_gemm(128, 128, 32, 128, 128, 32), {"A": a, "B": np.zeros((128, 32), np.int8)}, small)
