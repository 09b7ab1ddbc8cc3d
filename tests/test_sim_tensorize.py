"""The sim accelerator's TIR path: workloads, fold intrinsics, schedules, TIR → accel translation
(equal to the hand-written tiled lowering, bit-exact), and MetaSchedule tuning by cycles."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from accelc.errors import TargetError
from accelc.passes import shift_add_math as sam
from accelc.targets.sim import MachineConfig
from accelc.targets.sim.program import lower_gemm, lower_shift_gemm, parse_mlir, to_mlir
from accelc.targets.sim.tensorize import design_spaces, fits_postproc, schedule_gemm, workload
from accelc.targets.sim.timing import simulate, time_program
from accelc.targets.sim.translate import translate
from accelc.targets.sim.tuning import (
    default_tiles,
    program_for,
    sim_builder,
    sim_features,
    sim_runner,
    task_filter,
    tuning_components,
)


def _cfg(**kw):
    cfg = MachineConfig()
    array = dataclasses.replace(cfg.array, pe_type="both")
    sp = dataclasses.replace(cfg.scratchpad, **kw)
    return dataclasses.replace(cfg, array=array, scratchpad=sp)


CFG = _cfg()


def _schedule(kind, m, k, n, terms, tiles, order="mn", stationary=False, cfg=CFG):
    from tvm.s_tir import Schedule

    sch = Schedule(workload(kind, m, k, n, terms, cfg))
    return schedule_gemm(sch, cfg, tiles, order, stationary)


def _feeds(kind, m, k, n, terms, seed=0):
    """DRAM feeds and the NumPy reference (int32 GEMM / shift-add with zero and negative codes)."""
    rng = np.random.default_rng(seed)
    if kind == "gemm":
        a = rng.integers(-128, 128, (m, k)).astype(np.int8)
        b = rng.integers(-128, 128, (k, n)).astype(np.int8)
        return {"A": a, "B": b}, a.astype(np.int32) @ b.astype(np.int32)
    codes = (rng.integers(1, 12, (terms, k, n)) * rng.choice([-1, 0, 1], (terms, k, n))).astype(np.int8)
    x = rng.integers(-2**24, 2**24, (m, k)).astype(np.int32)
    return {"X": x, "W": sam.encode_int_codes(codes).reshape(terms * k, n)}, sam.shift_matmul_int_ref(x, codes)


def _run(prog, kind, m, k, n, terms, cfg=CFG):
    feeds, ref = _feeds(kind, m, k, n, terms)
    res = simulate(prog, feeds, cfg)
    np.testing.assert_array_equal(res["outputs"]["C"], ref)
    return res


def _call_externs(mod) -> list[str]:
    import tvm_ffi
    from tvm.ir.expr import Call, StringImm

    names = []
    tvm_ffi.structural_walk(mod["main"].body, [(Call, lambda c: names.extend(
        str(a.value) for a in c.args if isinstance(a, StringImm)))], order="pre")
    return names


def test_workloads_compute_the_ops_on_the_cpu():
    """The TIR definitions are the ops (before any schedule): int8 GEMM and the shift-add with
    sign and zero codes, against the NumPy references."""
    import tvm

    for kind, terms in (("gemm", 1), ("shift_gemm", 2)):
        m, k, n = 5, 7, 3
        feeds, ref = _feeds(kind, m, k, n, terms, seed=1)
        args = list(feeds.values())
        if kind == "shift_gemm":
            args[1] = args[1].reshape(terms, k, n)
        lib = tvm.compile(workload(kind, m, k, n, terms), target="llvm")
        out = tvm.runtime.tensor(np.zeros((m, n), np.int32))
        lib["main"](*(tvm.runtime.tensor(a) for a in args), out)
        np.testing.assert_array_equal(out.numpy(), ref)


@pytest.mark.parametrize("kind", ["gemm", "shift_gemm"])
def test_schedule_tensorizes_onto_the_fold_intrinsic(kind):
    sch = _schedule(kind, 197, 192, 576, 2, (64, 128, 64))
    script = sch.mod.script()
    ext = "accel.gemm" if kind == "gemm" else "accel.shift_gemm"
    assert _call_externs(sch.mod) == [ext]  # one tensorized block, the rest are copies
    assert f"accel_{kind}_32x32x32" in str(sch.trace)
    for scope in ("global.accel_ifmap", "global.accel_weight", "global.accel_acc"):
        assert f'scope="{scope}"' in script
    # the sampled design spaces tensorize too (every variant)
    from tvm.s_tir import Schedule

    spaces = design_spaces(Schedule(workload(kind, 197, 192, 576, 2, CFG)), CFG)
    assert len(spaces) == (4 if kind == "gemm" else 3)
    assert all(_call_externs(s.mod) == [ext] for s in spaces)


CASES = [  # kind, (m, k, n, terms), tiles
    ("gemm", (197, 192, 576, 1), (64, 128, 64)),  # the offload's default tiles
    ("gemm", (197, 192, 576, 1), (32, 64, 96)),
    ("gemm", (1, 4096, 512, 1), (1, 128, 64)),
    ("gemm", (1, 4096, 512, 1), (1, 1024, 128)),
    ("gemm", (64, 64, 64, 1), (32, 32, 32)),
    ("gemm", (64, 64, 64, 1), (64, 64, 64)),
    ("gemm", (5, 7, 3, 1), (2, 3, 2)),  # folds of 2x1x2 and partial everything
    ("shift_gemm", (197, 192, 576, 2), (64, 128, 64)),
    ("shift_gemm", (197, 192, 576, 2), (96, 32, 192)),
    ("shift_gemm", (1, 4096, 512, 1), (1, 256, 64)),
    ("shift_gemm", (64, 64, 64, 3), (32, 32, 32)),
]


@pytest.mark.parametrize("kind,dims,tiles", CASES)
def test_translation_equals_the_tiled_lowering_and_is_exact(kind, dims, tiles):
    """The schedule equivalent to ``_lower_tiled`` (output-tile-major, these tiles) translates
    to the very same program: same text, same cycles; and its outputs are bit-exact."""
    m, k, n, terms = dims
    prog = translate(_schedule(kind, m, k, n, terms, tiles).mod, CFG)
    ref = lower_gemm(m, k, n, *tiles) if kind == "gemm" else lower_shift_gemm(m, k, n, *tiles, terms=terms)
    assert to_mlir(prog) == to_mlir(ref)
    assert time_program(prog, CFG).total_cycles == time_program(ref, CFG).total_cycles
    _run(prog, kind, m, k, n, terms)


@pytest.mark.parametrize("kind,order,stationary", [("gemm", "nm", False), ("gemm", "mn", True),
                                                   ("gemm", "nm", True), ("shift_gemm", "mn", True)])
def test_other_orders_are_exact_and_features_predict_the_program(kind, order, stationary):
    m, k, n, terms = 197, 192, 576, 2
    sch = _schedule(kind, m, k, n, terms, (64, 64, 96), order, stationary)
    res = _run(translate(sch.mod, CFG), kind, m, k, n, terms)
    f, st = sim_features(sch, CFG), res["stats"]
    assert f["compute_cycles"] == res["timeline"]["compute_cycles"]
    assert f["dma_load_bytes"] == st["dram_read_bytes"] and f["dma_store_bytes"] == st["dram_write_bytes"]
    assert f["instructions"] == sum(st["instructions"].values())
    useful = m * k * n * (terms if kind == "shift_gemm" else 1)
    assert f["mac_ops"] + f["shift_add_ops"] == st["mac"] + st["shift_add"] == useful
    assert 0.8 < f["mapping_efficiency"] < 1  # 197 rows on 32-row folds: 197 / 224
    if stationary:  # the outer operand is loaded once per outer tile
        a_tiles = f["tiles_m"] if order == "mn" else f["tiles_n"]
        loads = st["instructions"]["accel.dma_load"]
        inner = f["tiles_n"] if order == "mn" else f["tiles_m"]
        assert loads == a_tiles + a_tiles * inner * (terms if kind == "shift_gemm" else 1)


def test_single_buffered_machine_serialises_but_stays_exact():
    cfg = _cfg(double_buffered=False)
    prog = translate(_schedule("gemm", 64, 128, 64, 1, (32, 32, 32), cfg=cfg).mod, cfg)
    double = translate(_schedule("gemm", 64, 128, 64, 1, (32, 32, 32)).mod, CFG)
    _run(prog, "gemm", 64, 128, 64, 1, cfg)
    assert time_program(prog, cfg).total_cycles > time_program(double, CFG).total_cycles


def test_mlir_round_trip_keeps_text_and_cycles():
    prog = translate(_schedule("shift_gemm", 197, 192, 576, 2, (64, 96, 64)).mod, CFG)
    text = to_mlir(prog)
    back = parse_mlir(text)
    assert to_mlir(back) == text
    assert time_program(back, CFG).total_cycles == time_program(prog, CFG).total_cycles


def test_bad_schedules_are_clear_errors(tmp_path):
    from tvm.s_tir.meta_schedule.builder import BuilderInput
    from tvm.s_tir.meta_schedule.runner import RunnerInput

    from accelc.targets.sim.tuning import sim_target

    big = _schedule("gemm", 197, 192, 576, 1, (197, 192, 576))  # acc: 2 x 197x576 int32
    with pytest.raises(TargetError, match=r"'acc' scratchpad \(scratchpad.ofmap_bytes = 262144 B\): "
                                          r"C tile 197x576 int32 = 453888 B x 2 slots.* = 907776 B"):
        translate(big.mod, CFG)
    assert not fits_postproc(CFG).apply(big)  # rejected before it is built
    assert fits_postproc(CFG).apply(_schedule("gemm", 197, 192, 576, 1, (64, 128, 64)))
    (res,) = sim_builder(CFG).build([BuilderInput(big.mod, sim_target(CFG))])
    assert res.artifact_path is None and "'acc' scratchpad" in res.error_msg
    (fut,) = sim_runner(CFG).run([RunnerInput(str(tmp_path / "missing.mlir"), "cpu", [])])
    assert fut.result().run_secs is None and "No such file" in fut.result().error_msg
    mac_only = dataclasses.replace(CFG, array=dataclasses.replace(CFG.array, pe_type="mac"))
    with pytest.raises(TargetError, match="shift-add PEs.*pe_type = 'mac'"):
        translate(_schedule("shift_gemm", 64, 64, 64, 1, (32, 32, 32)).mod, mac_only)
    with pytest.raises(TargetError, match="not tensorized"):
        translate(workload("gemm", 64, 64, 64), CFG)
    with pytest.raises(TargetError, match="tiles must be three positive integers"):
        _schedule("gemm", 64, 64, 64, 1, (32, 0, 32))


def test_mutated_traces_replay_onto_the_intrinsic():
    """MutateTileSize changes a sampled tile; the mutated trace still tensorizes and translates."""
    import tvm
    from tvm.s_tir import Schedule
    from tvm.s_tir import meta_schedule as ms

    comps = tuning_components(CFG)
    mod = tvm.IRModule({"main": workload("gemm", 197, 192, 576, 1, CFG)})
    ctx = ms.TuneContext(mod=mod, target=comps["target"], space_generator=comps["space"],
                         search_strategy=ms.search_strategy.ReplayTrace(), task_name="main", rand_state=0)
    base = ctx.generate_design_space()[0]
    mutator = ms.mutator.MutateTileSize()
    mutator._initialize_with_tune_context(ctx)  # noqa: SLF001 - the standalone mutator API
    tiles = {tuple(sim_features(base, CFG)[f"tile_{d}"] for d in "mkn")}
    for _ in range(20):
        trace = mutator.apply(base.trace)
        if trace is None:
            continue
        sch = Schedule(mod)
        trace.apply_to_schedule(sch, remove_postproc=True)
        assert _call_externs(sch.mod) == ["accel.gemm"]
        tiles.add(tuple(sim_features(sch, CFG)[f"tile_{d}"] for d in "mkn"))
        if fits_postproc(CFG).apply(sch):
            _run(translate(sch.mod, CFG), "gemm", 197, 192, 576, 1)
    assert len(tiles) >= 3


def test_program_for_defaults_to_the_offload_tiling():
    tiles = default_tiles(CFG, 197, 192, 576, a_bytes=4)
    assert tiles == (64, 128, 64)
    prog = program_for("shift_gemm", 197, 192, 576, 2, CFG)
    assert to_mlir(prog) == to_mlir(lower_shift_gemm(197, 192, 576, *tiles, terms=2))
    named = program_for("gemm", 64, 96, 32, 1, CFG, name="layer3", prefix="l3.")
    ref = lower_gemm(64, 96, 32, *default_tiles(CFG, 64, 96, 32, a_bytes=1), name="layer3", a="l3.A", b="l3.B",
                     c="l3.C")
    assert to_mlir(named) == to_mlir(ref)
    assert task_filter(workload("gemm", 8, 8, 8))
    assert not task_filter(workload("gemm", 8, 8, 8).without_attr("accelc.sim_op"))


def _tune(tmp_path, m, k, n, trials):
    from tvm.s_tir import meta_schedule as ms

    comps = tuning_components(CFG)
    db = ms.tune_tir(workload("gemm", m, k, n, 1, CFG), comps["target"], str(tmp_path), max_trials_global=trials,
                     num_trials_per_iter=16, space=comps["space"], builder=comps["builder"],
                     runner=comps["runner"], cost_model=ms.cost_model.RandomModel(seed=0), seed=0, num_tuning_cores=1,
                     strategy=ms.search_strategy.EvolutionarySearch(population_size=64, init_min_unmeasured=16))
    return comps, db


def _check_tuned(comps, db, m, k, n, trials, work_dir):
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.builder import BuilderInput
    from tvm.s_tir.meta_schedule.runner import RunnerInput
    from tvm.s_tir.meta_schedule.utils import remove_build_dir

    from accelc.targets.sim.tuning import tuned_schedule

    recs = db.get_all_tuning_records()
    secs = [float(r.run_secs[0]) for r in recs]
    assert len(recs) == trials and max(secs) < 1  # every candidate built and ran (no 1e10)
    decisions = {tuple(tuple(int(x) for x in d) for d in r.trace.decisions.values()) for r in recs}
    assert len(decisions) >= trials // 2  # sampled and mutated tilings, not one schedule
    best = min(secs)
    default = time_program(program_for("gemm", m, k, n, 1, CFG), CFG).total_cycles
    tuned = time_program(program_for("gemm", m, k, n, 1, CFG, database=db), CFG).total_cycles
    assert tuned == round(best * CFG.clock_mhz * 1e6) <= default
    reopened = ms.database.JSONDatabase(work_dir=str(work_dir))  # the records persist
    assert time_program(program_for("gemm", m, k, n, 1, CFG, database=reopened), CFG).total_cycles == tuned
    # the runner is deterministic: the best program, built again, costs the same twice
    sch = tuned_schedule(workload("gemm", m, k, n, 1, CFG), CFG, db)
    (art,) = comps["builder"].build([BuilderInput(sch.mod, comps["target"])])
    runs = [comps["runner"].run([RunnerInput(art.artifact_path, "cpu", [])])[0].result() for _ in range(2)]
    remove_build_dir(art.artifact_path)
    assert [float(r.run_secs[0]) for r in runs] == [best, best]
    return default, tuned


def test_tuning_finds_a_tiling_no_slower_than_the_default(tmp_path):
    comps, db = _tune(tmp_path, 197, 192, 576, 16)
    default, tuned = _check_tuned(comps, db, 197, 192, 576, 16, tmp_path)
    assert tuned < default  # 35874 vs 57227 cycles with seed 0


@pytest.mark.slow
def test_tuning_a_gemv(tmp_path):
    comps, db = _tune(tmp_path, 1, 4096, 4096, 32)
    default, tuned = _check_tuned(comps, db, 1, 4096, 4096, 32, tmp_path)
    assert tuned < default
