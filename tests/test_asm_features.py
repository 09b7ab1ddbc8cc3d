"""The cost model's assembly stage (``xgb-asm``): the x86 reader on hand-written and on LLVM's own
code, the model that ranks with and without the assembly group and keeps it across save/load,
and the search wrapper that re-ranks a proposal four times the batch by it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tvm

from accelc.errors import ArtifactError, UsageError
from accelc.schedules.tuning import asm_features as A
from accelc.tests.test_cost_model import _matmul

ROCKETLAKE = {"kind": "llvm", "mcpu": "rocketlake", "num-cores": 2}

LOOP = """
	.type	main_compute_,@function
main_compute_:
	.cfi_startproc
	vxorps	%xmm0, %xmm0, %xmm0
.LBB0_1:
	vbroadcastss	(%rdi,%rax,4), %zmm1
	vfmadd231ps	(%rsi), %zmm1, %zmm2
	vfmadd231ps	64(%rsi), %zmm1, %zmm3
	vmovups	%zmm4, -64(%rsp)
	addq	$1, %rax
	cmpq	$64, %rax
	jne	.LBB0_1
	vfmadd231ss	(%rdx), %xmm5, %xmm6
	retq
.Lfunc_end0:
	.type	__tvm_set_raised_6,@function
__tvm_set_raised_6:
	vfmadd231ss	(%rdx), %xmm5, %xmm6
	retq
"""


def _value(feats, name):
    return float(feats[A.ASM_NAMES.index(name)])


def test_reader_counts_a_hand_written_loop():
    """One loop of seven instructions: two zmm multiply-adds, a broadcast, a spill; one scalar
    multiply-add after it; an error path (``__tvm_set_raised_*``) is not the kernel's and is not
    read (the FFI wrapper ``__tvm_ffi_main`` is: a kernel with no parallel loop is inlined there)."""
    f = A.features(LOOP)
    assert _value(f, "asm_loops") == 1 and _value(f, "asm_max_loop_depth") == 1
    assert _value(f, "asm_inner_n") == pytest.approx(np.log1p(7))
    assert _value(f, "asm_inner_vfma_z") == pytest.approx(np.log1p(2))
    assert _value(f, "asm_inner_sfma") == 0 and _value(f, "asm_all_sfma") == pytest.approx(np.log1p(1))
    assert _value(f, "asm_inner_stack") == pytest.approx(np.log1p(1))  # the spill
    assert _value(f, "asm_inner_store") == pytest.approx(np.log1p(1))
    assert _value(f, "asm_inner_load") == pytest.approx(np.log1p(3))  # broadcast + two folded loads
    assert _value(f, "asm_vec_fma_frac") == 1.0 and _value(f, "asm_zmm_frac") == 1.0
    assert _value(f, "asm_stack_per_fp") == 0.5 and _value(f, "asm_lanes_per_ins") == pytest.approx(32 / 7)
    # the loop weighs 4x in the depth-weighted counts: 7 inside, 2 before and after
    assert _value(f, "asm_depth_n") == pytest.approx(np.log1p(7 * 4 + 3))


LAMBDA = """
	.type	.L__tvm_parallel_lambda,@function
.L__tvm_parallel_lambda:
	xorl	%esi, %esi
.LBB4_1:
	vfmadd231ps	%zmm1, %zmm2, %zmm3
	incq	%rsi
	cmpq	$384, %rsi
	jne	.LBB4_1
	movq	$-24, %rax
.LBB4_2:
	vaddps	%zmm1, %zmm2, %zmm3
	addq	$2, %rax
	jne	.LBB4_2
	movl	$4, %ecx
.LBB4_3:
	cmpl	$10, %ecx
	je	.LBB4_4
	vmulss	%xmm1, %xmm2, %xmm3
	incl	%ecx
	jmp	.LBB4_3
.LBB4_4:
	movb	$1, %bl
.LBB4_5:
	vmaxps	%zmm1, %zmm2, %zmm3
	testb	$1, %bl
	movl	$0, %ebx
	jne	.LBB4_5
.LBB4_6:
	vfmadd231ss	%xmm1, %xmm2, %xmm3
	cmpl	%eax, %edx
	jne	.LBB4_6
	retq
.Lfunc_end4:
"""


def test_trip_counts_read_from_the_loop_code():
    """Each loop form LLVM emits for TVM's loops, with its trip count: a compare with an
    immediate before the back edge (384), a counter running up to zero from -24 by 2 (12), a
    rotated loop whose exit test is at the top (10 - 4 = 6), the two-pass loop over a bool (2),
    and a runtime bound (``UNKNOWN_TRIP`` in a parallel lambda, 1 elsewhere)."""
    f = A.features(LAMBDA)
    assert _value(f, "asm_dyn_vfma_z") == pytest.approx(np.log1p(384))
    assert _value(f, "asm_dyn_varith") == pytest.approx(np.log1p(12 + 2))  # vaddps x12, vmaxps x2
    assert _value(f, "asm_dyn_sarith") == pytest.approx(np.log1p(6))
    assert _value(f, "asm_dyn_sfma") == pytest.approx(np.log1p(A.UNKNOWN_TRIP))
    assert _value(f, "asm_dyn_known_trip_frac") == pytest.approx(4 / 5)
    assert _value(f, "asm_dyn_hot_weight") == pytest.approx(np.log1p(384))
    serial = A.features(LAMBDA.replace(".L__tvm_parallel_lambda", "main_compute_"))
    assert _value(serial, "asm_dyn_sfma") == pytest.approx(np.log1p(1))
    # the hand-written loop above: 64 trips of seven instructions, three outside
    loop = A.features(LOOP)
    assert _value(loop, "asm_dyn_n") == pytest.approx(np.log1p(64 * 7 + 3))
    assert _value(loop, "asm_dyn_vfma_z") == pytest.approx(np.log1p(128))


def _vectorized():
    sch = tvm.s_tir.Schedule(_matmul())
    blk = sch.get_sblock("C")
    i, j, k = sch.get_loops(blk)
    j0, j1 = sch.split(j, [None, 16])
    sch.reorder(i, j0, k, j1)
    sch.vectorize(j1)
    sch.decompose_reduction(blk, k)
    return sch.mod


def test_llvm_code_of_a_vectorized_and_a_scalar_matmul():
    """The pinned LLVM's own output: the j-vectorized matmul multiplies-adds 16 lanes at a time
    in zmm registers inside its innermost loop, the untouched i, j, k nest one lane at a time."""
    target = tvm.target.Target(ROCKETLAKE)
    vec = A.features(A.assembly(_vectorized(), target))
    scalar = A.features(A.assembly(tvm.IRModule({"main": _matmul()}), target))
    assert _value(vec, "asm_vec_fma_frac") == 1.0 and _value(vec, "asm_zmm_frac") == 1.0
    assert _value(scalar, "asm_vec_fma_frac") == 0.0 and _value(scalar, "asm_inner_sfma") > 0
    # the trip counts read from the code give the exact dynamic multiply-adds: 64^3 / 16 and 64^3
    assert _value(vec, "asm_dyn_vfma_z") == pytest.approx(np.log1p(64 ** 3 / 16))
    assert _value(scalar, "asm_dyn_sfma") == pytest.approx(np.log1p(64 ** 3)) and _value(scalar, "asm_dyn_vfma_z") == 0
    assert _value(vec, "asm_lanes_per_ins") > 4 * _value(scalar, "asm_lanes_per_ins")
    assert A.assembly("not a module", target) is None


@pytest.fixture(scope="module")
def small_records():
    """16 records of each test task, with their features and their assembly features."""
    from accelc.benchmarks.bench_cost_model import _as, load
    from accelc.schedules.tuning.dataset import TaskRecords

    out = {}
    for t in load(tvm_data()):
        idx = np.flatnonzero(t.valid)[:16]
        s = t.subset(idx)
        s.x = _as(s.x)
        s.asm = A.AsmFeatures().extract(t.context, s.candidates)
        assert isinstance(s, TaskRecords) and not np.isnan(s.asm).any()
        out[t.name] = s
    return out


def tvm_data():
    from pathlib import Path

    return Path(__file__).parent / "data" / "costmodel"


def test_xgb_asm_ranks_with_and_without_the_assembly_and_round_trips(small_records, tmp_path):
    from tvm.s_tir.meta_schedule.utils import shash2hex

    from accelc.schedules.tuning.cost_model import AccelcXGBModel, make_cost_model

    model = make_cost_model("xgb-asm")
    assert model.asm is not None and model.n_features == AccelcXGBModel().n_features + len(A.ASM_NAMES)
    for t in small_records.values():
        model.add(shash2hex(t.context.mod), np.hstack([t.x, t.asm]), t.latency)
    model.fit()
    plain = AccelcXGBModel()  # populations are ranked by the plain model's booster
    for t in small_records.values():
        plain.add(shash2hex(t.context.mod), t.x, t.latency)
    plain.fit()
    t = small_records["vit_qkv"]
    built, population = model.rerank(t.context, t.candidates), model.predict(t.context, t.candidates)
    assert built.shape == population.shape == (16,)
    assert not np.allclose(built, population)  # the assembly group moves the scores
    np.testing.assert_allclose(population, plain.predict(t.context, t.candidates), rtol=1e-6)
    # the assembly booster: deeper trees at half the learning rate over twice the rounds (ASM_PARAMS)
    cfg = json.loads(model.asm_booster.save_config())["learner"]["gradient_booster"]
    assert (model.asm_booster.num_boosted_rounds(), model.booster.num_boosted_rounds()) == (800, 400)
    assert cfg["tree_train_param"]["max_depth"] == "5" and float(cfg["tree_train_param"]["eta"]) == pytest.approx(0.025)
    np.testing.assert_allclose(built, model.score(np.hstack([t.x, t.asm])), rtol=1e-6)
    np.testing.assert_allclose(population, model.score(np.hstack([t.x, np.full_like(t.asm, np.nan)])), rtol=1e-6)
    # a row without assembly (did not build) is scored by the population booster, the rest by the other
    mixed = np.hstack([t.x, t.asm])
    mixed[:4, -len(A.ASM_NAMES):] = np.nan
    np.testing.assert_allclose(model.score(mixed), np.r_[population[:4], built[4:]], rtol=1e-6)
    model.save(str(tmp_path / "m.json"))
    again = AccelcXGBModel(asm=True)
    again.load(str(tmp_path / "m.json"))
    np.testing.assert_array_equal(again.rerank(t.context, t.candidates), built)
    np.testing.assert_array_equal(again.predict(t.context, t.candidates), population)
    doc = json.loads((tmp_path / "m.json").read_text())
    doc["asm_booster"] = None  # trees for populations only: not an xgb-asm model file
    (tmp_path / "half.json").write_text(json.dumps(doc))
    with pytest.raises(ArtifactError, match="half.json: corrupt cost-model file .one of its two boosters"):
        AccelcXGBModel(asm=True).read(tmp_path / "half.json")
    with pytest.raises(ArtifactError, match="retrain it"):  # a plain xgb model has no such group
        AccelcXGBModel().read(tmp_path / "m.json")
    assert AccelcXGBModel().rerank(t.context, t.candidates) is None
    with pytest.raises(UsageError, match="needs -t cpu"):
        make_cost_model("xgb-asm", target_kind="sim")


def test_search_reranks_four_batches_and_keeps_the_rest_unmeasured():
    """With ``rerank`` the wrapper asks EvolutionarySearch for four times the batch and sends the
    batch the re-ranker scores highest; the proposals it did not send stay unknown, so a later
    round may send them."""
    import tvm_ffi
    from tvm.s_tir import meta_schedule as ms

    from accelc.compiler.frontend import import_onnx
    from accelc.schedules.tuning import driver, load_intrinsics
    from accelc.targets import cpu
    from accelc.tests.util import mlp_model

    load_intrinsics("llvm")
    target = cpu.host_target()
    task = next(t for t in driver.relax_tasks(import_onnx(mlp_model(batch=8)).mod, target,
                                              driver._cpu_front_passes(target), driver._not_a_named_kernel)
                if "matmul_add_relu" in t.name)
    skip_measured, _ = driver._classes()
    seen = []

    def rerank(context, cands):
        assert context.mod is not None
        seen.extend(tvm_ffi.structural_hash(c.sch.mod) for c in cands)
        return np.array([tvm_ffi.structural_hash(c.sch.mod) % 1000 for c in cands], float)

    known, stats = set(), {"skipped": 0}
    strategy = skip_measured(8, 2, known, stats, rerank=rerank)
    ctx = ms.TuneContext(mod=task.mod, target=target, space_generator="post-order-apply",
                         search_strategy=strategy, rand_state=5, num_threads=1)
    strategy.pre_tuning(8, 2, ctx.space_generator.generate_design_space(task.mod), ms.database.MemoryDatabase(),
                        ms.cost_model.RandomModel(seed=1))
    sent = strategy.generate_measure_candidates()
    assert len(seen) == 8 and len(set(seen)) == 8  # four batches of two, all distinct
    got = [tvm_ffi.structural_hash(c.sch.mod) for c in sent]
    assert sorted(got) == sorted(sorted(seen, key=lambda h: -(h % 1000))[:2])
    assert known == set(got) and stats["reranked"] == 8


def test_operands_split_outside_memory_references():
    """A memory operand's ``(base,index,scale)`` is one operand: a loop whose counter lives in
    an indexed stack slot is read (16 trips), and a multiply-add with a memory source keeps its
    three operands."""
    assert A._ops("vfmadd231ps (%rdi,%rax,4), %zmm1, %zmm2") == (
        "vfmadd231ps", ["(%rdi,%rax,4)", "%zmm1", "%zmm2"])
    assert A._ops("retq") == ("retq", [])
    body = ["movq $0, 8(%rsp,%rbx,8)",
            "vaddps %zmm0, %zmm1, %zmm1",
            "addq $2, 8(%rsp,%rbx,8)",
            "cmpq $32, 8(%rsp,%rbx,8)",
            "jne .LBB0_1"]
    assert A.trip_count(body, 1, 4) == 16


def test_shipped_assembly_features_cover_every_stored_record_and_match_a_build(tmp_path, monkeypatch):
    """``dataset.SHIPPED_ASM`` holds the assembly features of every record of the benchmark, the
    pool and the fresh set, keyed so that ``load_asm_features`` finds them without building;
    a task's rows equal those built now; a file of another TVM or feature version is ignored."""
    from accelc.schedules.tuning import dataset

    shipped = dataset._shipped_asm()
    want = {}
    for d in dataset.BUNDLED + (dataset.FRESH,):
        for t in dataset.load_all(d):
            want[dataset._asm_key(d, t)] = len(t.candidates)
    assert len(want) == 16 + 106 + 13
    assert {k: len(v) for k, v in shipped.items()} == want
    tasks = dataset.load_all(dataset.FRESH, only=["fresh_vit_qkv"])
    monkeypatch.setattr(dataset, "CACHE", tmp_path)  # nothing cached: the rows come from the file
    monkeypatch.setattr(dataset, "_asm_of_task", lambda *_: pytest.fail("built a shipped task"))
    dataset.load_asm_features(dataset.FRESH, tasks, log=lambda *_: pytest.fail("said it builds"))
    t = tasks[0]
    idx = np.flatnonzero(t.valid)[:6]
    built = A.AsmFeatures().extract(t.context, [t.candidates[i] for i in idx])
    np.testing.assert_array_equal(built, t.asm[idx])
    dataset._shipped_asm.cache_clear()
    monkeypatch.setattr(dataset, "_asm_stamp", lambda: "tvm 0.0, assembly features v0")
    try:
        assert dataset._shipped_asm() == {}
    finally:
        dataset._shipped_asm.cache_clear()
