"""The tuning driver behind ``accelc tune``: a model's tasks, trials allocated by impact,
MetaSchedule's own loop, a database that survives being killed, and resumption.

- Tasks: the model after the user's ``--passes``, through the target's front passes (legalize,
  fuse: the PrimFuncs ``accelc compile`` schedules), then ``ms.relax_integration.extract_tasks``.
  On the CPU our named kernels (``accelc.kernel``: shift-add, attention) are not tuned: their
  hand schedules use layouts and intrinsics MetaSchedule's generic rules do not know. A target's
  components may choose otherwise (``task_filter``).
- Defaults: each task's default schedule (what ``accelc compile`` does without a database) is
  measured once with the tuning builder and runner. It is stored as a record too when its trace
  replays to the same module, so the best record of a task, which ``compile --db`` applies, is
  never slower than the default; a few unlucky trials cannot make the model slower.
- Plan: ``--trials N`` counts search trials for the model's tasks in the database, those already
  there included (the stored default schedules come on top). Each task gets a share proportional
  to its impact, calls × default latency (calls × FLOPs if a default latency is missing). Fixed
  shares, from latencies kept in the database, make a resumed run continue the same plan.
- Loop: ``ms.TaskScheduler`` (round robin over the tasks' shares), ``EvolutionarySearch`` seeded
  from the database, stock ``AddToDatabase``. After every measured batch our callback fsyncs the
  database, checks the batch's lines are on disk, extends the curve and moves the progress bar.
- Verify: a search time is one sample taken while the search ran; on a shared machine a lucky
  or unlucky one misranks records, and the database's fastest stored record can be slower than
  the default schedule when both run in one process. After the search each task's default and
  its ``VERIFY_TOP`` best searched records are built again and timed side by side, interleaved
  in ``VERIFY_ROUNDS`` rounds of one runner call; ``compile --db`` applies the lowest median
  (``accelc_verified.json``, see database.py). On the CPU each timed call comes after a cache
  flush of the kernel's weights and outputs (``VERIFY_EVALUATOR``), as inside the model; a task
  verified warm by an older accelc is verified again. The simulator's latencies are exact: no
  verify.
- Resume: EvolutionarySearch remembers what it measured only within one run (its
  ``measured_workloads_`` starts empty, see the TODO in evolutionary_search.cc) and seeds its
  population with the database's best records, so a second run re-measures old schedules. The
  search is wrapped: candidates whose scheduled module (structural hash) is already in the
  database are dropped before they are built.
"""

from __future__ import annotations

import logging
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import TargetError, UsageError
from . import curve as curves
from .database import TuningDB, open_database, register_trace_hook

COST_MODELS = ("xgb", "xgb-asm", "tvm-xgb", "random")
SAVED_MODEL = {"xgb": "cost_model-xgb.json", "xgb-asm": "cost_model-xgb-asm.json",
               "tvm-xgb": "cost_model-tvm-xgb.tar"}  # in the database dir
#: xgb-asm: the search proposes this many times the batch; the assembly stage keeps the best
RERANK_FACTOR = 4
EVALUATOR = dict(number=3, repeat=3, min_repeat_ms=30)  # ≥ 90 ms a candidate, 3 samples
VERIFY_TOP, VERIFY_ROUNDS = 3, 3  # searched records re-timed against the default, rounds
#: model_check: interleaved rounds per searched winner, and the speedup it must bring the model
MODEL_CHECK_ROUNDS, MODEL_CHECK_MARGIN = 9, 0.005
#: The CPU verification times single calls, each after TVM's ``cache_flush_cpu_non_first_arg``
#: (every argument but the first, the activation its producer just wrote, is flushed from the
#: caches), as the kernel meets them inside the model: the search's back-to-back calls keep a
#: layer's weights hot in L2, which a model whose weights outgrow the caches never does. On
#: bert-encoder (2026-12-07, Zen 4) the warm winners made the model 1.007-1.045x untuned, slower
#: in all six interleaved runs; the flushed winners 0.973-0.985x in five of six (README).
VERIFY_EVALUATOR = dict(number=1, repeat=10, min_repeat_ms=0, enable_cpu_cache_flush=True)


@dataclass
class Task:
    name: str
    mod: object  # IRModule {"main": PrimFunc}: the MetaSchedule workload
    weight: int  # calls per model run
    flops: float
    key: str = ""  # structural hash of ``mod``
    before: float | None = None  # seconds, default schedule
    done: int = 0  # search trials already in the database
    has_default: bool = False  # the database holds the measured default schedule
    planned: int = 0  # the task's share of --trials


@dataclass
class TuneResult:
    db_dir: Path
    tasks: list[Task]
    curve: curves.Curve
    measured: int = 0  # records this run added
    model_check: list = field(default_factory=list)  # model_check's verdicts
    skipped: int = 0  # candidates dropped because the database already had them
    reranked: int = 0  # xgb-asm: proposals built and scored by their assembly
    notes: list[str] = field(default_factory=list)  # what the user should know about the run


# -- per-target components -------------------------------------------------------------------
def tuning_target(target: str, tvm_target):
    """The tvm Target that ``target``'s tasks are tuned (and their records stored) for."""
    if target != "sim":
        return tvm_target
    from ...targets.sim import offload
    from ...targets.sim.tensorize import ensure_intrinsics

    register_trace_hook(ensure_intrinsics)
    return _sim_tuning().sim_target(offload.current_config())


def _sim_tuning():
    try:
        from ...targets.sim import tuning
    except ModuleNotFoundError as err:
        if err.name != "accelc.targets.sim.tuning":
            raise
        raise TargetError("tuning for -t sim is not yet available (the accelerator's tuning components, "
                          "targets/sim/tuning.py, are missing); tune -t cpu") from None
    return tuning


def components(target: str, tvm_target, rpc: str | None = None, fast_math: bool = True) -> dict:
    """What tuning ``target`` takes: ``target`` (the tvm Target tuned for), ``space``,
    ``builder``, ``runner``, ``tasks`` (Relax module after the user's passes -> [Task]),
    ``default_schedule`` ((IRModule, Target) -> Schedule or None) and ``cost_kind`` (the
    cost model's feature group); optionally ``verify_runner`` (() -> the runner
    ``verify_best`` times with; default ``runner``) and ``verify_cache`` (how it leaves the
    caches: "warm" or "flushed")."""
    from . import local_builder

    if target == "cpu":
        runner = _runner(rpc)  # first: a bad --rpc fails before the builder's workers start
        return {"target": tvm_target, "space": "post-order-apply", "runner": runner, "builder": local_builder(),
                # made when a verification needs it: a LocalRunner starts a worker process
                "verify_runner": lambda: _runner(rpc, VERIFY_EVALUATOR), "verify_cache": "flushed",
                "tasks": lambda mod: relax_tasks(mod, tvm_target, _cpu_front_passes(tvm_target, fast_math),
                                                 _not_a_named_kernel),
                "default_schedule": _cpu_default_schedule, "cost_kind": "llvm",
                "replayable_default": lambda mod, t: _cpu_default_schedule(mod, t, replayable=True)}
    if target == "cuda":
        from ...targets import cuda

        runner = _cuda_runner(rpc)
        front = cuda.front_passes(tvm_target) + [_gpu_kernels()]
        return {"target": tvm_target, "space": "post-order-apply", "runner": runner,
                "builder": local_builder(cuda_arch=cuda.arch_of(tvm_target)),
                "tasks": lambda mod: relax_tasks(mod, tvm_target, front, _not_a_named_kernel),
                "default_schedule": _cuda_default_schedule, "cost_kind": "cuda"}
    if target != "sim":
        raise TargetError(f"no tuning components for target '{target}'")
    if rpc:
        raise UsageError("--rpc measures on devices; -t sim measures in the simulator")
    from ...targets.sim import offload

    cfg = offload.current_config()  # the machine ``-t sim --sim-config`` set up
    comps = {"cost_kind": "sim", **_sim_tuning().tuning_components(cfg)}
    comps.setdefault("tasks", lambda mod: sim_tasks(mod, cfg, comps.get("task_filter")))
    return comps


def _runner(rpc: str | None, evaluator_config: dict = EVALUATOR):
    from tvm.s_tir import meta_schedule as ms

    evaluator = ms.runner.EvaluatorConfig(**evaluator_config)
    if not rpc:
        return ms.runner.LocalRunner(evaluator_config=evaluator)
    host, port, key = parse_rpc(rpc)
    config = ms.runner.RPCConfig(tracker_host=host, tracker_port=port, tracker_key=key, session_timeout_sec=60)
    try:
        config.count_num_servers(allow_missing=False)
    except Exception:  # noqa: BLE001 - ValueError (no tracker / no server) or a socket error
        raise TargetError(f"--rpc {rpc}: no RPC server with key '{key}' is registered at tracker "
                          f"{host}:{port} (is the tracker up? `python -m tvm.exec.query_rpc_tracker "
                          f"--host {host} --port {port}`)") from None
    return ms.runner.RPCRunner(rpc_config=config, evaluator_config=evaluator)


def _cuda_runner(rpc: str | None):
    """Measure on this machine's GPU, or on a GPU RPC server (``--rpc``)."""
    from ...targets import cuda

    if not rpc and cuda.local_arch() is None:
        raise TargetError("tuning -t cuda measures on a GPU and this machine has none: run it on the GPU "
                          "machine, or give --rpc TRACKER:PORT:KEY of a GPU RPC server")
    return _runner(rpc)


def _gpu_kernels():
    from ..cuda import gpu_kernels

    return gpu_kernels


def _cuda_default_schedule(mod, tvm_target):
    """dlight's (and accelc's) GPU schedule of the task, what ``compile -t cuda`` gives it."""
    from tvm.s_tir.dlight.base.transform import _apply_rules

    from ..cuda import default_rules

    with tvm_target:
        schs = _apply_rules(mod["main"], tvm_target, default_rules(), tunable=False)
    return schs[0] if schs else None


def parse_rpc(spec: str) -> tuple[str, int, str]:
    """``HOST:PORT:KEY`` → (host, port, key)."""
    parts = spec.rsplit(":", 2)
    if len(parts) != 3 or not all(parts) or not parts[1].isdigit():
        raise UsageError(f"--rpc {spec!r}: expected TRACKER_HOST:PORT:KEY, e.g. 127.0.0.1:9190:cpu")
    return parts[0], int(parts[1]), parts[2]


def _not_a_named_kernel(task) -> bool:
    from ..kernel_attrs import kernel_name

    return kernel_name(task.dispatched[0]["main"]) is None


def _cpu_front_passes(tvm_target, fast_math: bool = True) -> list:
    from ...targets import cpu

    return cpu.front_passes(tvm_target, fast_math)


def _cpu_default_schedule(mod, tvm_target, replayable: bool = False):
    """The schedule ``accelc compile`` gives the task without a database (None: unscheduled).
    ``replayable``: the one its trace replays to, as stored in the database (the Matmul rule's
    clamped padding rows are a rewrite after the schedule: see ``replayable_only``)."""
    import contextlib

    from tvm.s_tir.dlight.base.transform import _apply_rules

    from ..cpu import default_rules
    from ..cpu.matmul import replayable_only

    with tvm_target, (replayable_only() if replayable else contextlib.nullcontext()):
        schs = _apply_rules(mod["main"], tvm_target, default_rules(), tunable=False)
    return schs[0] if schs else None


# -- tasks, defaults, plan -------------------------------------------------------------------
def relax_tasks(mod, tvm_target, front_passes: list, keep) -> list[Task]:
    """MetaSchedule's tasks of a Relax module after ``front_passes`` (those ``keep`` accepts)."""
    import tvm
    import tvm_ffi
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.analysis import estimate_tir_flops

    with tvm_target, tvm.transform.PassContext(opt_level=3):
        fused = tvm.transform.Sequential(front_passes)(mod)
    return [Task(t.task_name, t.dispatched[0], int(t.weight), float(estimate_tir_flops(t.dispatched[0])),
                 key=str(tvm_ffi.structural_hash(t.dispatched[0])))
            for t in ms.relax_integration.extract_tasks(fused, tvm_target)
            if not written_out(t.dispatched[0]) and keep(t)]


def written_out(mod) -> bool:
    """Whether a task's PrimFunc is a written-out kernel (``tirx.is_scheduled``: the CPU's fused
    attention and softmax rows), whose search space is the kernel itself. (The attribute is
    the function's: this filter once read the IRModule's attributes, which never hold it, so
    such kernels took a share of ``--trials`` that measured nothing.)"""
    return bool(mod["main"].attrs.get("tirx.is_scheduled", False))


def sim_tasks(mod, cfg, keep=None) -> list[Task]:
    """The accelerator's tasks: one per distinct layer the sim offload moves to it (its
    ``PLAN``), as the workload ``targets.sim.tensorize.workload`` defines for machine ``cfg``."""
    from collections import Counter

    import tvm
    import tvm_ffi
    from tvm.s_tir.meta_schedule.tune_context import _normalize_mod

    from ...targets.sim import offload
    from ...targets.sim.tensorize import workload

    with tvm.transform.PassContext(opt_level=3):
        offload.offload_pass()(mod)
    tasks = []
    for (op, m, k, n, terms), calls in Counter((p["op"], p["m"], p["k"], p["n"], p["terms"])
                                               for p in offload.PLAN).items():
        wkl = _normalize_mod(workload(op, m, k, n, terms, cfg))
        if keep is None or keep(wkl):
            tasks.append(Task(f"sim_{op}_{m}x{k}x{n}" + (f"_t{terms}" if terms > 1 else ""), wkl, calls,
                              2.0 * m * k * n * terms, key=str(tvm_ffi.structural_hash(wkl))))
    return tasks


def measure_defaults(tasks: list[Task], tdb: TuningDB, tvm_target, comps: dict) -> None:
    """Each task's latency under its default schedule (``before``), measured once with the
    tuning builder and runner; None where it fails to build or run. The default schedule is also
    stored as a record (when its trace replays to the same module), so the database's best record
    for a task is never slower than what ``accelc compile`` does without it."""
    import tvm_ffi
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.utils import remove_build_dir

    todo = [t for t in tasks if t.before is None or not t.has_default]
    if not todo:
        return
    schs = [comps["default_schedule"](t.mod, tvm_target) for t in todo]
    stored = [_replayable_default(comps, t.mod, tvm_target) for t in todo]
    mods = [s.mod if s is not None else t.mod for s, t in zip(schs, todo)]
    args = [_args_info(m) for m in mods]  # None: MetaSchedule cannot split out its weight packing
    ok = [i for i, a in enumerate(args) if a is not None]
    built = dict(zip(ok, comps["builder"].build([ms.builder.BuilderInput(mods[i], tvm_target) for i in ok])))
    device = "cuda" if tvm_target.kind.name == "cuda" else "cpu"
    runs = {i: ms.runner.RunnerInput(b.artifact_path, device, args[i])
            for i, b in built.items() if b.error_msg is None and todo[i].before is None}
    futures = dict(zip(runs, comps["runner"].run(list(runs.values()))))
    for i, t in enumerate(todo):
        secs = None
        if i in futures:
            res = futures[i].result()
            if res.error_msg is None and res.run_secs:
                secs = [float(s) for s in res.run_secs]
                t.before = sum(secs) / len(secs)
        if i in built and built[i].error_msg is None:
            remove_build_dir(built[i].artifact_path)
        secs = secs or ([t.before] if t.before else None)
        rep = stored[i]
        if secs and args[i] is not None and rep is not None and not t.has_default and rep.trace is not None:
            record = ms.database.TuningRecord(rep.trace, ms.database.Workload(t.mod), secs, tvm_target, args[i])
            try:
                replayed = record.as_measure_candidate().sch.mod
            except Exception:  # noqa: BLE001 - a rule used a step TVM cannot replay: keep no record
                continue
            if tvm_ffi.structural_equal(replayed, rep.mod):
                tdb.commit_default(t.mod, rep, secs, tvm_target)
                t.has_default = True


def _replayable_default(comps: dict, mod, tvm_target):
    """The default schedule as the database stores it: its trace, which stock TVM replays. The
    record's time is the real default's (``default_schedule``), and ``compile --db`` and the
    verification use the real default whenever the record wins or is timed."""
    return comps.get("replayable_default", comps["default_schedule"])(mod, tvm_target)


def stale_defaults(tasks: list[Task], tdb: TuningDB, tvm_target, comps: dict) -> list[Task]:
    """Tasks whose latest stored default schedule is not the one today's rules give (the rules
    improved since the database was tuned): their searched records were verified against an old
    default, so today's default must be measured and verified against them again."""
    import tvm_ffi

    out = []
    for t in tasks:
        stored = [r for r in tdb.records_of(t.mod) if not r.searched and r.tvm is not None]
        if not stored:
            continue
        sch = _replayable_default(comps, t.mod, tvm_target)
        if sch is None or sch.trace is None:
            continue
        try:
            replayed = stored[-1].tvm.as_measure_candidate().sch.mod
            today = as_stored(sch, t.mod, tvm_target)
        except Exception:  # noqa: BLE001 - a record TVM no longer replays is as stale as it gets
            replayed = today = None
        if replayed is None or not tvm_ffi.structural_equal(replayed, today):
            out.append(t)
    return out


def as_stored(sch, mod, tvm_target):
    """The module ``sch``'s trace replays to once written to and read from the database (the
    JSON round trip turns annotation values such as ``True`` into ``1``)."""
    import tempfile

    from tvm.s_tir import meta_schedule as ms

    with tempfile.TemporaryDirectory(prefix="accelc-record-") as tmp:  # TVM's own writer and reader
        db = ms.database.JSONDatabase(work_dir=tmp, allow_missing=True)
        db.commit_tuning_record(ms.database.TuningRecord(sch.trace, db.commit_workload(mod), [1.0], tvm_target,
                                                         _args_info(sch.mod)))
        (rec,) = ms.database.JSONDatabase(work_dir=tmp, allow_missing=False).get_all_tuning_records()
        return rec.as_measure_candidate().sch.mod


def _args_info(mod):
    from tvm.s_tir import meta_schedule as ms

    try:
        return ms.arg_info.ArgInfo.from_entry_func(mod, remove_preproc=True)
    except Exception:  # noqa: BLE001 - TVM's "Check failed: (load)" on a packing it cannot analyse
        return None


def plan_trials(tasks: list[Task], total: int) -> None:
    """Split ``total`` trials over the tasks in proportion to calls × default latency; a task
    whose default could not be measured is estimated from its FLOPs at the median FLOP/s of
    the others (by calls × FLOPs alone if none was measured). Largest remainders get the
    leftover trials."""
    import statistics

    rates = [t.flops / t.before for t in tasks if t.before and t.flops > 0]
    rate = statistics.median(rates) if rates else None
    impact = [t.weight * (t.before or max(t.flops, 1.0) / rate) if rate else t.weight * max(t.flops, 1.0)
              for t in tasks]
    shares = [total * x / sum(impact) for x in impact]
    planned = [int(s) for s in shares]
    for i in sorted(range(len(tasks)), key=lambda i: planned[i] - shares[i])[: total - sum(planned)]:
        planned[i] += 1
    for t, n in zip(tasks, planned):
        t.planned = n


# -- the search wrapper and the per-batch callback -------------------------------------------
def _classes():
    """MetaSchedule Py* subclasses, defined on first use (they need ``@derived_object``)."""
    global _SkipMeasured, _AfterBatch
    if "_SkipMeasured" in globals():
        return _SkipMeasured, _AfterBatch
    import numpy as np
    import tvm_ffi
    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms

    @derived_object
    class SkipMeasured(ms.search_strategy.PySearchStrategy):
        """EvolutionarySearch for ``budget`` more trials, minus candidates already measured."""

        def __init__(self, budget: int, per_iter: int, known: set, stats: dict, refills: int = 4,
                     rerank=None, rerank_factor: int = RERANK_FACTOR):
            super().__init__()
            # MetaSchedule evolves 512 schedules to pick 64; as few as 4 need no such crowd
            pop = min(512, max(64, 8 * min(per_iter, budget)))
            self.inner = ms.search_strategy.EvolutionarySearch(population_size=pop,
                                                               init_min_unmeasured=min(50, pop // 2))
            self.per_iter = per_iter
            self.budget, self.known, self.stats, self.refills = budget, known, stats, refills
            # ``rerank(context, candidates) -> scores | None`` (xgb-asm): the search proposes
            # ``rerank_factor`` times the batch, the batch is the best of them by these scores
            self.rerank, self.factor = rerank, (rerank_factor if rerank is not None else 1)
            self.context, self.sent = None, 0

        def _initialize_with_tune_context(self, context):
            self.context = context
            self.inner._initialize_with_tune_context(context)

        def pre_tuning(self, max_trials, num_trials_per_iter, design_spaces, database=None, cost_model=None):
            # the inner search's own budget would shrink its last proposals to what is left to
            # measure, leaving nothing to re-rank; this wrapper keeps the real budget (``sent``)
            total = self.factor * self.budget
            self.inner.pre_tuning(total, min(self.factor * self.per_iter, total), design_spaces,
                                  SearchedOnly(database), cost_model)

        def post_tuning(self):
            self.inner.post_tuning()

        def generate_measure_candidates(self):
            for _ in range(self.refills):  # a batch that was all old: ask again, then give up
                if self.sent >= self.budget:
                    return None
                cands = self.inner.generate_measure_candidates()
                if cands is None:
                    return None
                fresh, hashes = [], []
                for c in cands:
                    h = tvm_ffi.structural_hash(c.sch.mod)
                    if h in self.known or h in hashes:
                        self.stats["skipped"] += 1
                        continue
                    hashes.append(h)
                    fresh.append(c)
                keep = min(self.per_iter, self.budget - self.sent, len(fresh))
                if self.rerank is not None and len(fresh) > keep:
                    scores = self.rerank(self.context, fresh)
                    if scores is not None:  # best first; a stable sort keeps the search's order on ties
                        order = np.argsort(-np.asarray(scores), kind="stable")[:keep]
                        fresh, hashes = [fresh[i] for i in order], [hashes[i] for i in order]
                        self.stats["reranked"] = self.stats.get("reranked", 0) + len(scores)
                fresh, hashes = fresh[:keep], hashes[:keep]
                self.known.update(hashes)
                if fresh:
                    self.sent += len(fresh)
                    return fresh
            return None

        def notify_runner_results(self, measure_candidates, results):
            self.inner.notify_runner_results(measure_candidates, results)

        def clone(self):
            return SkipMeasured(self.budget, self.per_iter, set(self.known), self.stats, self.refills,
                                self.rerank, self.factor)

    @derived_object
    class SearchedOnly(ms.database.PyDatabase):
        """The database as the search sees it: without the stored default schedules, whose
        dlight traces the search's postprocessors cannot replay when seeding a population."""

        def __init__(self, db):
            super().__init__()
            self.db = db

        def has_workload(self, mod):
            return self.db.has_workload(mod)

        def commit_workload(self, mod):
            return self.db.commit_workload(mod)

        def commit_tuning_record(self, record):
            self.db.commit_tuning_record(record)

        def get_top_k(self, workload, top_k):
            top = self.db.get_top_k(workload, top_k + 8)  # the default record: at most one a task
            return [r for r in top if any(i.kind.name == "EnterPostproc" for i in r.trace.insts)][:top_k]

        def get_all_tuning_records(self):
            return self.db.get_all_tuning_records()

        def __len__(self):
            return len(self.db)

    @derived_object
    class AfterBatch(ms.measure_callback.PyMeasureCallback):
        """Runs after AddToDatabase: sync the database to disk, extend the curve, show progress."""

        def __init__(self, hook):
            super().__init__()
            self.hook = hook

        def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
            self.hook(task_id, runner_results)

    _SkipMeasured, _AfterBatch = SkipMeasured, AfterBatch
    return SkipMeasured, AfterBatch


# -- the driver ------------------------------------------------------------------------------
#: ``--cost-model-warm-start`` value naming the model trained on accelc's bundled CPU records
BUNDLED_WARM_START = "bundled"


def tune(model, target: str = "cpu", trials: int = 64, db_dir="tune-db", *, cost_model: str = "xgb",
         warm_start=None, rpc: str | None = None, passes=(), input_shapes=None, calibration=None,
         fast_math: bool = True, target_options: dict | None = None, only=(), batch: int = 32,
         seed: int = 0, progress: bool = True, log=print, check_model: bool = True) -> TuneResult:
    """Tune ``model`` (what ``accelc.compile`` accepts) for ``target`` until the database at
    ``db_dir`` holds ``trials`` search trials for the model's tasks; see the module docstring.
    ``check_model``: on the CPU, measured locally, keep a searched winner only if it speeds up
    the whole model (``model_check``)."""
    from ... import targets
    from ...compiler import pipeline
    from . import load_intrinsics

    if trials <= 0 or batch <= 0:
        raise UsageError("--trials and --batch must be positive")
    if cost_model not in COST_MODELS:
        raise UsageError(f"unknown cost model '{cost_model}'; choose from {', '.join(COST_MODELS)}")
    spec = targets.get(target)
    bundled = str(warm_start) == BUNDLED_WARM_START
    if bundled and (cost_model not in ("xgb", "xgb-asm") or spec.name != "cpu"):
        raise UsageError(f"--cost-model-warm-start {BUNDLED_WARM_START}: a model of accelc's bundled CPU "
                         "records; it needs -t cpu and --cost-model xgb or xgb-asm")
    if cost_model == "xgb-asm" and spec.name != "cpu":
        raise UsageError("--cost-model xgb-asm reads x86 assembly: it needs -t cpu")
    if not bundled and warm_start is not None and (cost_model == "random" or not Path(warm_start).is_file()):
        raise UsageError(f"--cost-model-warm-start {warm_start}: " + (
            "needs --cost-model xgb or tvm-xgb" if cost_model == "random" else "no such file"))
    tvm_target = tuning_target(spec.name, spec.make(**dict(target_options or {})))
    pipeline.check_passes(passes)
    db_dir = Path(db_dir)
    tdb = None
    try:
        # validate an existing database before anything slow; create a new one after the import
        if db_dir.exists() or not db_dir.parent.is_dir():
            tdb = open_database(db_dir, tvm_target, create=True)
        if bundled:  # trained on first use (about a minute), so after the checks above
            from .dataset import bundled_warm_start

            warm_start = bundled_warm_start(log, asm=cost_model == "xgb-asm")
        comps = components(spec.name, tvm_target, rpc, fast_math)
        if comps["cost_kind"] in ("llvm", "cuda"):
            load_intrinsics(tvm_target.kind.name)
        mod, name, imported = _model_after_passes(model, input_shapes, passes, calibration)
        tasks = [t for t in comps["tasks"](mod) if not only or any(s in t.name for s in only)]
        if not tasks:
            what = f" matching --tasks {', '.join(only)}" if only else ""
            hint = " (it runs the layers --passes shift-add or int8 rewrite)" if spec.name == "sim" else ""
            raise UsageError(f"{name}: no tunable tasks{what} for {spec.name}{hint}")
        tasks.sort(key=lambda t: -t.weight * t.flops)
        tdb = tdb or open_database(db_dir, tvm_target, create=True)
        for note in tdb.repaired:
            log(f"note: {note}")
        build_model = None
        if check_model and spec.name == "cpu" and rpc is None:
            build_model = _model_builder(imported, mod, tdb, fast_math, target_options)
        return _tune(tasks, tdb, tvm_target, comps, name, spec.name, trials, cost_model, warm_start, batch,
                     seed, progress, log, build_model)
    finally:
        if tdb is not None:
            tdb.close()


def _model_builder(imported, mod, tdb: TuningDB, fast_math: bool, target_options):
    """``without → CompiledModel``: the model as ``accelc compile --db`` builds it, with the
    database minus the workloads ``without``."""
    import dataclasses

    from ...compiler import pipeline
    from ...compiler.runtime import CompiledModel

    def build(without):
        ex, meta = pipeline.build(dataclasses.replace(imported, mod=mod), "cpu", database=tdb.for_compile(without),
                                  fast_math=fast_math, target_options=target_options)
        return CompiledModel(ex, meta, executable=ex)

    return build


def _model_after_passes(model, input_shapes, passes, calibration):
    """(Relax module after the user's passes, model name, the import): what ``accelc compile``
    lowers."""
    from ...compiler import pipeline
    from ...compiler.frontend import import_model

    imported = import_model(model, input_shapes)
    samples = calibration
    if calibration is not None and not isinstance(calibration, (list, tuple)):
        from ...compiler.calibrate import load_calibration

        samples = load_calibration(calibration, imported.inputs)
    return pipeline.apply_passes(imported, passes, samples)[0], imported.name, imported


def _tune(tasks, tdb: TuningDB, tvm_target, comps, model_name, target_name, trials, cost_model, warm_start,
          batch, seed, progress, log, build_model=None) -> TuneResult:
    """Default latencies (from the database if stored), trials already measured, the plan, the
    search, the reports."""
    result = TuneResult(tdb.path, tasks, None)  # type: ignore[arg-type]
    known_before = curves.load_before(tdb.path)
    by_task = {t.name: tdb.records_of(t.mod) for t in tasks}
    for t in tasks:  # the default latency: its latest record in the database, else an earlier curve.json
        defaults = [r.secs for r in by_task[t.name] if not r.searched and math.isfinite(r.secs)]
        t.has_default = bool(defaults)
        t.before = defaults[-1] if defaults else known_before.get(t.key)
    stale = stale_defaults(tasks, tdb, tvm_target, comps)
    if stale:
        log(f"{len(stale)} task(s) were tuned against an older default schedule than today's rules give: "
            "measuring today's default and verifying it against their best records")
        for t in stale:
            t.has_default, t.before = False, None
    measure_defaults(tasks, tdb, tvm_target, comps)
    by_task = {t.name: tdb.records_of(t.mod) for t in tasks}
    for t in tasks:
        t.done = sum(r.searched for r in by_task[t.name])
    plan_trials(tasks, trials)
    curve = result.curve = curves.Curve([curves.TaskCurve(t.name, t.key, t.weight, t.flops, t.before, t.has_default)
                                         for t in tasks], model_name, target_name)
    history = sorted((r.line, t.name, r.secs) for t in tasks for r in by_task[t.name] if r.searched)
    for _, name, secs in history:  # the database's search records, in append order
        curve.add(name, [secs])
    _print_plan(tasks, trials, tdb.path, log)

    todo = [t for t in tasks if t.planned > t.done]
    if todo:
        result.measured, result.skipped, result.reranked = _run(todo, tasks, tdb, tvm_target, comps, curve,
                                                                cost_model, warm_start, batch, seed, progress)
    short = [f"{t.name} ({t.done}/{t.planned})" for t in todo if t.done < t.planned]
    if short:
        result.notes.append(f"the search found nothing new to measure for {', '.join(short)}: "
                            "their search spaces look exhausted")
    if comps["cost_kind"] != "sim":
        verify_best(tasks, tdb, tvm_target, comps, curve, log)
    if build_model is not None:
        result.model_check = model_check(tasks, tdb, build_model, log)
        if result.model_check:  # the table shows what compile --db now runs
            for t in tasks:
                w = tdb.workload_index(t.mod)
                if w in tdb.verified:
                    _curve_verified(curve, t, tdb, tdb.verified[w])
    curve.write(tdb.path)
    curve.plot(tdb.path)
    return result


def verify_best(tasks: list[Task], tdb: TuningDB, tvm_target, comps: dict, curve=None, log=print,
                top: int = VERIFY_TOP, rounds: int = VERIFY_ROUNDS) -> list:
    """Time each task's default record and ``top`` fastest searched records again, side by side:
    one runner call that runs the candidates in ``rounds`` interleaved rounds, so they share the
    machine's state. The samples go to ``accelc_verified.json`` (``compile --db`` applies the
    lowest median) and, as "verified", into the curve. A task whose candidates were verified
    before is skipped, and so is one where fewer than two candidates built and ran (an entry of
    one record would hide the task's other records from ``compile --db``). Returns the new
    ``Verified`` entries."""
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.utils import remove_build_dir

    from .database import Verified

    tdb.reload_records()
    cache = comps.get("verify_cache", "warm")
    wid = {t.name: tdb.workload_index(t.mod) for t in tasks}
    picks = {}  # workload index → [Record]
    for t in tasks:
        w = wid[t.name]
        recs = [r for r in tdb.records if r.workload == w and math.isfinite(r.secs) and r.tvm is not None]
        latest_default = [r for r in recs if not r.searched][-1:]
        chosen = latest_default + sorted((r for r in recs if r.searched), key=lambda r: r.secs)[:top]
        old = tdb.verified.get(w)
        if len(chosen) >= 2 and (old is None or set(old.secs) != {r.line for r in chosen} or old.cache != cache):
            picks[w] = chosen
        elif old is not None and curve is not None:
            _curve_verified(curve, t, tdb, old)
    if not picks:
        return []
    runner = comps["verify_runner"]() if "verify_runner" in comps else comps["runner"]
    flat = [r for chosen in picks.values() for r in chosen]
    cands = [r.tvm.as_measure_candidate() for r in flat]
    by_workload = {wid[t.name]: t for t in tasks}
    # the default record stands for today's default schedule: time that one (the stored trace
    # may replay to less, e.g. without the Matmul rule's clamped padding rows)
    mods = [c.sch.mod if r.searched else _real_default(comps, by_workload[r.workload].mod, tvm_target, c.sch.mod)
            for r, c in zip(flat, cands)]
    built = comps["builder"].build([ms.builder.BuilderInput(m, tvm_target) for m in mods])
    device = "cuda" if tvm_target.kind.name == "cuda" else "cpu"
    inputs, owner = [], []  # owner: the record line each run times
    for _ in range(rounds):
        for r, c, b in zip(flat, cands, built):
            if b.error_msg is None:
                inputs.append(ms.runner.RunnerInput(b.artifact_path, device, c.args_info))
                owner.append(r.line)
    log(f"verifying {len(picks)} task(s): {len(inputs)} side-by-side runs of their default and best records")
    samples: dict[int, list[float]] = {}
    try:
        for line, fut in zip(owner, runner.run(inputs)):
            res = fut.result()
            if res.error_msg is None and res.run_secs:
                samples.setdefault(line, []).extend(float(s) for s in res.run_secs)
    finally:
        for b in built:
            if b.error_msg is None:
                remove_build_dir(b.artifact_path)
    entries = []
    for w, chosen in picks.items():
        secs = {r.line: samples[r.line] for r in chosen if r.line in samples}
        if len(secs) >= 2:  # one survivor compares with nothing: the task keeps stock behaviour
            entries.append(Verified(w, secs, cache))
    if entries:
        tdb.save_verified(entries)
    if curve is not None:
        for t in tasks:
            w = wid[t.name]
            if w in picks and w in tdb.verified:
                _curve_verified(curve, t, tdb, tdb.verified[w])
    return entries


def model_check(tasks: list[Task], tdb: TuningDB, build_model, log=print, rounds: int = MODEL_CHECK_ROUNDS,
                margin: float = MODEL_CHECK_MARGIN) -> list[dict]:
    """Each task whose side-by-side winner is a searched record, timed inside the whole model:
    ``build_model(without)`` compiles it with the database minus the workloads ``without``;
    the model with the winner and without it run in ``rounds`` interleaved rounds, and the
    winner is kept only if the model is faster by more than ``margin`` (paired median ratio).
    Tasks are tried in order of their side-by-side speedup, each against the model with the
    winners kept so far. The verdicts go to ``accelc_verified.json`` (``compile --db`` leaves a
    dropped winner's task to the default rules); a winner checked before is not checked again.

    Why: kernels timed alone do not see what the kernels around them leave in the caches. On a
    Zen 4 host the Matmul rule's default gives each core a chunk of rows, which the next kernel
    reads on the same core; searched schedules split the columns instead, and winners of 1.03
    to 1.13× side by side made DeiT and BERT 3-14% slower in the model."""
    by_w = {tdb.workload_index(t.mod): t for t in tasks}
    speedup = {}  # workload → the winner's side-by-side speedup over the default
    for w in tdb.searched_winners():
        ver = tdb.verified[w]
        if w in by_w and ver.model_kept() is None:
            default = _verified_default(tdb, ver)
            speedup[w] = ver.median(default) / ver.median(ver.winner) if default is not None else 1.0
    if not speedup:
        return []
    todo = sorted(speedup, key=speedup.get, reverse=True)
    log(f"checking {len(todo)} searched winner(s) inside the model ({rounds} interleaved rounds each)")
    off = set(todo)
    current = build_model(off)
    verdicts = []
    for w in todo:
        trial = build_model(off - {w})
        ratio = _paired_ratio(trial, current, rounds)
        kept = ratio < 1.0 - margin
        ver = tdb.verified[w]
        ver.in_model = {"record": ver.winner, "ratio": round(ratio, 4), "kept": kept}
        verdicts.append({"task": by_w[w].name, **ver.in_model, "side_by_side": round(speedup[w], 4)})
        log(f"  {by_w[w].name}: {speedup[w]:.2f}x side by side, model {ratio:.3f}x with it: "
            + ("kept" if kept else "dropped (the default rules schedule it)"))
        if kept:
            off.discard(w)
            current = trial
    tdb.save_verified([tdb.verified[w] for w in todo])
    return verdicts


def _verified_default(tdb: TuningDB, ver) -> int | None:
    """The record line of the default schedule among a verification's records, if timed."""
    return next((r.line for r in tdb.records if r.workload == ver.workload and not r.searched
                 and r.line in ver.secs), None)


def _paired_ratio(a, b, rounds: int) -> float:
    """Median over ``rounds`` of (a's latency / b's), the two timed back to back, alternating
    which goes first."""
    import statistics

    ratios = []
    for i in range(rounds):
        pair = (a, b) if i % 2 == 0 else (b, a)
        t = {id(m): m.benchmark(repeat=3, warmup=1).median_ms for m in pair}
        ratios.append(t[id(a)] / t[id(b)])
    return statistics.median(ratios)


def _real_default(comps: dict, mod, tvm_target, replayed):
    """Today's default schedule of ``mod`` where its replayable form is ``replayed`` (the stored
    default record is today's: ``stale_defaults`` re-measures it otherwise), else ``replayed``."""
    import tvm_ffi

    rep = _replayable_default(comps, mod, tvm_target)
    if rep is None or rep.trace is None or not tvm_ffi.structural_equal(as_stored(rep, mod, tvm_target), replayed):
        return replayed
    real = comps["default_schedule"](mod, tvm_target)
    return real.mod if real is not None else replayed


def _curve_verified(curve, task: Task, tdb: TuningDB, ver) -> None:
    """Tell the curve the task's side-by-side timing: its default's median and the winner's
    (the default's again when the model check dropped the winner: what ``compile --db`` runs)."""
    default = _verified_default(tdb, ver)
    before = ver.median(default) if default is not None else None
    dropped = ver.model_kept() is False
    curve.verified(task.name, before, before if dropped and before is not None else ver.median(ver.winner))


def _run(todo, tasks, tdb: TuningDB, tvm_target, comps, curve, cost_model_name, warm_start, batch, seed,
         progress) -> tuple[int, int, int]:
    """MetaSchedule's task scheduler over ``todo``; returns (records added, candidates skipped,
    proposals re-ranked by their assembly)."""
    from tqdm import tqdm
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.utils import fork_seed

    SkipMeasured, AfterBatch = _classes()
    done = sum(t.done for t in tasks)
    stats = {"skipped": 0, "measured": 0}
    logger, restore = _file_logger(tdb.path)
    start = warm_start or _saved_model(tdb.path, cost_model_name)
    ours = cost_model_name in ("xgb", "xgb-asm")
    model = make_cost_model(cost_model_name, comps["cost_kind"], start if ours else None, seed)
    if start and cost_model_name == "tvm-xgb":
        model.load(str(start))
    rerank = model.rerank if cost_model_name == "xgb-asm" else None
    contexts = []
    seeds = fork_seed(seed + done, n=len(todo))  # a resumed run explores with fresh random draws
    for t, rand in zip(todo, seeds):
        space = comps["space"] if isinstance(comps["space"], str) else comps["space"].clone()
        strategy = SkipMeasured(t.planned - t.done, batch, tdb.measured_hashes(t.mod), stats, rerank=rerank)
        contexts.append(ms.TuneContext(mod=t.mod, target=tvm_target, space_generator=space,
                                       search_strategy=strategy, task_name=t.name, rand_state=rand,
                                       logger=logger.getChild(t.name)))
    bar = tqdm(total=sum(max(t.planned, t.done) for t in tasks), initial=done, unit="trial", file=sys.stdout,
               disable=not progress, dynamic_ncols=True, desc="tuning")
    _postfix(bar, curve)

    def after_batch(task_id: int, results) -> None:
        secs = [sum(map(float, r.run_secs)) / len(r.run_secs) if r.error_msg is None and r.run_secs
                else math.inf for r in results]
        tdb.sync(len(secs))
        stats["measured"] += len(secs)
        todo[task_id].done += len(secs)
        curve.add(todo[task_id].name, [s if s < 1e9 else math.inf for s in secs])
        curve.write(tdb.path)
        bar.update(len(secs))
        _postfix(bar, curve)

    callbacks = [ms.measure_callback.AddToDatabase(), AfterBatch(after_batch),
                 ms.measure_callback.RemoveBuildArtifact(), ms.measure_callback.UpdateCostModel()]
    remaining = [t.planned - t.done for t in todo]
    try:
        ms.task_scheduler.RoundRobin().tune(
            tasks=contexts, task_weights=[float(t.weight) for t in todo], max_trials_global=sum(remaining),
            max_trials_per_task=max(remaining), num_trials_per_iter=batch, builder=comps["builder"],
            runner=comps["runner"], measure_callbacks=callbacks, database=tdb.db, cost_model=model)
    finally:
        bar.close()
        restore()
    if cost_model_name in SAVED_MODEL:
        model.save(str(tdb.path / SAVED_MODEL[cost_model_name]))
    return stats["measured"], stats["skipped"], stats.get("reranked", 0)


def make_cost_model(name: str, target_kind: str = "llvm", warm_start=None, seed: int = 0):
    from .cost_model import make_cost_model as make

    return make(name, target_kind=target_kind, warm_start=str(warm_start) if warm_start else None, seed=seed)


def _saved_model(folder: Path, name: str):
    path = folder / SAVED_MODEL.get(name, "-")
    return path if path.is_file() else None


def _postfix(bar, curve) -> None:
    est = curve.estimate()
    if est is not None:
        bar.set_postfix_str(f"model ≈ {est * 1e6:.2f} µs", refresh=False)


def _file_logger(folder: Path):
    """MetaSchedule's logs go to ``DIR/logs/tune.log``, not the console; returns (logger, undo)."""
    (folder / "logs").mkdir(exist_ok=True)
    root = logging.getLogger("tvm.s_tir.meta_schedule")
    handler = logging.FileHandler(folder / "logs" / "tune.log")
    handler.set_name("accelc.tune.file")  # stock create_loggers later lists handlers by name
    handler.setFormatter(logging.Formatter("%(asctime)s [%(levelname)s] %(name)s %(message)s"))
    saved = root.level, root.propagate
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    root.propagate = False

    def restore():
        root.removeHandler(handler)
        handler.close()
        root.setLevel(saved[0])
        root.propagate = saved[1]

    return root.getChild("accelc"), restore


def _print_plan(tasks: list[Task], trials: int, db_dir: Path, log) -> None:
    done = sum(t.done for t in tasks)
    how = "calls × default latency" if any(t.before for t in tasks) else "calls × FLOPs"
    log(f"tuning {len(tasks)} task(s), {trials} trials in total ({done} already in {db_dir}); "
        f"shares by {how}:")
    width = max(len(t.name) for t in tasks)
    log(f"  {'task':<{width}} {'calls':>5} {'MFLOP':>9} {'default µs':>10} {'done':>5} {'planned':>7}")
    for t in tasks:
        before = f"{t.before * 1e6:.2f}" if t.before else "n/a"
        log(f"  {t.name:<{width}} {t.weight:>5} {t.flops / 1e6:>9.3f} {before:>10} {t.done:>5} {t.planned:>7}")
