"""accelc's learned cost model: features on hand-made schedules, ranking quality on measured
records it did not train on, persistence (round trip, bad files, warm start), and a real
``ms.tune_tir`` run that trains it online.

The records (``tests/data/costmodel/``) are a slice of the benchmark's: the first 64 candidates
of three dense-layer tasks (BERT, MiniLM, DeiT), timed on this machine by ``LocalRunner``
(fastest of 15 single runs). The full held-out comparison is ``benchmarks/bench_cost_model.py``.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import tvm
from tvm.script import tirx as T

from accelc.benchmarks.bench_cost_model import pairwise_accuracy, top_k_score
from accelc.errors import ArtifactError, UsageError
from accelc.schedules.tuning import features as F

DATA = Path(__file__).parent / "data" / "costmodel"
AVX2 = F.TargetInfo(num_cores=2, vector_bits=256, vector_regs=16, cache_bytes=(32 << 10, 512 << 10, 16 << 20))


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


def _split_matmul(axis: str, inner: int):
    """The plain matmul with loop ``axis`` (i, j or k) split by ``inner``: the schedule, its
    block and its loops by name (the halves as ``axis + "0"`` and ``axis + "1"``)."""
    sch = tvm.s_tir.Schedule(_matmul())
    blk = sch.get_sblock("C")
    loops = dict(zip("ijk", sch.get_loops(blk)))
    loops[axis + "0"], loops[axis + "1"] = sch.split(loops[axis], [None, inner])
    return sch, blk, loops


def _tiled(vec=8, parallel=True):
    """i, j/vec, k, j%vec (vectorized): the micro-kernel keeps ``vec`` accumulators live."""
    sch, blk, lp = _split_matmul("j", vec)
    sch.reorder(lp["i"], lp["j0"], lp["k"], lp["j1"])
    if parallel:
        sch.parallel(lp["i"])
    sch.vectorize(lp["j1"])
    sch.decompose_reduction(blk, lp["k"])
    return sch


# -- features -----------------------------------------------------------------------------------
def test_footprints_of_a_plain_matmul():
    prog = F.parse(tvm.IRModule({"main": _matmul()}))
    (blk,) = prog.blocks
    # the whole nest; the j loop: a row of A, all of B, a row of C; the k loop: a row of A, a
    # column of B, one C; one iteration: three floats
    fp = F.footprints(blk)
    assert fp == [3 * 64 * 64 * 4, 64 * 4 + 64 * 64 * 4 + 64 * 4, 64 * 4 + 64 * 4 + 4, 12]
    # 32 KiB holds the j loop's 16.5 KiB: it is reloaded once per i
    assert F.traffic_into(blk, fp, 32 << 10) == 64 * (64 * 4 + 64 * 64 * 4 + 64 * 4)
    assert blk.ops["float"] == 2 and blk.ops["mul"] == 1 and blk.is_reduction
    assert prog.io_bytes == 3 * 64 * 64 * 4 and prog.scratch_bytes == 0


def test_footprints_in_cache_lines():
    """``line=64``: a walk down a column touches a cache line per element; a row, its bytes
    rounded up to whole lines; the whole-row regions of a loop stay exact."""
    prog = F.parse(tvm.IRModule({"main": _matmul()}))
    (blk,) = prog.blocks
    fp = F.footprints(blk, 64)
    # the k loop: a row of A (256 B, 4 lines), a column of B (64 elements, 64 lines), one C (1 line)
    assert fp[2] == 64 * 4 + 64 * 64 + 64
    assert fp[3] == 3 * 64  # one iteration: three lines
    assert fp[0] == 3 * 64 * 64 * 4  # whole matrices: rows are contiguous
    assert F.footprints(blk) == F.footprints(blk, 1)  # the default counts bytes (the sim's DMA)


def test_the_loop_llvm_vectorizes_by_itself_counts_as_vector():
    """A serial innermost loop that walks the output contiguously is vectorized by LLVM; an
    innermost float reduction (it would need reassociation) or a strided output is not."""
    def feats(sch):
        return dict(zip(F.CPU_NAMES, F.cpu_features(F.parse(sch.mod), AVX2)))

    def order(*names):
        sch = tvm.s_tir.Schedule(_matmul())
        blk = sch.get_sblock("C")
        loops = dict(zip("ijk", sch.get_loops(blk)))
        sch.reorder(*(loops[n] for n in names))
        return sch

    ikj, ijk, kji = feats(order("i", "k", "j")), feats(order("i", "j", "k")), feats(order("k", "j", "i"))
    assert ikj["auto_vec"] == 1.0 and ikj["vec_lanes"] == 1.0  # j: C and B by one element, A in place
    assert ijk["auto_vec"] == 0.0 and ijk["vec_lanes"] == 0.125  # k innermost: a reduction
    assert kji["auto_vec"] == 0.0 and kji["vec_lanes"] == 0.125  # i innermost: C walks a column
    assert ikj["log_compute_per_op"] < ijk["log_compute_per_op"]
    assert feats(_tiled(8))["auto_vec"] == 0.0  # the schedule's own vector loop


AVX512 = F.TargetInfo(num_cores=2, vector_bits=512, vector_regs=32, cache_bytes=(48 << 10, 2 << 20, 32 << 20))


def _split_k(inner, unroll=0, rows=1):
    """i, k0, j, k1 (k split by ``inner``; with ``rows`` > 1: i0, k0, j, i1, k1, a block of
    ``rows`` rows of C per j); ``unroll``: TVM's ``pragma_auto_unroll_max_step`` on the
    outermost loop, with the init decomposed out of the loop nest as MetaSchedule's candidates
    always have it (with the init left inside the block, TVM kept the 64-trip loop rolled at a
    step of 64: its assembly has no unrolled copies)."""
    sch, blk, lp = _split_matmul("k", inner)
    if rows > 1:
        outer, i1 = sch.split(lp["i"], [None, rows])
        sch.reorder(outer, lp["k0"], lp["j"], i1, lp["k1"])
    else:
        outer = lp["i"]
        sch.reorder(outer, lp["k0"], lp["j"], lp["k1"])
    if unroll:
        sch.annotate(outer, "pragma_auto_unroll_max_step", unroll)
        sch.annotate(outer, "pragma_unroll_explicit", 1)
        sch.decompose_reduction(blk, lp["k0"])
    return sch


def _packed_b(s=8, n=64):
    """C[i, j] += A[i, k] * Bp[k // s, j, k % s] (B packed as MetaSchedule's layout rewrite
    packs weights), ordered i, k0, j, k1 with k1 = s: stepping j moves Bp by ``s`` elements,
    and the s-trip k1 loop inside reads all ``s`` of them."""
    @T.prim_func(s_tir=True)
    def mm(A: T.Buffer((n, n), "float32"), B: T.Buffer((n // s, n, s), "float32"), C: T.Buffer((n, n), "float32")):
        for i, j, k in T.grid(n, n, n):
            with T.sblock("C"):
                vi, vj, vk = T.axis.remap("SSR", [i, j, k])
                with T.init():
                    C[vi, vj] = T.float32(0)
                C[vi, vj] = C[vi, vj] + A[vi, vk] * B[vk // s, vj, vk % s]

    sch = tvm.s_tir.Schedule(mm)
    i, j, k = sch.get_loops(sch.get_sblock("C"))
    k0, k1 = sch.split(k, [None, s])
    sch.reorder(i, k0, j, k1)
    return sch


def test_llvm_vectorizes_the_loop_around_a_short_unrolled_reduction():
    """i, k0, j, k1 (k = 8 x 8): LLVM unrolls the 8-trip k1 loop and vectorizes j, with its own
    256-bit vectors even on AVX-512 (the attention-score schedules' fastest candidates
    compile to ymm multiply-adds this way). A 64-trip k loop inside j stays a rolled
    reduction: not vector. Once TVM unrolls those 64 trips, j is vector again (the DeiT
    scores' 234 us candidates, ranked with the 1 ms scalar ones before); a body of 4 rows x 64
    (256 multiply-adds) is more than LLVM's vectorizer takes (``LLVM_VECTORIZE_OPS``)."""
    def feats(sch):
        return dict(zip(F.CPU_NAMES, F.cpu_features(F.parse(sch.mod), AVX512)))

    short, long_ = feats(_split_k(8)), feats(_split_k(64))
    unrolled, four_rows = feats(_split_k(64, unroll=64)), feats(_split_k(64, unroll=256, rows=4))
    assert short["auto_vec"] == 1.0 and short["vec_lanes"] == 0.5  # 8 lanes of AVX-512's 16
    assert long_["auto_vec"] == 0.0 and long_["vec_lanes"] == 1 / 16
    assert unrolled["auto_vec"] == 1.0 and unrolled["vec_lanes"] == 0.5
    assert four_rows["auto_vec"] == 0.0 and four_rows["vec_lanes"] == 1 / 16
    assert short["log_compute_per_op"] < long_["log_compute_per_op"]
    assert unrolled["log_compute_per_op"] < four_rows["log_compute_per_op"]
    # reads that stride: LLVM loads the 8 members of each stride-8 group and shuffles them
    # (bert_dense's 283 us candidates pack the weight this way; features version 6 called
    # them scalar)
    packed = feats(_packed_b())
    assert packed["auto_vec"] == 1.0 and packed["vec_lanes"] == 0.5


def test_the_auto_vector_rule_matches_llvms_assembly():
    """The rule above against the pinned TVM's LLVM itself: each schedule compiled for an
    AVX-512 core, its multiply-adds counted in the assembly. Where the features say LLVM
    vectorized a loop, the code has packed (ymm) multiply-adds; where they say it did not,
    it has none (a strided read included: B packed ``[k // 8, j, k % 8]``). A newer LLVM that
    moves the limit fails here first."""
    import re

    target = tvm.target.Target({"kind": "llvm", "mcpu": "rocketlake", "num-cores": 2})
    cases = {"k1 = 8": _split_k(8), "k1 = 64, rolled": _split_k(64), "k1 = 64, unrolled": _split_k(64, unroll=64),
             "4 rows x 64, unrolled": _split_k(64, unroll=256, rows=4), "B packed by 8": _packed_b()}
    for name, sch in cases.items():
        vec = dict(zip(F.CPU_NAMES, F.cpu_features(F.parse(sch.mod), AVX512)))["auto_vec"]
        asm = tvm.tirx.build(sch.mod, target=target).inspect_source("asm")
        packed = len(re.findall(r"vfmadd\w+ps\s[^\n]*[yz]mm", asm))
        scalar = len(re.findall(r"vfmadd\w+ss", asm))
        assert scalar > 0, name  # the multiply-adds are there (the remainder, at least)
        assert (packed > 0) == (vec == 1.0), (name, vec, packed, scalar)


def test_cpu_features_see_vector_width_parallelism_and_the_register_tile():
    def feats(sch):
        return dict(zip(F.CPU_NAMES, F.cpu_features(F.parse(sch.mod), AVX2)))

    by8, by16, serial = feats(_tiled(8)), feats(_tiled(16)), feats(_tiled(4, parallel=False))
    # AVX2 holds 8 fp32: 8 fills a vector, 16 is two instructions of 8, 4 half-fills one
    assert by8["vec_lanes"] == 1.0 and by16["vec_lanes"] == 1.0 and serial["vec_lanes"] == 0.5
    assert by8["vec_fill"] == 1.0 and serial["vec_fill"] == 0.5
    assert by8["vec_gather"] == 0.0  # j moves B and C by one element and leaves A in place
    assert by8["stride0_frac"] == 0.25 and by8["stride1_frac"] == 0.75  # A; C read, B, C written
    assert by8["par_per_core"] == np.log2(64 / 2 + 1) and by8["par_balance"] == 1.0
    assert serial["par_per_core"] == np.log2(0.5 + 1) and serial["par_work_frac"] == 0.0
    assert by8["log_acc_vectors"] == 0.0 and by16["log_acc_vectors"] == 1.0  # 1 or 2 accumulator vectors
    # the vector loop is one instruction: each accumulator takes all 64 k updates in a row
    assert by8["log_chain"] == 6.0
    assert by8["log_inner_reduce"] == 6.0 and by8["reduce_innermost"] == 0.0  # k, outside the vector loop
    # fewer cycles per op with more independent accumulators, more lanes and both cores
    assert by16["log_compute_per_op"] < by8["log_compute_per_op"] < serial["log_compute_per_op"]


def _light(a):
    return a


def _heavy(a):  # 3 adds and 2 exps: 13 instructions at 4 per special function
    return T.exp(a) + T.exp(a + T.float32(1))


def _row_reduction(f, k: int = 64):
    """C[i] = sum over k of ``f(A[i, k])``, k innermost: one accumulator, a chain of k
    dependent adds."""
    @T.prim_func(s_tir=True)
    def red(A: T.Buffer((64, k), "float32"), C: T.Buffer((64,), "float32")):
        for i, r in T.grid(64, k):
            with T.sblock("C"):
                vi, vr = T.axis.remap("SR", [i, r])
                with T.init():
                    C[vi] = T.float32(0)
                C[vi] = C[vi] + f(A[vi, vr])

    return red


def test_only_the_accumulating_add_waits_and_a_one_trip_reduction_carries_nothing():
    """A chain of dependent adds costs the add's latency (4 cycles) per iteration; the rest of
    the body issues at the core's rate (2 per cycle) meanwhile, so a heavy body costs its issue
    time, not its issue time times the latency. A 1-trip reduction loop has no chain at all,
    and a multiply feeding an add is one fused multiply-add."""
    def update(func):
        return next(b for b in F.parse(tvm.IRModule({"main": func})).blocks if b.name == "C")

    light, heavy = update(_row_reduction(_light)), update(_row_reduction(_heavy))
    assert heavy.ops["special"] == 2 and heavy.ops["float"] == 5
    # + 1 cycle of loop overhead per rolled iteration
    assert F._perf(light, AVX2).compute == 64 * 64 * (F.FMA_LATENCY + 1)
    assert F._perf(heavy, AVX2).compute == 64 * 64 * ((5 + 4 * 2) / F.FMA_PORTS + 1)
    one = update(_row_reduction(_light, k=1))
    # (and LLVM vectorizes the i loop around it: 8 rows per instruction)
    assert F._perf(one, AVX2).compute == 64 / 8 * (1 / F.FMA_PORTS + 1)
    mm = F.parse(tvm.IRModule({"main": _matmul()})).blocks[-1]  # C += A * B: one FMA
    assert F._perf(mm, AVX2).compute == 64 ** 3 * (F.FMA_LATENCY + 1)
    (mm1,) = [b for b in F.parse(tvm.IRModule({"main": _matmul(1)})).blocks if b.is_reduction]
    assert F._perf(mm1, AVX2).compute == 1 / F.FMA_PORTS + 1


def _rowsum_in_the_column_loop(k: int):
    """B[i, j] = A[i, j] / sum(A[i, :]) with the row sum placed inside the j loop (as
    MetaSchedule's compute-at places it): the same k-term sum, once per j."""
    @T.prim_func(s_tir=True)
    def f(A: T.Buffer((64, k), "float32"), B: T.Buffer((64, k), "float32")):
        S = T.sblock_alloc_buffer((64,))
        for i in range(64):
            for j in range(k):
                for r in range(k):
                    with T.sblock("S"):
                        vi, vr = T.axis.remap("SR", [i, r])
                        with T.init():
                            S[vi] = T.float32(0)
                        S[vi] = S[vi] + A[vi, vr]
                with T.sblock("B"):
                    vi, vj = T.axis.remap("SS", [i, j])
                    B[vi, vj] = A[vi, vj] / S[vi]

    return tvm.s_tir.Schedule(f)


def test_llvm_hoists_a_repeated_unrolled_reduction_out_of_the_loop_it_does_not_use():
    """Once the k-term sum is straight-line code, LLVM's loop-invariant code motion computes
    it once per row, not once per j (seen in the assembly of the zoo's softmax schedules): its
    work counts once. Rolled (64 trips, not unrolled) it stays inside the j loop."""
    def log_work(sch):
        return dict(zip(F.CPU_NAMES, F.cpu_features(F.parse(sch.mod), AVX2)))["log_work"]

    rolled, unrolled, short = (_rowsum_in_the_column_loop(k) for k in (64, 64, 16))
    unrolled.annotate(unrolled.get_loops(unrolled.get_sblock("B"))[0], "pragma_auto_unroll_max_step", 64)
    # the sum, then the division (64 x 64)
    assert log_work(rolled) == np.log2(64 * 64 * 64 + 64 * 64 + 1)
    assert log_work(unrolled) == np.log2(64 * 64 + 64 * 64 + 1)
    assert log_work(short) == np.log2(64 * 16 + 64 * 16 + 1)  # 16 trips: LLVM unrolls them


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


def test_extractor_appends_target_features_to_every_store_row(monkeypatch):
    from tvm.s_tir import meta_schedule as ms

    from accelc.schedules.tuning import load_intrinsics

    load_intrinsics("llvm")  # before any TuneContext: not TVM's 37 s import of every architecture
    sch = _tiled(8)
    ctx = ms.TuneContext(mod=sch.mod, target=tvm.target.Target({"kind": "llvm", "num-cores": 2}))
    cand = ms.MeasureCandidate(sch, ms.arg_info.ArgInfo.from_prim_func(_matmul()))
    (rows,) = F.AccelcFeatures("llvm", info=AVX2).extract_from(ctx, [cand])
    rows = rows.numpy()
    assert rows.shape[1] == F.PER_STORE_LENGTH + len(F.CPU_NAMES) and len(rows) >= 1
    want = F.cpu_features(F.parse(sch.mod), AVX2)
    np.testing.assert_allclose(rows[:, F.PER_STORE_LENGTH:], np.broadcast_to(want, (len(rows), len(want))), rtol=1e-6)

    # the sim target plugs in its own features (same names: saved models stay valid)
    n_sim = len(F.SIM_NAMES) + len(F.SIM_EXACT_NAMES)
    monkeypatch.setitem(F._GROUPS, "sim", F._GROUPS["sim"])
    F.register_target_features("sim", lambda prog, info: [float(len(prog.blocks))] * n_sim)
    (rows,) = F.AccelcFeatures("sim", info=F.TargetInfo(kind="sim")).extract_from(ctx, [cand])
    assert rows.numpy().shape[1] == F.PER_STORE_LENGTH + len(F.CPU_NAMES) + n_sim
    assert (rows.numpy()[:, -n_sim:] == 2.0).all()  # C_init and C_update
    with pytest.raises(UsageError, match="need names"):
        F.register_target_features("npu", lambda prog, info: [])


def test_exact_sim_features_are_the_translators_plan():
    """For a sim candidate the exact group is ``static_stats`` of its plan on the machine the
    target names; for a schedule the translator refuses (a CPU loop nest) it is all zeros."""
    import dataclasses
    import math

    from tvm.s_tir import meta_schedule as ms

    from accelc.targets.sim import offload
    from accelc.targets.sim.tensorize import workload
    from accelc.targets.sim.translate import plan, static_stats
    from accelc.targets.sim.tuning import tuning_components

    base = offload.default_config()
    cfg = dataclasses.replace(base, array=dataclasses.replace(base.array, rows=16, cols=16))  # not the default
    comps = tuning_components(cfg)
    func = workload("gemm", 64, 96, 128, 1, cfg)
    ctx = ms.TuneContext(mod=tvm.IRModule({"main": func}), target=comps["target"],
                         space_generator=comps["space"], rand_state=3)
    sch = ctx.generate_design_space()[0]
    info = F.target_info(comps["target"], kind="sim")
    assert info.extra["sim_model"] == str(comps["target"].attrs["model"])
    got = dict(zip(F.SIM_EXACT_NAMES, F.sim_exact_features(F.parse(sch.mod), info)))
    st = static_stats(plan(sch.mod, cfg, check_fit=False), cfg)
    assert got["simx_planned"] == 1.0
    assert got["simx_log_compute_cycles"] == pytest.approx(math.log2(st["compute_cycles"] + 1))
    dma = st["dma_bytes"] / cfg.dram.bandwidth_bytes_per_cycle + st["dma_latency_cycles"]
    assert got["simx_log_bound"] == pytest.approx(math.log2(max(st["compute_cycles"], dma) + 1))
    assert got["simx_map_eff"] == pytest.approx(st["mapping_efficiency"]) and 0 < got["simx_map_eff"] <= 1
    on_default = static_stats(plan(sch.mod, base, check_fit=False), base)
    assert on_default["compute_cycles"] != st["compute_cycles"]  # so the features used the named machine
    assert F.sim_exact_features(F.parse(_tiled(8).mod), info) == [0.0] * len(F.SIM_EXACT_NAMES)


# -- the model on measured records --------------------------------------------------------------
@pytest.fixture(scope="module")
def records():
    from accelc.benchmarks.bench_cost_model import _as, load

    tasks = {t.name: t for t in load(DATA)}
    for t in tasks.values():
        t.x = _as(t.x)  # the model's default aggregation
    return tasks


def _key(task):
    from tvm.s_tir.meta_schedule.utils import shash2hex

    return shash2hex(task.context.mod)


def _trained(tasks, **kw):
    from accelc.schedules.tuning.cost_model import AccelcXGBModel

    model = AccelcXGBModel(**kw)
    for t in tasks:
        model.add(_key(t), t.x, t.latency)
    model.fit()
    return model


def test_ranking_metrics_on_hand_made_scores():
    lat = np.array([1.0, 2.0, 3.0, 4.0])
    assert pairwise_accuracy(lat, -lat) == 1.0 and pairwise_accuracy(lat, lat) == 0.0
    assert pairwise_accuracy(lat, np.zeros(4)) == 0.5  # ties count half
    assert pairwise_accuracy(lat, [4, 3, 1, 2], min_ratio=1.4) == 1.0  # 3 vs 4 (1.33x) left out
    assert top_k_score(lat, [0.0, 0.0, 1.0, 0.0], 1) == 1 / 3
    # ties at the cut are picked at random: the records come sorted by run time, so a tie broken
    # by position would always pick the fastest; the exact expectation, against brute force
    rng = np.random.default_rng(0)
    for _ in range(50):
        lat = rng.uniform(1, 10, 7)
        score = rng.integers(0, 3, 7).astype(float)
        for k in (1, 2, 5, 7):
            want = []
            for perm in itertools.permutations(range(7)):
                order = sorted(range(7), key=lambda i: (-score[i], perm[i]))
                want.append(lat.min() / lat[order[:k]].min())
            assert top_k_score(lat, score, k) == pytest.approx(np.mean(want))
    assert top_k_score(lat, np.zeros(7), 1) == pytest.approx(np.mean(lat.min() / lat))


def test_ranks_held_out_candidates(records):
    split = {}
    for name, t in records.items():
        order = np.random.default_rng(0).permutation(np.flatnonzero(t.valid))
        split[name] = (t.subset(order[::2]), t.subset(order[1::2]))
    model = _trained([a for a, _ in split.values()])
    acc = [pairwise_accuracy(b.latency, model.score(b.x)) for _, b in split.values()]
    chance = [pairwise_accuracy(b.latency, np.random.default_rng(1).uniform(size=len(b.latency)))
              for _, b in split.values()]
    assert np.mean(acc) > 0.65, acc  # measured 0.71 (0.72 / 0.64 / 0.77)
    assert np.mean(chance) < 0.55, chance  # 0.49


def test_ranks_a_task_it_never_saw(records):
    held = records["vit_qkv"].subset(np.flatnonzero(records["vit_qkv"].valid))
    model = _trained([t for n, t in records.items() if n != "vit_qkv"])
    score = model.score(held.x)
    assert pairwise_accuracy(held.latency, score) > 0.58  # measured 0.63 (random: 0.5)
    assert top_k_score(held.latency, score, 5) > 0.8  # measured 1.0: its 5 picks hold the best


def test_save_load_round_trip_and_bad_files(records, tmp_path):
    from accelc.schedules.tuning.cost_model import AccelcXGBModel

    model = _trained(records.values())
    path = tmp_path / "m.json"
    model.save(str(path))
    again = AccelcXGBModel()
    again.load(str(path))  # through MetaSchedule's CostModel interface
    x = np.concatenate([t.x for t in records.values()])
    np.testing.assert_array_equal(again.score(x), model.score(x))
    assert again.n_records == model.n_records == sum(len(t.latency) for t in records.values())
    assert json.loads(path.read_text())["booster"]["learner"]  # XGBoost's own JSON inside

    bad = tmp_path / "bad.json"
    for content, message in [(b"\x00\x01 not json", "not JSON"), (b'{"learner": {}}', "no 'accelc.cost_model' header")]:
        bad.write_bytes(content)
        with pytest.raises(ArtifactError, match=message):
            again.read(bad)
    with pytest.raises(Exception, match="not an accelc cost-model file"):  # a TVM error, same line
        again.load(str(bad))
    doc = json.loads(path.read_text())
    doc["feature_names"] = doc["feature_names"][:-1]
    bad.write_text(json.dumps(doc))
    with pytest.raises(ArtifactError, match="retrain it"):
        again.read(bad)
    doc = json.loads(path.read_text())
    doc["booster"]["learner"]["gradient_booster"] = "truncated"
    bad.write_text(json.dumps(doc))
    with pytest.raises(ArtifactError, match="corrupt cost-model file"):
        again.read(bad)
    with pytest.raises(ArtifactError, match="no such cost-model file"):
        AccelcXGBModel(warm_start=tmp_path / "missing.json")


@pytest.mark.parametrize("mode", ["pooled", "continue"])
def test_warm_start_keeps_training_on_the_new_task(records, tmp_path, mode):
    from accelc.schedules.tuning.cost_model import AccelcXGBModel

    others = [t for n, t in records.items() if n != "vit_qkv"]
    base = _trained(others)
    base.save(str(tmp_path / "base.json"))
    new = records["vit_qkv"]
    warm = AccelcXGBModel(warm_start=str(tmp_path / "base.json"), warm_mode=mode)
    np.testing.assert_array_equal(warm.score(new.x), base.score(new.x))  # predicts before any update
    warm.add(_key(new), new.x, new.latency)
    warm.fit()
    assert warm.n_records == base.n_records + len(new.latency)
    rounds = warm.booster.num_boosted_rounds()
    assert rounds == (base.booster.num_boosted_rounds() + warm.rounds // 3 if mode == "continue" else warm.rounds)
    assert not np.array_equal(warm.score(new.x), base.score(new.x))


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
    assert len(db.get_all_tuning_records()) == 8
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


def test_every_benchmark_task_still_exists():
    """The benchmarks' CPU tasks (``dataset.CPU_TASKS``) are MetaSchedule task names, which the
    compiler's fusion decides: when a rule change renames one, ``bench_tuning --target cpu`` and
    the record collection stop at it. (Five went stale unnoticed when the attention GEMMs took
    their layout ops in, 2026-12-06.)"""
    from accelc.models import minilm
    from accelc.schedules.tuning.dataset import CPU_TASKS, select_tasks
    from accelc.targets.cpu import host_target

    spec = [t for t in CPU_TASKS if t[1] != "minilm-l6" or minilm.available()]
    got = select_tasks(host_target(num_cores=1), spec=spec)
    assert [label for label, _ in got] == [t[0] for t in spec]
    assert all(task.dispatched for _, task in got)


def test_training_pool_never_holds_a_benchmark_task():
    """The stored pool (``benchmarks/data/costmodel-pool``) trains models that are judged on the
    benchmark's tasks (``benchmarks/data/costmodel``): no pool workload may equal a benchmark
    workload, or a held-out task would have been seen in training."""
    import tvm_ffi

    from accelc.benchmarks.bench_cost_model import DATA, DATA_POOL
    from accelc.schedules.tuning import dataset

    def workloads(data_dir):
        out = {}
        for name in dataset.task_names(data_dir):
            (rec, *_) = dataset.open_database(data_dir / name).get_all_tuning_records()
            out[name] = str(tvm_ffi.structural_hash(rec.workload.mod))
        return out

    bench, pool, fresh = workloads(DATA), workloads(DATA_POOL), workloads(dataset.FRESH)
    assert len(bench) == 16 and len(pool) == 106 and len(fresh) == len(dataset.FRESH_TASKS) == 13
    assert not set(bench.values()) & set(pool.values())
    assert len(set(pool.values())) == len(pool)  # no task twice in the pool either
    # the fresh held-out set judges models trained on both: none of its tasks is in either
    assert not set(fresh.values()) & (set(bench.values()) | set(pool.values()))
    assert len(set(fresh.values())) == len(fresh)


def test_every_fresh_task_still_exists():
    """The fresh held-out set's task names (``dataset.FRESH_TASKS``) resolve in today's
    compiler, so ``bench_cost_model --fresh --collect`` can collect them again."""
    from accelc.schedules.tuning.dataset import FRESH_TASKS, fresh_tasks
    from accelc.targets.cpu import host_target

    got = fresh_tasks(host_target(num_cores=1))
    assert [label for label, _ in got] == [t[0] for t in FRESH_TASKS]


def test_fresh_set_fits_each_model_once_and_scores_every_task(tmp_path):
    """``bench_cost_model.fresh_set``: one fit per model, each test task scored by it; the same
    scores as fitting per task, and ours ranks a task it never saw better than chance."""
    from pathlib import Path

    from accelc.benchmarks import bench_cost_model as bcm

    data = Path(__file__).parent / "data" / "costmodel"  # bert_dense, minilm_fc2, vit_qkv
    tasks = {t.name: t for t in bcm.load(data)}
    train, tests = [tasks["bert_dense"], tasks["minilm_fc2"]], [tasks["vit_qkv"], tasks["minilm_fc2"]]
    calls = []

    def counted(tr, te):
        calls.append(len(te))
        return bcm.ours(tr, te)

    table = bcm.fresh_set(train, tests, {"ours": counted, "random": bcm.random_model}, lambda *_: None)
    assert calls == [2] and set(table["ours"]) == {"vit_qkv", "minilm_fc2"}
    held = tasks["vit_qkv"].subset(np.flatnonzero(tasks["vit_qkv"].valid))
    _, (alone,) = bcm.ours(train, [held])
    assert table["ours"]["vit_qkv"]["pairwise"] == pytest.approx(bcm.pairwise_accuracy(held.latency, alone))
    assert table["ours"]["vit_qkv"]["pairwise"] > 0.58  # chance is 0.5; measured value printed by a failure
    assert table["ours"]["minilm_fc2"]["pairwise"] > table["ours"]["vit_qkv"]["pairwise"]  # trained on it
    assert 0.45 < table["random"]["vit_qkv"]["pairwise"] < 0.55
    with pytest.raises(UsageError, match="--fresh"):
        bcm.main(["--fresh", "--target", "sim"])


def test_retime_times_every_candidate_interleaved_and_keeps_failures(tmp_path, monkeypatch):
    """``dataset.retime``: the same traces, every valid candidate timed ``rounds x runs`` times,
    round-robin (a candidate's visits are spread over the whole timing, not back to back), the
    failed ones kept failed, the new target recorded; a finished task is not timed again."""
    import tvm
    from tvm.s_tir import meta_schedule as ms

    from accelc.schedules.tuning import dataset
    from accelc.targets import cpu

    src = dataset.open_database(DATA / "bert_dense")
    recs = list(src.get_all_tuning_records())[:4]
    small = tmp_path / "src" / "bert_dense"
    small.mkdir(parents=True)
    db = ms.database.JSONDatabase(work_dir=str(small))
    wl = db.commit_workload(recs[0].workload.mod)
    for i, rec in enumerate(recs):
        secs = [dataset.FAILED_SECS] if i == 2 else rec.run_secs
        db.commit_tuning_record(ms.database.TuningRecord(rec.trace, wl, secs, rec.target, rec.args_info))
    del db

    order, loaded = [], []  # the visit order; one entry per loaded module
    real_load = tvm.runtime.load_module

    def load(path):  # tag each loaded module's timer with its candidate, to see the visit order
        mod = real_load(path)
        index = len(loaded)
        loaded.append(index)
        real_timer = mod.time_evaluator

        def timer(*a, **kw):
            inner = real_timer(*a, **kw)
            return lambda *args: (order.append(index), inner(*args))[1]

        return type("M", (), {"entry_name": mod.entry_name, "time_evaluator": staticmethod(timer)})()

    monkeypatch.setattr(tvm.runtime, "load_module", load)
    target = cpu.host_target()
    assert dataset.retime(small, tmp_path / "out", target=target, rounds=3, runs=2, log=lambda *_: None) == 4
    got = {str(r.trace): r for r in dataset.open_database(tmp_path / "out" / "bert_dense").get_all_tuning_records()}
    got = [got[str(r.trace)] for r in recs]  # the same traces (the database orders them by speed)
    assert [len(r.run_secs) for r in got] == [6, 6, 1, 6]
    assert float(got[2].run_secs[0]) == dataset.FAILED_SECS
    assert all(0 < float(s) < 1 for i in (0, 1, 3) for s in got[i].run_secs)
    assert {str(r.target) for r in got} == {str(target)}
    visits = order[3:]  # after one warm-up call each: 3 rounds over the 3 valid candidates
    assert len(visits) == 9 and all(sorted(visits[r * 3:r * 3 + 3]) == [0, 1, 2] for r in range(3))

    import accelc.schedules.tuning as tuning

    monkeypatch.setattr(tuning, "local_builder", lambda *a, **k: pytest.fail("a finished task was built again"))
    assert dataset.retime(small, tmp_path / "out", target=target, log=lambda *_: None) == 4
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no temporary left


def test_sim_records_load_in_a_fresh_process():
    """The sim records' traces name the sim machine's tensor intrinsics; a process that has not
    registered them must still read the records (``bench_cost_model --target sim`` without
    ``--collect`` once failed with "TensorIntrin 'accel_gemm_32x32x32' is not registered")."""
    import subprocess
    import sys

    code = ("from accelc.benchmarks.bench_cost_model import DATA_SIM\n"
            "from accelc.schedules.tuning import dataset\n"
            "t = dataset.load_task(DATA_SIM / 'deit_fc1')\n"
            "print(len(t.candidates), int(t.valid.sum()))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    n, valid = map(int, out.stdout.split())
    assert n == 96 and valid >= 2
