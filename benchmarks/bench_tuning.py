"""Tuning efficiency: trials a MetaSchedule search needs to come within 5 % of the best latency,
with our cost model vs TVM's stock ``XGBModel`` vs random, on the sim target and on the CPU.

    python -m accelc.benchmarks.bench_tuning [--target sim|cpu|both] [--tasks N] [--trials T]
                                             [--seeds S] [--batch B] [--models ...] [--json out.json]

Every (task, cost model, seed) is one ``ms.tune_tir`` search of T trials over the same design
space with the same search settings as ``accelc tune`` (``EvolutionarySearch``, population
``8 × batch`` in [64, 512], the same seed for every model), measured by the target's tuning
builder and runner; the latency of every trial, in measurement order, gives a best-so-far
curve. Per task, ``best`` is the lowest latency any model and seed found, and a run's
trials-to-95 % is the first trial whose best-so-far is ≤ best / 0.95 (T + 1 if none: the table
prints ``>T``, a lower bound). The summary is the geometric mean over tasks of each model's
mean trials-to-95 % (over seeds) divided by ours.

Tasks. sim: int8 ``gemm`` workloads (``targets.sim.tensorize.workload``) on the default sim
machine (``targets.sim.offload.default_config()``), shapes the zoo models offload under
``--passes int8`` (``pipeline.apply_passes(..., ["int8"])``'s ``accelc.rewrites`` layers;
convs as their im2col GEMMs). The simulated runner is deterministic. cpu: the cost-model
benchmark's zoo tasks (``schedules.tuning.dataset.CPU_TASKS``), built by ``local_builder()``
and timed by ``LocalRunner`` (noisy on a shared machine: best-so-far is of noisy minima).

``tvm-xgb`` is the stock model as ``accelc tune --cost-model tvm-xgb`` makes it: its
``num_warmup_samples=100`` makes it predict at random for its first 100 samples;
``tvm-xgb-w0`` (``--models``) is the same model with no warm-up. ``xgb-warm`` (``--models``) is
ours warm-started as ``accelc tune --cost-model-warm-start`` does it, from a model trained on the
cost-model benchmark's records of every other task (never the task being tuned): transfer
across tasks and models, which the stock model has no way to do. ``xgb-pool`` is the same, also
trained on the cost-model training pool (``bench_cost_model --pool``: 99 more tasks, the zoo's
architectures at other sizes). ``xgb-asm`` and ``xgb-asm-pool`` (``--models``, CPU) are those two
with the assembly stage (``accelc tune --cost-model xgb-asm``): the search proposes four batches
(``driver.SkipMeasured``, which also skips candidates already measured), each proposal is built
and the batch measured is the best by its assembly.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from accelc.errors import UsageError

#: (name, m, k, n) int8 GEMMs the zoo offloads to the sim target under --passes int8 (× calls).
SIM_TASKS = (
    ("deit_qkv", 197, 192, 576),  # deit-tiny attention qkv, × 12
    ("deit_fc1", 197, 192, 768),  # deit-tiny MLP fc1, × 12
    ("deit_fc2", 197, 768, 192),  # deit-tiny MLP fc2, × 12
    ("bert_fc1", 128, 384, 1536),  # bert-encoder FFN in, × 6
    ("gpt2_qkv", 64, 384, 1152),  # gpt2-like c_attn, × 4
    ("resnet_conv3x3_c32", 3136, 288, 32),  # resnet-small 3×3 conv, 32 ch, im2col, × 2
    ("bert_fc2", 128, 1536, 384),  # bert-encoder FFN out, × 6
    ("resnet_conv3x3_c256", 49, 2304, 256),  # resnet-small last-stage 3×3 conv, im2col
)
#: Labels of ``dataset.CPU_TASKS`` (the cost-model benchmark's zoo tasks), most varied first.
CPU_TASKS = ("vit_qkv", "resnet_conv3x3", "vit_scores", "bert_dense", "vit_layernorm", "gpt2_fc1_tanh",
             "minilm_fc2", "resnet_conv1x1_s2")
MODELS = ("xgb", "tvm-xgb", "random")
ALL_MODELS = MODELS + ("tvm-xgb-w0", "xgb-warm", "xgb-pool", "xgb-asm", "xgb-asm-pool")
FAILED = 1e9  # MetaSchedule records 1e10 s for a candidate that failed to build or run


# -- the metric -------------------------------------------------------------------------------
def best_so_far(secs) -> np.ndarray:
    """Running minimum of per-trial latencies (failed trials: inf)."""
    lat = np.asarray([s if s < FAILED else math.inf for s in secs], dtype="float64")
    return np.minimum.accumulate(lat) if len(lat) else lat


def trials_to(secs, best: float, frac: float = 0.95) -> int | None:
    """First trial (1-based) whose best-so-far is within ``frac`` of ``best`` (≤ best / frac);
    None if the run never gets there."""
    hit = np.flatnonzero(best_so_far(secs) <= best / frac * (1 + 1e-12))
    return int(hit[0]) + 1 if len(hit) else None


def geomean(xs) -> float:
    return float(np.exp(np.mean(np.log(xs))))


def summarize(runs: dict, trials: int, frac: float = 0.95) -> dict:
    """``runs[task][model][seed] = [latency per trial]`` → per task: best, each model's
    trials-to-``frac`` per seed (None = never) and mean (never = T + 1); overall: geometric
    mean over tasks of each model's mean / ours."""
    tasks = {}
    for task, by_model in runs.items():
        best = min(float(np.min(best_so_far(s), initial=math.inf)) for seeds in by_model.values()
                   for s in seeds.values())
        per = {m: {seed: trials_to(secs, best, frac) for seed, secs in seeds.items()}
               for m, seeds in by_model.items()}
        tasks[task] = {"best_s": best, "trials_to": per,
                       "mean": {m: float(np.mean([trials + 1 if v is None else v for v in d.values()]))
                                for m, d in per.items()},
                       "final": {m: float(np.mean([best_so_far(s)[-1] / best for s in seeds.values()]))
                                 for m, seeds in by_model.items()}}
    models = list(next(iter(runs.values()))) if runs else []
    ratio = {m: geomean([t["mean"][m] / t["mean"]["xgb"] for t in tasks.values()])
             for m in models if "xgb" in models}
    return {"frac": frac, "trials": trials, "tasks": tasks, "ratio_to_xgb": ratio,
            "ours_over_stock": 1 / ratio["tvm-xgb"] if "tvm-xgb" in ratio else None}


# -- tasks and components ---------------------------------------------------------------------
def sim_setup(names):
    """([(task name, PrimFunc)], components, cost-model kind) for the sim tasks ``names``."""
    from accelc.targets.sim import offload
    from accelc.targets.sim.tensorize import workload
    from accelc.targets.sim.tuning import tuning_components

    cfg = offload.default_config()
    comps = tuning_components(cfg)
    tasks = [(name, workload("gemm", m, k, nn, 1, cfg)) for name, m, k, nn in SIM_TASKS if name in names]
    return tasks, comps, "sim"


def cpu_setup(names):
    """The same for the CPU tasks ``names`` (one core: ``num-cores`` 1)."""
    from accelc.schedules.tuning import driver, load_intrinsics, local_builder
    from accelc.schedules.tuning.dataset import select_tasks
    from accelc.targets.cpu import host_target

    target = host_target(num_cores=1)
    load_intrinsics("llvm")
    tasks = [(label, t.dispatched[0]) for label, t in select_tasks(target, only=list(names))]
    comps = {"target": target, "space": "post-order-apply", "builder": local_builder(),
             "runner": driver._runner(None)}
    return tasks, comps, "llvm"


def cost_model(name: str, kind: str, seed: int, task: str | None = None, warm_dir: Path | None = None):
    from tvm.s_tir import meta_schedule as ms

    from accelc.schedules.tuning.driver import make_cost_model

    if name == "tvm-xgb-w0":
        return ms.cost_model.XGBModel(config=ms.cost_model.xgb_model.XGBConfig(seed=seed), num_warmup_samples=0)
    if name in ("xgb-warm", "xgb-pool"):
        return make_cost_model("xgb", kind, warm_start_file(task, kind, warm_dir, pool=name == "xgb-pool"), seed)
    if name == "xgb-asm-pool":
        return make_cost_model("xgb-asm", kind, warm_start_file(task, kind, warm_dir, pool=True, asm=True), seed)
    return make_cost_model(name, kind, None, seed)


def warm_start_file(task: str, kind: str, folder: Path, data: Path | None = None, pool: bool = False,
                    asm: bool = False) -> Path:
    """``xgb-warm``: our model trained on the cost-model benchmark's records of every *other*
    task (``benchmarks/data/costmodel``, or ``costmodel-sim``; the task itself is left out, as
    in that benchmark's leave-one-task-out), saved as ``accelc tune --cost-model-warm-start``
    takes it; written once per task into ``folder``. ``pool`` (``xgb-pool``, CPU): the training
    pool's records too (``benchmarks/data/costmodel-pool``, no task equal to a benchmark one).
    ``asm`` (``xgb-asm-pool``): with every record's assembly features (built once, cached)."""
    from accelc.benchmarks import bench_cost_model as bcm
    from accelc.schedules.tuning import dataset

    if pool and kind == "sim":
        raise UsageError("xgb-pool: the training pool holds CPU tasks; the sim target has none")
    if asm and kind != "llvm":
        raise UsageError("xgb-asm-pool: the assembly features read x86 code; use --target cpu")
    path = Path(folder) / f"warm-{kind}-{task}{'-pool' if pool else ''}{'-asm' if asm else ''}.json"
    if path.is_file():
        return path
    data = data or (bcm.DATA_SIM if kind == "sim" else bcm.DATA)
    train = [t for t in _records(Path(data), kind) if t.name != task]
    if asm:
        dataset.load_asm_features(Path(data), train)
    if pool:
        extra = list(_records(bcm.DATA_POOL, kind))
        if asm:
            dataset.load_asm_features(bcm.DATA_POOL, extra)
        train += extra
    if not train:
        raise UsageError(f"xgb-warm: {data} holds no records of tasks other than {task}")
    dataset.train(train, kind, asm=asm).save(str(path))
    return path


@functools.lru_cache(maxsize=3)
def _records(data: Path, kind: str) -> tuple:
    """The cost-model benchmark's records with features, read once per run (every task's
    warm-start model trains on all but one of them)."""
    from accelc.benchmarks import bench_cost_model as bcm

    return tuple(bcm.load(data, kind=kind))


def search(func, comps: dict, model, seed: int, trials: int, batch: int) -> list[float]:
    """One ``tune_tir`` search of ``trials`` trials; every trial's latency (s), in order."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms

    secs: list[float] = []

    @derived_object
    class Record(ms.measure_callback.PyMeasureCallback):
        def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
            secs.extend(float(np.mean([float(s) for s in r.run_secs])) if r.error_msg is None and r.run_secs
                        else math.inf for r in runner_results)

    if getattr(model, "asm", None) is not None:  # xgb-asm: the tuner's own wrapper, which re-ranks
        from accelc.schedules.tuning.driver import _classes

        strategy = _classes()[0](trials, batch, set(), {"skipped": 0}, rerank=model.rerank)
    else:
        pop = min(512, max(64, 8 * min(batch, trials)))  # what `accelc tune` uses (driver.SkipMeasured)
        strategy = ms.search_strategy.EvolutionarySearch(population_size=pop,
                                                         init_min_unmeasured=min(50, pop // 2))
    callbacks = [ms.measure_callback.AddToDatabase(), Record(), ms.measure_callback.RemoveBuildArtifact(),
                 ms.measure_callback.UpdateCostModel()]
    with tempfile.TemporaryDirectory(prefix="accelc-bench-tuning-") as work:
        ms.tune_tir(func, comps["target"], work, max_trials_global=trials, num_trials_per_iter=batch,
                    space=comps["space"], builder=comps["builder"], runner=comps["runner"], database="memory",
                    cost_model=model, measure_callbacks=callbacks, strategy=strategy, seed=seed,
                    num_tuning_cores=1, task_scheduler="round-robin")
    return secs


def run(target: str, n_tasks: int, trials: int, seeds: int, batch: int, models=MODELS, only=(),
        log=print, reuse: dict | None = None, frac: float = 0.95) -> dict:
    """Every task (the first ``n_tasks``, or those named in ``only``) × model × seed searched;
    the summary, the raw curves and timings. ``reuse``: an earlier run's results for this
    target (sim only: its runner is deterministic, so a model's curves do not change unless
    the model does); the curves of models it holds and ``models`` does not name are taken
    from it instead of searched again."""
    names = [t[0] for t in SIM_TASKS] if target == "sim" else list(CPU_TASKS)
    unknown = [o for o in only if o not in names]
    if unknown:
        raise UsageError(f"unknown {target} task(s) {', '.join(unknown)}; known: {', '.join(names)}")
    tasks, comps, kind = (sim_setup if target == "sim" else cpu_setup)(list(only) or names[:n_tasks])
    reused = _reusable(reuse, target, [t[0] for t in tasks], trials, seeds, batch, models)
    runs, seconds = {}, {}
    with tempfile.TemporaryDirectory(prefix="accelc-bench-tuning-warm-") as warm_dir:
        for name, func in tasks:
            runs[name], seconds[name] = {}, {}
            for m, curves in reused.get(name, {}).items():
                runs[name][m] = curves
                seconds[name][m] = reuse["seconds"][name][m]
                log(f"  {target} {name:22s} {m:10s} curves reused from the earlier run")
            for m in models:
                runs[name][m], t0 = {}, time.perf_counter()
                for seed in range(seeds):
                    model = cost_model(m, kind, seed, task=name, warm_dir=Path(warm_dir))
                    runs[name][m][seed] = search(func, comps, model, seed, trials, batch)
                seconds[name][m] = round(time.perf_counter() - t0, 1)
                best = min(min(v) for v in runs[name][m].values())
                log(f"  {target} {name:22s} {m:10s} best {best * 1e6:10.2f} µs  ({seconds[name][m]} s)")
    out = summarize(runs, trials, frac)
    all_models = list(models) + [m for m in next(iter(reused.values()), {}) if m not in models]
    out.update(target=target, seeds=seeds, batch=batch, models=all_models, seconds=seconds,
               reused=sorted(next(iter(reused.values()), {})), curves=_curves_to_json(runs))
    return out


def _curves_from_json(by_seed: dict) -> dict:
    """A model's curves as ``--json`` stores them (seed strings, null for failed) → {seed: [s]}."""
    return {int(k): [math.inf if v is None else v for v in c] for k, c in by_seed.items()}


def _curves_to_json(runs: dict) -> dict:
    return {t: {m: {str(s): list(v) for s, v in d.items()} for m, d in by_m.items()} for t, by_m in runs.items()}


def _reusable(reuse, target, names, trials, seeds, batch, models) -> dict:
    """``{task: {model: {seed: [latency]}}}`` to take from ``reuse`` (see ``run``)."""
    if not reuse:
        return {}
    if target != "sim":
        raise UsageError("--reuse: only sim curves are deterministic; CPU timings must be taken side by side")
    same = (reuse.get("trials"), reuse.get("seeds"), reuse.get("batch")) == (trials, seeds, batch)
    missing = [n for n in names if n not in reuse.get("curves", {})]
    if not same or missing:
        raise UsageError(f"--reuse: the earlier run had trials/seeds/batch {reuse.get('trials')}/"
                         f"{reuse.get('seeds')}/{reuse.get('batch')} and no curves for "
                         f"{', '.join(missing) or 'nothing missing'}; this run asks {trials}/{seeds}/{batch}")
    return {n: {m: _curves_from_json(by_seed) for m, by_seed in reuse["curves"][n].items() if m not in models}
            for n in names}


def table(res: dict) -> str:
    models, T = res["models"], res["trials"]
    tag = f" t{round(res['frac'] * 100)}"
    head = f"{'task':22s} {'best µs':>10s}" + "".join(f" {m + tag:>15s}" for m in models)
    rows = [f"{res['target']}: trials to {res['frac']:.0%} of the best latency (mean over {res['seeds']} "
            f"seed(s), {T} trials, batch {res['batch']}; >T = never)", head]
    for name, t in res["tasks"].items():
        cells = []
        for m in models:
            v = t["mean"][m]
            never = sum(x is None for x in t["trials_to"][m].values())
            cells.append(f"{('>' if never == len(t['trials_to'][m]) else '') + f'{v:.1f}':>16s}")
        rows.append(f"{name:22s} {t['best_s'] * 1e6:10.2f}" + "".join(cells))
    rows.append(f"{'geomean ratio to xgb':33s}" + "".join(f" {res['ratio_to_xgb'][m]:>14.2f}x" for m in models))
    if res["ours_over_stock"] is not None:
        rows.append(f"ours / stock (tvm-xgb) trials-to-{res['frac']:.0%}: {res['ours_over_stock']:.2f}x (goal ≤ 0.5x)")
    return "\n".join(rows)


def _finite(x):
    """JSON has no infinity: failed or never-reached values become null."""
    if isinstance(x, dict):
        return {str(k): _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return None if isinstance(x, float) and not math.isfinite(x) else x


def merge(results: list, labels: list, target: str = "sim", frac: float = 0.95) -> dict:
    """Several runs side by side in one table (see ``--merge``). sim: the same tasks in every
    file, each model's curves from one file (the runner is deterministic). cpu: each task from
    one file only (its models were timed side by side in that run; tasks split over processes
    or cores), every task with the same models."""
    first = results[0]
    shape = lambda r: (r.get("trials"), r.get("seeds"), r.get("batch"))  # noqa: E731
    runs, seconds, models = {}, {}, []
    for res, label in zip(results, labels):
        if shape(res) != shape(first) or (target == "sim" and sorted(res["curves"]) != sorted(first["curves"])):
            raise UsageError(f"--merge {label}: trials/seeds/batch {shape(res)} or its tasks differ from the "
                             f"first file's {shape(first)}, {sorted(first['curves'])}")
        for task, by_model in res["curves"].items():
            if target == "cpu" and task in runs:
                raise UsageError(f"--merge {label}: cpu task {task} is in two files (a task's models must "
                                 "be timed side by side in one run)")
            for m, by_seed in by_model.items():
                if m in runs.get(task, {}):
                    raise UsageError(f"--merge {label}: model {m} is in two of the files")
                runs.setdefault(task, {})[m] = _curves_from_json(by_seed)
                seconds.setdefault(task, {})[m] = res["seconds"][task][m]
                if m not in models:
                    models.append(m)
    if "xgb" not in models:
        raise UsageError("--merge: no file holds the xgb reference")
    incomplete = sorted(t for t, by_m in runs.items() if set(by_m) != set(models))
    if incomplete:
        raise UsageError(f"--merge: task(s) {', '.join(incomplete)} lack some of the models {', '.join(models)}")
    models = ["xgb"] + [m for m in models if m != "xgb"]
    runs = {t: {m: by_m[m] for m in models} for t, by_m in runs.items()}
    out = summarize(runs, first["trials"], frac)
    out.update(target=target, seeds=first["seeds"], batch=first["batch"], models=models, seconds=seconds,
               merged=labels, curves=_curves_to_json(runs))
    return out


def _load_results(path: Path, target: str, flag: str) -> dict:
    """The ``target`` part of an earlier ``--json`` file, for ``flag`` (--reuse, --merge)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise UsageError(f"{flag} {path}: cannot read it ({err})") from None
    if target not in data:
        raise UsageError(f"{flag} {path}: no {target} results in it")
    return data[target]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m accelc.benchmarks.bench_tuning", description=__doc__.split("\n")[0])
    ap.add_argument("--target", choices=("sim", "cpu", "both"), default="sim")
    ap.add_argument("--tasks", type=int, default=5, help="tasks per target (default 5)")
    ap.add_argument("--trials", type=int, default=None, help="trials per search (default: sim 96, cpu 32)")
    ap.add_argument("--seeds", type=int, default=None, help="seeds per task and model (default: sim 3, cpu 1)")
    ap.add_argument("--batch", type=int, default=16, help="trials per search iteration (default 16)")
    ap.add_argument("--models", nargs="+", choices=ALL_MODELS, default=list(MODELS),
                    help="cost models (default: xgb tvm-xgb random); xgb is the reference")
    ap.add_argument("--only", nargs="+", default=[], help="these task names instead of the first --tasks")
    ap.add_argument("--json", type=Path, help="write the results (and every run's curve) here")
    ap.add_argument("--reuse", type=Path, help="sim only: take the curves of models not in --models from "
                    "this earlier --json (the sim runner is deterministic)")
    ap.add_argument("--merge", type=Path, nargs="+", metavar="JSON",
                    help="search nothing; put these earlier --json runs (same trials, seeds, batch) side by "
                         "side and print the table. sim: same tasks, each model from one file; cpu: each "
                         "task from one file")
    ap.add_argument("--frac", type=float, default=0.95,
                    help="the bar: trials until the best-so-far is within this fraction of the best (default "
                         "0.95; 1.0 = trials to the best itself)")
    args = ap.parse_args(argv)
    if not 0 < args.frac <= 1:
        raise UsageError(f"--frac {args.frac}: must be in (0, 1]")
    if args.merge:
        if args.target == "both":
            raise UsageError("--merge: name one --target (sim or cpu)")
        res = merge([_load_results(p, args.target, "--merge") for p in args.merge], [str(p) for p in args.merge], args.target,
                    args.frac)
        print(table(res))
        if args.json:
            from accelc.fileio import atomic_write

            text = json.dumps(_finite({args.target: res}), indent=1)
            atomic_write(args.json, lambda tmp: Path(tmp).write_text(text))
        return 0
    limit = {"sim": len(SIM_TASKS), "cpu": len(CPU_TASKS)}
    for t in (["sim", "cpu"] if args.target == "both" else [args.target]):
        if not 1 <= args.tasks <= limit[t]:
            raise UsageError(f"--tasks {args.tasks}: the {t} benchmark has 1..{limit[t]} tasks")
    if min(args.trials or 1, args.seeds or 1, args.batch) < 1:
        raise UsageError("--trials, --seeds and --batch must be positive")
    if "xgb" not in args.models:
        raise UsageError("--models must include xgb (the reference of the ratios)")
    results = {}
    for t in (["sim", "cpu"] if args.target == "both" else [args.target]):
        trials = args.trials or (96 if t == "sim" else 32)
        seeds = args.seeds or (3 if t == "sim" else 1)
        reuse = _load_results(args.reuse, t, "--reuse") if args.reuse else None
        results[t] = run(t, args.tasks, trials, seeds, args.batch, args.models, args.only,
                         log=lambda s: print(s, flush=True), reuse=reuse, frac=args.frac)
        print("\n" + table(results[t]) + "\n", flush=True)
    if args.json:
        from accelc.fileio import atomic_write

        text = json.dumps(_finite(results), indent=1)
        atomic_write(args.json, lambda tmp: Path(tmp).write_text(text))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UsageError as err:
        print(f"accelc: error: {err}", file=sys.stderr)
        sys.exit(2)
