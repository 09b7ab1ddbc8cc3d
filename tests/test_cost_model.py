"""accelc's learned cost model: features on hand-made schedules, ranking quality on measured
records it did not train on, persistence (round trip, bad files, warm start), and a real
``ms.tune_tir`` run that trains it online.

The held-out ranking quality is measured by ``benchmarks/bench_cost_model.py`` on the recorded
databases in ``benchmarks/data/costmodel/``.
"""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm.script import tirx as T

from accelc.errors import UsageError
from accelc.schedules.tuning import features as F



def _matmul(n=64):
    @T.prim_func(s_tir=True)
    def mm(A: T.Buffer((n, n), "float32"), B: T.Buffer((n, n), "float32"), C: T.Buffer((n, n), "float32")):
        for i, j, k in T.grid(n, n, n):
            with T.sblock("C"):
                vi, vj, vk = T.axis.remap("SSR", [i, j, k])
                with T.init():
                    C[vi, vj] = T.float32(0)
                C[vi, vj] = C[vi, vj] + A[vi, vk] * B[vk, vj]

    return mm


@T.prim_func(s_tir=True)
def _shift_mm(X: T.Buffer((64, 64), "int32"), E: T.Buffer((64, 64), "int8"), S: T.Buffer((64, 64), "int8"),
              Y: T.Buffer((64, 64), "int32")):
    for i, j, r in T.grid(64, 64, 64):
        with T.sblock("Y"):
            vi, vj, vr = T.axis.remap("SSR", [i, j, r])
            with T.init():
                Y[vi, vj] = 0
            Y[vi, vj] = Y[vi, vj] + T.Cast("int32", S[vr, vj]) * T.shift_left(X[vi, vr], T.Cast("int32", E[vr, vj]))


# -- features -----------------------------------------------------------------------------------
def test_sim_features_count_tiles_mapping_and_shifts():
    sch = tvm.s_tir.Schedule(_shift_mm)
    i, j, r = sch.get_loops(sch.get_sblock("Y"))
    io, ii = sch.split(i, [None, 16])
    jo, ji = sch.split(j, [None, 32])
    sch.reorder(io, jo, r, ii, ji)
    info = F.TargetInfo(kind="sim", sim_array=(32, 32), sim_scratchpad_bytes=12 << 10)
    sim = dict(zip(F.SIM_NAMES, F.sim_features(F.parse(sch.mod), info)))
    # 16x32 tiles: the array's rows are half used; the r loop's 10 KiB fit 12 KiB, the jo loop's
    # 16 KiB do not, so each of the 4x2 (io, jo) tiles streams its operands once
    assert sim["sim_map_eff_rows"] == 0.5 and sim["sim_map_eff_cols"] == 1.0 and sim["sim_map_eff"] == 0.5
    assert sim["sim_log_tiles"] == 3.0
    assert sim["sim_log_dma_bytes"] == pytest.approx(np.log2(8 * (16 * 64 * 4 + 2 * 64 * 32 + 16 * 32 * 4) + 1))
    assert sim["sim_shift_frac"] == 0.5  # one shift and one multiply per MAC


def test_trains_online_inside_tune_tir(tmp_path):
    from tvm.s_tir import meta_schedule as ms

    from accelc.schedules.tuning import load_intrinsics, local_builder
    from accelc.schedules.tuning.cost_model import make_cost_model
    from accelc.targets.cpu import host_target

    load_intrinsics("llvm")
    model = make_cost_model("xgb", seed=0)
    runner = ms.runner.LocalRunner(evaluator_config=ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=0))
    db = ms.tune_tir(_matmul(), host_target(), str(tmp_path), max_trials_global=8, num_trials_per_iter=4,
                     builder=local_builder(), runner=runner, cost_model=model, seed=0,
                     strategy=ms.search_strategy.EvolutionarySearch(population_size=32, init_min_unmeasured=16,
                                                                     genetic_num_iters=1))
    records = db.get_all_tuning_records()
    assert len(records) == 8
    assert model.n_records == 8 and model.booster is not None  # two update() calls, retrained
    model.save(str(tmp_path / "m.json"))
    warm = make_cost_model("xgb", warm_start=str(tmp_path / "m.json"))
    assert warm.n_records == 8


def test_make_cost_model_names():
    from tvm.s_tir import meta_schedule as ms

    from accelc.schedules.tuning.cost_model import AccelcXGBModel, make_cost_model

    assert isinstance(make_cost_model("tvm-xgb"), ms.cost_model.XGBModel)
    assert isinstance(make_cost_model("random"), ms.cost_model.RandomModel)
    assert isinstance(make_cost_model("xgb"), AccelcXGBModel)
    with pytest.raises(UsageError, match="unknown cost model 'mlp'"):
        make_cost_model("mlp")
    with pytest.raises(UsageError, match="needs the 'xgb' cost model"):
        make_cost_model("random", warm_start="x.json")
