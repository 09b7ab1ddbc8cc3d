"""Measured schedule records for training and judging cost models.

A cost model is only as good as what it learned from, and it is only judged honestly on tasks
it never saw. This module collects real measurements for a fixed list of tuning tasks taken from
the model zoo (candidates sampled by MetaSchedule's evolutionary search under a random cost
model, built with ``local_builder()`` and timed by ``LocalRunner``), times them again
interleaved (``retime``: all of a task's candidates round-robin, fastest of 30 single runs each;
the shipped records are timed this way), keeps them as stock MetaSchedule JSON databases (one
per task, gzipped for the repository), and turns them back into ``(TuneContext,
MeasureCandidate, latency)`` triples that any ``CostModel`` can be fed.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...errors import UsageError

#: The benchmark's tasks: (label, zoo model, MetaSchedule task name). Chosen for variety (dense
#: and batched matmuls with fused epilogues, convolutions, reductions) at 3-80 MFLOP, so even a
#: bad schedule runs in milliseconds. The names follow the compiler: since 2026-12-06 the
#: attention GEMMs carry their layout producers and consumers (reshape/transpose, the constant
#: ``take``), so five labels name the fused tasks now; the records under
#: ``benchmarks/data/costmodel/`` were collected from the unfused ones (the records hold their
#: own workloads, so the cost-model benchmark reads them unchanged). Likewise the ResNet convs
#: since their BatchNorms fold into the weights (``targets/graph_opt.py``): conv + bias (+ ReLU).
CPU_TASKS = (
    ("vit_fc1_gelu", "deit-tiny", "fused_matmul4_add4_divide_fast_erf_add5_multiply1_multiply21"),
    ("vit_qkv", "deit-tiny", "fused_matmul_add2_fused_reshape2_transpose51"),
    ("vit_scores", "deit-tiny", "take_const1_fused_take_const_transpose6_fused_matmul1_multiply1"),
    ("vit_attn_v", "deit-tiny", "matmul2_fused_transpose7_reshape31"),
    ("resnet_conv3x3", "resnet-small", "fused_conv2d1_add1_relu11"),
    # softmax over rows longer than a vector (deit-tiny's 197, bert-encoder's 128) is a
    # written-out kernel now (schedules/softmax.py), not a tuning task; the records of
    # deit-tiny's (benchmarks/data/costmodel/vit_softmax) stay a held-out task
    ("bert_dense", "bert-encoder", "fused_matmul_add31"),
    ("resnet_conv1x1_s2", "resnet-small", "fused_conv2d7_add51"),
    ("gpt2_scores_causal", "gpt2-like", "fused_reshape_transpose_fused_matmul1_divide_where11"),
    ("vit_layernorm", "deit-tiny", "layer_norm1"),
    ("minilm_fc2", "minilm-l6", "fused_matmul3_add3_add21"),
    ("resnet_maxpool", "resnet-small", "max_pool2d1"),
    ("vit_patch_conv", "deit-tiny", "fused_conv2d_add1"),
    ("bert_scores_mask", "bert-encoder", "fused_reshape_transpose1_fused_matmul1_divide_add41"),
    ("gpt2_fc1_tanh", "gpt2-like",
     "fused_matmul3_add4_power_multiply_add5_multiply1_fast_tanh_multiply2_add6_multiply31"),
    ("resnet_conv3x3_s2", "resnet-small", "fused_conv2d5_add5_relu31"),
)

#: The training pool: the zoo's architectures at other sizes (one block each), whose tasks
#: only ever *train* a model (``bench_cost_model --pool``), never judge one. Their tasks are
#: the same kinds as the benchmark's at other shapes, as a user's tuning-record library would
#: hold; a task structurally equal to a benchmark task (or to an earlier pool task) is skipped.
POOL_VARIANTS = {
    "vit160": ("vit", {"image": 160, "dim": 256, "heads": 4, "depth": 1}),
    "vit224p32": ("vit", {"image": 224, "patch": 32, "dim": 320, "heads": 5, "depth": 1}),
    "bert256": ("bert", {"hidden": 256, "heads": 4, "intermediate": 1024, "seq": 96, "layers": 1}),
    "bert512": ("bert", {"hidden": 512, "heads": 8, "intermediate": 2048, "seq": 48, "layers": 1}),
    "gpt256": ("gpt2", {"dim": 256, "heads": 4, "seq": 96, "layers": 1}),
    "res160": ("resnet", {"image": 160, "widths": (24, 48, 96, 192)}),
    "res112": ("resnet", {"image": 112, "widths": (48, 96, 192, 384)}),
    "vit96p8": ("vit", {"image": 96, "patch": 8, "dim": 192, "heads": 3, "depth": 1}),
    "bert384s64": ("bert", {"hidden": 384, "heads": 6, "intermediate": 1536, "seq": 64, "layers": 1}),
    "gpt512": ("gpt2", {"dim": 512, "heads": 8, "seq": 32, "layers": 1}),
    "res96": ("resnet", {"image": 96, "widths": (16, 32, 64, 128)}),
}
#: A second, fresh held-out set (``bench_cost_model --fresh``): 13 tasks of the zoo's
#: architectures at sizes in neither the benchmark nor the pool, one task per kind and model as
#: in ``CPU_TASKS``, picked from their task lists by name and frozen (2026-12-07) after the
#: cost model's features (CPU version 7, assembly version 3) and parameters were final. Every
#: choice of those was judged on ``CPU_TASKS``; none was ever judged on these, so they test a
#: trained model the way a user's new model does. Collected on the host that ran
#: ``--fresh --collect`` (an AMD Zen 4), while the benchmark's and the pool's records were timed
#: on an Intel AVX-512 host: a transfer across machines as well as tasks, as with the bundled
#: warm start.
FRESH_VARIANTS = {
    "vit128d384": ("vit", {"image": 128, "patch": 16, "dim": 384, "heads": 6, "depth": 1}),
    "bert192s80": ("bert", {"hidden": 192, "heads": 3, "intermediate": 768, "seq": 80, "layers": 1}),
    "gpt384s40": ("gpt2", {"dim": 384, "heads": 6, "seq": 40, "layers": 1}),
    "res128": ("resnet", {"image": 128, "widths": (40, 80, 160, 320)}),
}
FRESH_TASKS = (
    ("fresh_vit_fc1_gelu", "vit128d384", "fused_matmul4_add4_divide_fast_erf_add5_multiply1_multiply21"),
    ("fresh_vit_qkv", "vit128d384", "fused_matmul_add2_fused_reshape2_transpose51"),
    ("fresh_vit_scores", "vit128d384", "take_const1_fused_take_const_transpose6_fused_matmul1_multiply1"),
    ("fresh_vit_layernorm", "vit128d384", "layer_norm1"),
    ("fresh_vit_patch_conv", "vit128d384", "fused_conv2d_add1"),
    ("fresh_bert_fc1_erf", "bert192s80", "fused_matmul3_add5_divide1_fast_erf_add6_multiply1_multiply21"),
    ("fresh_bert_scores_mask", "bert192s80",
     "fused_reshape_transpose1_fused_expand_dims_expand_dims1_cast_subtract_matmul1_divide_multiply_add41"),
    ("fresh_bert_attn_v", "bert192s80", "matmul2_fused_transpose2_reshape11"),
    ("fresh_gpt2_fc1_tanh", "gpt384s40",
     "fused_matmul4_add4_power_multiply_add5_multiply1_fast_tanh_multiply2_add6_multiply31"),
    ("fresh_gpt2_scores_causal", "gpt384s40",
     "fused_reshape_transpose_fused_reshape_transpose1_fused_matmul1_divide_where11"),
    ("fresh_resnet_conv3x3", "res128", "fused_conv2d1_add1_relu11"),
    ("fresh_resnet_conv1x1_s2", "res128", "fused_conv2d7_add51"),
    ("fresh_resnet_maxpool", "res128", "max_pool2d1"),
)

#: Pool tasks worth a cost model's time: at least this much work (layout-only tasks are skipped)
#: and at most this much (so a bad candidate still runs in well under a second).
POOL_MFLOP = (0.2, 120.0)

_DB_FILES = ("database_workload.json", "database_tuning_record.json")
#: Records shipped with accelc (package data): the cost-model benchmark's 16 zoo tasks and the
#: training pool (``bench_cost_model``), measured on an AVX-512 host at 2 threads.
BUNDLED = tuple(Path(__file__).resolve().parents[2] / "benchmarks" / "data" / d
                for d in ("costmodel", "costmodel-pool"))
#: The fresh held-out set's records (``FRESH_TASKS``); never trained on, so not in ``BUNDLED``.
FRESH = Path(__file__).resolve().parents[2] / "benchmarks" / "data" / "costmodel-fresh"
#: The assembly features of every record in ``BUNDLED`` and ``FRESH``, as ``load_asm_features``
#: computes them with the pinned TVM (``pack_asm_features``): the first ``xgb-asm`` warm start
#: or ``bench_cost_model --asm`` reads them instead of building ~6,000 candidates (about 8
#: minutes on two cores). Rows of another TVM or assembly-feature version are not used.
SHIPPED_ASM = FRESH.parent / "costmodel-asm.npz"
CACHE = Path(os.path.expanduser("~/.cache/accelc/costmodel"))
FAILED_SECS = 1e10  # what MetaSchedule records for a candidate that did not build or run


@dataclass
class TaskRecords:
    """One task's measured candidates: ``latency[i]`` (seconds) belongs to ``candidates[i]``."""

    name: str
    context: object  # TuneContext (mod = the workload, target)
    candidates: list = field(default_factory=list)  # MeasureCandidate
    latency: np.ndarray = field(default_factory=lambda: np.zeros(0))
    run_secs: list = field(default_factory=list)  # every repeat, for noise estimates
    x: np.ndarray | None = None  # per-candidate features, when a caller computed them
    asm: np.ndarray | None = None  # per-candidate assembly features (``load_asm_features``)

    @property
    def valid(self) -> np.ndarray:
        return self.latency < FAILED_SECS / 10

    def subset(self, idx) -> "TaskRecords":
        idx = np.asarray(idx)
        return TaskRecords(self.name, self.context, [self.candidates[i] for i in idx], self.latency[idx],
                           [self.run_secs[i] for i in idx], None if self.x is None else self.x[idx],
                           None if self.asm is None else self.asm[idx])

    def runner_results(self) -> list:
        from tvm.s_tir.meta_schedule.runner import RunnerResult

        return [RunnerResult([float(s) for s in secs] if lat < FAILED_SECS / 10 else None,
                             None if lat < FAILED_SECS / 10 else "failed")
                for secs, lat in zip(self.run_secs, self.latency)]


def extract_tasks(model, target) -> list:
    """MetaSchedule's tasks of a zoo model (a name, or an ONNX ``ModelProto``), after the CPU
    target's front passes, attention left unfused: the benchmark's tasks and the training
    pool were taken before softmax attention became one written-out kernel (2026-12-07), and
    its GEMMs (Q·Kᵀ with its mask, P·V) stay tuning tasks wherever that kernel does not apply
    (exact math, int8 or fp16 attention, a head dim of no whole vectors)."""
    import tvm
    from tvm.s_tir import meta_schedule as ms

    from ... import models
    from ...compiler.frontend import import_onnx
    from ...targets import cpu

    mod = import_onnx(models.build(model) if isinstance(model, str) else model).mod
    with target:
        fused = tvm.transform.Sequential(cpu.front_passes(target, fused_attention=False))(mod)
    return list(ms.relax_integration.extract_tasks(fused, target))


def pool_tasks(target, only: list[str] | None = None) -> list[tuple[str, object]]:
    """``[(label, ExtractedTask)]`` of the training pool (``POOL_VARIANTS``): every task of each
    variant that ``accelc tune`` would tune, within ``POOL_MFLOP``, and structurally unlike
    every benchmark task and every earlier pool task. Labels are ``<variant>.<task name>``."""
    import tvm_ffi
    from tvm.s_tir.analysis import estimate_tir_flops

    seen = {str(tvm_ffi.structural_hash(t.dispatched[0])) for _, t in select_tasks(target)}
    out = []
    for variant in POOL_VARIANTS:
        for task in extract_tasks(_variant_model(POOL_VARIANTS, variant), target):
            func = task.dispatched[0]
            key = str(tvm_ffi.structural_hash(func))
            mflop = float(estimate_tir_flops(func)) / 1e6
            label = f"{variant}.{task.task_name}"
            # written-out kernels are not filtered out: the stored pool was collected with a
            # test of the task IRModule's attributes, which never hold the function's
            # ``tirx.is_scheduled``, so its 7 ``softmax_rows1`` tasks are in it (kept, for the
            # pool to stay reproducible; ``driver.written_out`` is the right test)
            if (not POOL_MFLOP[0] <= mflop <= POOL_MFLOP[1]
                    or key in seen or (only is not None and label not in only)):
                continue
            seen.add(key)
            out.append((label, task))
    return out


def _variant_model(variants: dict, name: str):
    """The ONNX model of a pool or fresh variant (one block of a zoo architecture)."""
    from ...models import bert, gpt2, resnet, vit

    builders = {"vit": (vit.build_vit, vit.ViTConfig), "bert": (bert.build_bert, bert.BertConfig),
                "gpt2": (gpt2.build_gpt2, gpt2.GPT2Config), "resnet": (resnet.build_resnet, resnet.ResNetConfig)}
    module, kwargs = variants[name]
    build, cfg_cls = builders[module]
    return build(cfg_cls(**kwargs))


def fresh_tasks(target, only: list[str] | None = None) -> list[tuple[str, object]]:
    """``[(label, ExtractedTask)]`` of the fresh held-out set (``FRESH_TASKS``)."""
    return select_tasks(target, FRESH_TASKS, only=only,
                        model_of=lambda name: _variant_model(FRESH_VARIANTS, name))


def select_tasks(target, spec=CPU_TASKS, only: list[str] | None = None,
                 model_of=lambda name: name) -> list[tuple[str, object]]:
    """``[(label, ExtractedTask)]`` for the labels of ``spec`` (all, or those in ``only``)."""
    wanted = [s for s in spec if only is None or s[0] in only]
    if only is not None and len(wanted) != len(set(only)):
        unknown = sorted(set(only) - {s[0] for s in spec})
        raise UsageError(f"unknown cost-model task(s) {', '.join(unknown)}; known: "
                         f"{', '.join(s[0] for s in spec)}")
    by_model: dict[str, dict] = {}
    out = []
    for label, model, task_name in wanted:
        if model not in by_model:
            by_model[model] = {t.task_name: t for t in extract_tasks(model_of(model), target)}
        if task_name not in by_model[model]:
            raise UsageError(f"zoo model '{model}' has no task '{task_name}' any more")
        out.append((label, by_model[model][task_name]))
    return out


def measure_runner(repeat: int = 15, timeout_sec: float = 60):
    """``LocalRunner`` for collection: ``repeat`` single runs after a warm-up. On a shared
    machine a run either was preempted or not; the minimum keeps one that was not. (Averaging
    several runs per repeat, TVM's default, lets one preemption spoil every repeat: under load
    the timings of two-thread kernels came out as multiples of the 4 ms scheduler tick.)"""
    from tvm.s_tir import meta_schedule as ms

    cfg = ms.runner.EvaluatorConfig(number=1, repeat=repeat, min_repeat_ms=0, enable_cpu_cache_flush=False)
    return ms.runner.LocalRunner(timeout_sec=timeout_sec, evaluator_config=cfg)


def collect_task(label: str, task, work_dir: Path, trials: int, seed: int = 0,
                 builder=None, runner=None, num_trials_per_iter: int = 32, space="post-order-apply") -> int:
    """Tune ``task`` (an ``ExtractedTask``, or anything with ``dispatched[0]`` and ``target``)
    for ``trials`` more candidates with a random cost model; every measured candidate lands in
    ``work_dir/label`` as a JSON database. Returns its record count."""
    from tvm.s_tir import meta_schedule as ms

    from . import load_intrinsics, local_builder

    if space == "post-order-apply":
        load_intrinsics("llvm")
    out = Path(work_dir) / label
    out.mkdir(parents=True, exist_ok=True)
    # A small population and one genetic round: with a random cost model the full-size
    # evolution (512 x 4 rounds) only burns CPU; this keeps its mix of fresh random samples and
    # mutants of the best measured ones.
    strategy = ms.search_strategy.EvolutionarySearch(population_size=64, init_min_unmeasured=32,
                                                     genetic_num_iters=1)
    ctx = ms.TuneContext(mod=task.dispatched[0], target=task.target, space_generator=space,
                         search_strategy=strategy, task_name=label, rand_state=seed, num_threads="physical")
    db = ms.database.JSONDatabase(work_dir=str(out))
    ms.tune.tune_tasks(tasks=[ctx], task_weights=[1.0], work_dir=str(out), max_trials_global=trials,
                       num_trials_per_iter=num_trials_per_iter, builder=builder or local_builder(),
                       runner=runner or measure_runner(), database=db, cost_model="random",
                       task_scheduler="round-robin")
    return len(db.get_all_tuning_records())


def collect_all(work_dir: Path, target, trials: int = 96, seed: int = 0, only: list[str] | None = None,
                log=print, tasks: list | None = None) -> dict:
    """``collect_task`` for every task of ``CPU_TASKS`` (or ``only``, or the given ``[(label,
    task)]``); a task whose database already holds ``trials`` records is kept, so an
    interrupted collection resumes."""
    work_dir = Path(work_dir)
    info = {}
    for label, task in tasks if tasks is not None else select_tasks(target, only=only):
        have = task_dir_count(work_dir / label)
        t0 = time.perf_counter()
        if have < trials:
            have = collect_task(label, task, work_dir, trials - have, seed=seed + have)
        info[label] = {"records": have, "seconds": round(time.perf_counter() - t0, 1)}
        log(f"{label}: {have} records ({info[label]['seconds']} s)")
    return info


def task_dir_count(task_dir: Path) -> int:
    path = Path(task_dir) / _DB_FILES[1]
    return sum(1 for line in open(path) if line.strip()) if path.is_file() else 0


def retime(task_dir: Path, out_dir: Path, target=None, rounds: int = 10, runs: int = 3, seed: int = 0,
           log=print) -> int:
    """Time every record of ``task_dir`` again, interleaved; the database with the same traces
    and the new timings goes to ``out_dir/<task>``. Returns its record count.

    ``LocalRunner`` times one candidate's repeats back to back, then the next candidate's, so on
    a shared machine whatever load the neighbours put on it during a candidate's second lands on
    that candidate alone: two such timings of the same records an hour apart agreed on 76-88 %
    of pairs (2026-11-23), and on this AVX-512 host one agrees with an interleaved timing on
    94 % (85-99 % per task). Here every candidate is built (for ``target``; default: the
    records' own), all are loaded into this process, and they are timed round-robin: ``rounds``
    passes over all candidates in a fresh random order, ``runs`` single runs per visit. Each
    candidate's minimum is then taken over the same stretch of time as every other's; two
    interleaved timings of a task an hour apart agree on 97-99 % of pairs. Every run is kept
    (``run_secs``).
    Records that failed before, or no longer build, stay failed. The task's database appears
    whole or not at all (a task is the unit of resumption: one already in ``out_dir`` is kept).
    """
    import tvm
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.runner.utils import alloc_argument_common

    from . import local_builder

    records = list(open_database(task_dir).get_all_tuning_records())  # registers the intrinsics too
    dest = Path(out_dir) / Path(task_dir).name
    if task_dir_count(dest) == len(records):
        return len(records)
    target = target or records[0].target
    todo = [i for i, rec in enumerate(records)
            if rec.run_secs and min(float(s) for s in rec.run_secs) < FAILED_SECS / 10]
    inputs = []
    for i in todo:
        sch = tvm.s_tir.Schedule(records[i].workload.mod)
        records[i].trace.apply_to_schedule(sch, remove_postproc=False)
        inputs.append(ms.builder.BuilderInput(sch.mod, target))
    built = dict(zip(todo, local_builder().build(inputs)))
    dev = tvm.cpu()
    fill = tvm.get_global_func("tvm.contrib.random.random_fill_for_measure")
    timers = {}
    try:
        for i, b in built.items():
            if b.error_msg is not None:
                continue
            mod = tvm.runtime.load_module(b.artifact_path)
            args = alloc_argument_common(fill, dev, tuple(a.as_json() for a in records[i].args_info), 1)[0]
            timer = mod.time_evaluator(mod.entry_name, dev, number=1, repeat=runs, min_repeat_ms=0)
            timer(*args)  # the first call of each: pages, caches, the thread pool
            timers[i] = (timer, args, mod)
        secs = {i: [] for i in timers}
        rng = np.random.default_rng(seed)
        for _ in range(rounds):
            for i in rng.permutation(sorted(timers)):
                timer, args, _ = timers[int(i)]
                secs[int(i)].extend(float(s) for s in timer(*args).results)
    finally:
        for b in built.values():
            if b.artifact_path:
                shutil.rmtree(Path(b.artifact_path).parent, ignore_errors=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    tmp.chmod(0o755)
    db = ms.database.JSONDatabase(work_dir=str(tmp))
    workload = db.commit_workload(records[0].workload.mod)
    for i, rec in enumerate(records):
        db.commit_tuning_record(ms.database.TuningRecord(rec.trace, workload, secs.get(i, [FAILED_SECS]), target,
                                                         rec.args_info))
    del db
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    log(f"{dest.name}: {len(timers)} of {len(records)} candidates timed x {rounds * runs}, interleaved")
    return len(records)


def pack(work_dir: Path, out_dir: Path, only: list[str] | None = None, limit: int | None = None) -> None:
    """Gzip the task databases of ``work_dir`` (all, or ``only``; the first ``limit`` records)
    into ``out_dir``: the copy kept in the repository."""
    for task_dir in sorted(p for p in Path(work_dir).iterdir() if (p / _DB_FILES[1]).is_file()):
        if only is not None and task_dir.name not in only:
            continue
        dest = Path(out_dir) / task_dir.name
        dest.mkdir(parents=True, exist_ok=True)
        for name in _DB_FILES:
            lines = (task_dir / name).read_text().splitlines(keepends=True)
            if name == _DB_FILES[1] and limit is not None:
                lines = lines[:limit]
            with gzip.open(dest / f"{name}.gz", "wt", compresslevel=9) as out:
                out.writelines(lines)


def task_names(data_dir: Path) -> list[str]:
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise UsageError(f"cost-model data directory {data_dir} does not exist")
    return sorted(p.name for p in data_dir.iterdir()
                  if (p / _DB_FILES[1]).is_file() or (p / f"{_DB_FILES[1]}.gz").is_file())


def open_database(task_dir: Path):
    """The task's ``JSONDatabase`` (read into memory); gzipped files are unpacked to a
    temporary copy first. Meant for reading: commits to an unpacked copy are lost."""
    from tvm.s_tir import meta_schedule as ms

    task_dir = Path(task_dir)
    _register_intrinsics(task_dir)
    if (task_dir / _DB_FILES[1]).is_file():
        return ms.database.JSONDatabase(path_workload=str(task_dir / _DB_FILES[0]),
                                        path_tuning_record=str(task_dir / _DB_FILES[1]), allow_missing=False)
    with tempfile.TemporaryDirectory(prefix="accelc-db-") as tmp:
        for name in _DB_FILES:
            with gzip.open(task_dir / f"{name}.gz", "rb") as fh, open(Path(tmp) / name, "wb") as out:
                shutil.copyfileobj(fh, out)
        return ms.database.JSONDatabase(path_workload=str(Path(tmp) / _DB_FILES[0]),
                                        path_tuning_record=str(Path(tmp) / _DB_FILES[1]), allow_missing=False)


def _register_intrinsics(task_dir: Path) -> None:
    """Register the tensor intrinsics the task's traces name before the database parses them
    (an unknown intrinsic fails the whole file): the sim machine's when the records target it,
    the CPU's otherwise."""
    from . import load_intrinsics

    path = task_dir / _DB_FILES[1]
    with (open(path, "rt") if path.is_file() else gzip.open(f"{path}.gz", "rt")) as fh:
        first = fh.readline()
    if "accel-sim" in first:
        from ...targets.sim.offload import default_config
        from ...targets.sim.tuning import tuning_components

        tuning_components(default_config())
    else:
        load_intrinsics("llvm")


def load_task(task_dir: Path) -> TaskRecords:
    """Replay every record's trace on its workload: the candidates a cost model scores."""
    import tvm
    from tvm.s_tir import meta_schedule as ms

    db = open_database(task_dir)
    records = list(db.get_all_tuning_records())
    if not records:
        raise UsageError(f"{task_dir}: no tuning records")
    workload = records[0].workload
    target = records[0].target
    ctx = ms.TuneContext(mod=workload.mod, target=target, task_name=Path(task_dir).name)
    cands, lat, secs = [], [], []
    for rec in records:
        sch = tvm.s_tir.Schedule(workload.mod)
        rec.trace.apply_to_schedule(sch, remove_postproc=False)
        run = [float(s) for s in rec.run_secs] if rec.run_secs else [FAILED_SECS]
        cands.append(ms.MeasureCandidate(sch, rec.args_info))
        lat.append(min(run))
        secs.append(run)
    return TaskRecords(Path(task_dir).name, ctx, cands, np.array(lat), secs)


def load_all(data_dir: Path, only: list[str] | None = None) -> list[TaskRecords]:
    names = task_names(data_dir)
    if only:
        missing = sorted(set(only) - set(names))
        if missing:
            raise UsageError(f"{data_dir}: no records for task(s) {', '.join(missing)}")
        names = [n for n in names if n in only]
    return [load_task(Path(data_dir) / n) for n in names]


# -- features and trained models --------------------------------------------------------------
def load_with_features(data_dir: Path, only: list[str] | None = None, kind: str = "llvm") -> list[TaskRecords]:
    """Records of every task, with ``x``: ``AccelcFeatures`` aggregated as "stats" (per-store
    mean, max, min; store count; target features), cached per task under ``CACHE``.
    ``as_model_input`` narrows them to what a model's aggregation takes."""
    from .cost_model import aggregate
    from .features import FEATURE_VERSION, PER_STORE_LENGTH, AccelcFeatures, host_caches

    ext = AccelcFeatures(kind)
    # the cache-traffic features are sized by this host's caches: a cache directory that moves
    # to another machine (a shared home, a copied image) must not hand back the old host's
    tag = hashlib.sha1(json.dumps([FEATURE_VERSION, ext.names, host_caches()]).encode()).hexdigest()[:8]
    tasks = load_all(data_dir, only=only)
    n_target = len(ext.names) - PER_STORE_LENGTH
    for t in tasks:
        path = CACHE / "features" / f"{t.name}-{len(t.candidates)}-{records_hash(t)}-{tag}.npz"
        if path.is_file():
            with np.load(path) as d:
                t.x = d["x"]
            continue
        rows = ext.extract_from(t.context, t.candidates)
        t.x = np.stack([aggregate(r.numpy(), n_target, "stats") for r in rows])
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, x=t.x)
    return tasks


def _asm_of_task(task_dir: str) -> np.ndarray:
    """``asm_features`` of every record of one task, each built for the records' own target
    (the machine that timed them); a process-pool worker."""
    from .asm_features import AsmFeatures

    task = load_task(Path(task_dir))
    return AsmFeatures().extract(task.context, task.candidates)


def load_asm_features(data_dir: Path, tasks: list[TaskRecords], log=print) -> None:
    """Set ``t.asm`` (``asm_features`` of every record) on ``tasks`` of ``data_dir``: every
    candidate built once (about 0.17 s each, in one process per CPU), cached under ``CACHE``."""
    import concurrent.futures as cf

    from .asm_features import ASM_FEATURE_VERSION

    paths = {t.name: CACHE / "asm" / f"{t.name}-{len(t.candidates)}-{records_hash(t)}-v{ASM_FEATURE_VERSION}.npz"
             for t in tasks}
    shipped = _shipped_asm()
    for t in tasks:
        t.asm = shipped.get(_asm_key(data_dir, t))
    todo = [t for t in tasks if t.asm is None and not paths[t.name].is_file()]
    if todo:
        log(f"building {sum(len(t.candidates) for t in todo)} candidates of {len(todo)} tasks for their "
            f"assembly (once; cached in {CACHE / 'asm'})")
        workers = max(1, len(os.sched_getaffinity(0)))
        with cf.ProcessPoolExecutor(workers) as pool:
            futures = {pool.submit(_asm_of_task, str(Path(data_dir) / t.name)): t for t in todo}
            for fut in cf.as_completed(futures):
                t = futures[fut]
                paths[t.name].parent.mkdir(parents=True, exist_ok=True)
                np.savez_compressed(paths[t.name], x=fut.result())
    for t in tasks:
        if t.asm is None:
            with np.load(paths[t.name]) as d:
                t.asm = d["x"]
        if len(t.asm) != len(t.candidates):
            raise UsageError(f"{paths[t.name]}: {len(t.asm)} rows for {len(t.candidates)} records")


def _asm_key(data_dir: Path, task: TaskRecords) -> str:
    return f"{Path(data_dir).name}/{task.name}-{len(task.candidates)}-{records_hash(task)}"


def _asm_stamp() -> str:
    import tvm

    from .asm_features import ASM_FEATURE_VERSION

    return f"tvm {tvm.__version__}, assembly features v{ASM_FEATURE_VERSION}"


@functools.lru_cache(maxsize=1)
def _shipped_asm() -> dict:
    """``SHIPPED_ASM`` as ``{key: rows}``; empty when it is missing or was made by another TVM
    or feature version (the rows are then built again)."""
    if not SHIPPED_ASM.is_file():
        return {}
    with np.load(SHIPPED_ASM) as d:
        if str(d["__stamp__"]) != _asm_stamp():
            return {}
        return {k: d[k] for k in d.files if k != "__stamp__"}


def pack_asm_features(out: Path = SHIPPED_ASM, data_dirs=BUNDLED + (FRESH,), log=print) -> int:
    """Write the assembly features of every record of ``data_dirs`` into ``out`` (one npz,
    stamped with the TVM and feature versions); returns the record count."""
    from ...fileio import atomic_write

    rows = {}
    for d in data_dirs:
        tasks = load_all(d)
        load_asm_features(d, tasks, log)
        rows.update({_asm_key(d, t): t.asm.astype("float32") for t in tasks})

    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez_compressed(f, __stamp__=np.array(_asm_stamp()), **rows)

    atomic_write(Path(out), write)
    _shipped_asm.cache_clear()
    return sum(len(r) for r in rows.values())


def records_hash(task: TaskRecords) -> str:
    return hashlib.sha1(np.asarray(task.latency, "float64").tobytes()).hexdigest()[:8]


def as_model_input(x: np.ndarray, how: str = "mean") -> np.ndarray:
    """"stats"-aggregated features as a model's aggregation wants them."""
    from .features import PER_STORE_LENGTH as P

    return x if how == "stats" else np.hstack([x[:, :P], x[:, 3 * P:]])


def train(tasks: list[TaskRecords], kind: str = "llvm", asm: bool = False):
    """Our XGBoost model fitted on ``tasks`` (with features, and ``asm``: with their assembly
    features too; tasks with < 2 valid records, which rank nothing, are left out)."""
    from tvm.s_tir.meta_schedule.utils import shash2hex

    from .cost_model import AccelcXGBModel

    model = AccelcXGBModel(kind, asm=asm)
    for t in tasks:
        if t.valid.sum() >= 2:
            x = as_model_input(t.x, model.aggregate)
            model.add(shash2hex(t.context.mod), np.hstack([x, t.asm]) if asm else x, t.latency)
    model.fit()
    return model


def bundled_warm_start(log=print, asm: bool = False) -> Path:
    """A saved CPU model trained on every bundled record (``BUNDLED``: 122 tasks, ~4,700
    records), for ``accelc tune --cost-model-warm-start bundled``. Trained once (about a
    minute, mostly feature extraction; ``asm`` (xgb-asm): the records' assembly features come
    from ``SHIPPED_ASM``, or are built, about 7 more minutes on two cores) and kept under ``CACHE``."""
    from ...fileio import atomic_write
    from .asm_features import ASM_FEATURE_VERSION
    from .cost_model import ASM_PARAMS, ASM_ROUNDS, DEFAULT_PARAMS, DEFAULT_ROUNDS
    from .features import FEATURE_VERSION, host_caches

    dirs = [d / n for d in BUNDLED for n in task_names(d)]
    # the task list and its files' sizes: records added or measured again train a new model;
    # so do other caches on this host (they size the features) and other training parameters
    key = [(f"{p.parent.name}/{p.name}", sum(f.stat().st_size for f in p.iterdir())) for p in dirs]
    params = [DEFAULT_PARAMS, DEFAULT_ROUNDS] + ([ASM_FEATURE_VERSION, ASM_PARAMS, ASM_ROUNDS] if asm else [])
    tag = hashlib.sha1(json.dumps([FEATURE_VERSION, key, host_caches(), params], sort_keys=True)
                       .encode()).hexdigest()[:10]
    path = CACHE / f"bundled-llvm{'-asm' if asm else ''}-{tag}.json"
    if path.is_file():
        return path
    log(f"training the bundled cost model on {len(dirs)} tasks' records (once; cached in {CACHE})")
    tasks = []
    for d in BUNDLED:
        tasks += (part := load_with_features(d))
        if asm:
            load_asm_features(d, part, log)
    model = train(tasks, asm=asm)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: model.save(str(tmp)))
    return path
