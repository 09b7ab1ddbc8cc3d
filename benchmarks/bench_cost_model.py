"""How well do cost models rank schedules of tasks they never saw? Ours vs TVM's vs random.

    python -m accelc.benchmarks.bench_cost_model [--target cpu|sim] [--ablation] [--online 32]
                                                 [--pool] [--asm] [--fresh] [--collect | --remeasure]

Records: ``benchmarks/data/costmodel/<task>/`` (MetaSchedule JSON databases, gzipped; see
``accelc.schedules.tuning.dataset``): 16 zoo tasks x 96 candidates. ``--collect`` samples and
times new ones (about 1 s per candidate on a quiet machine; resumable, cached in
``~/.cache/accelc/costmodel``). ``--remeasure`` times the stored ones again for this machine,
interleaved (``dataset.retime``: every candidate of a task built for the host target, loaded,
and timed round-robin, fastest of 30 single runs; with ``--pool`` the pool too, about 35 minutes
in all); the shipped records are timed that way. Both run at raised scheduling priority.

``--target sim``: the simulated accelerator's tasks (``bench_tuning.SIM_TASKS``, the int8 GEMMs
the zoo offloads), records in ``benchmarks/data/costmodel-sim/``, candidates from the sim design
space timed by the sim runner: cycles, deterministic, so the labels carry no timing noise.

Leave-one-task-out: for each task, a model is trained on the records of all other tasks and
ranks the held-out task's candidates. ``--pool`` adds a training pool to every model's training
data (``benchmarks/data/costmodel-pool/``: 106 tasks x 32 candidates of the zoo's architectures
at other sizes, ``dataset.POOL_VARIANTS``; never held out, none structurally equal to a
benchmark task); ``--pool --collect`` collects it (about 17 minutes). Metrics per held-out task
(valid candidates only):
pairwise rank accuracy (fraction of pairs with different latencies ordered correctly; also over
pairs > 10 % apart, less exposed to timing noise), and TenSet's top-k score (best latency in
the task / best latency among the model's k highest-ranked candidates), k = 1, 5. Random is the
mean over 200 draws.

``--fresh`` ranks a second held-out set instead (``dataset.FRESH_TASKS``: 13 tasks of the zoo's
architectures at sizes in neither the benchmark nor the pool, frozen after the model's design
was final, records in ``benchmarks/data/costmodel-fresh/``): every model is trained once on all
16 benchmark tasks (``--pool``: and the pool) and ranks each fresh task. ``--fresh --collect``
collects and times that set on this machine (about 15 minutes).

``--ablation`` adds objectives, tree depth, aggregations and feature sets; ``--online K`` the
tuning-time situation: K of the held-out task's records are known too (a model trained on them
alone, warm starts from the others' model, pooled or continued, and TVM's XGBModel fed them all),
ranked on the rest. Takes about 20 minutes with both (TVM's model dominates).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from math import comb
from pathlib import Path

import numpy as np

from accelc.errors import UsageError
from accelc.schedules.tuning.dataset import BUNDLED, CACHE, FRESH

DATA, DATA_POOL = BUNDLED  # the benchmark's 16 tasks, the training pool
DATA_SIM = Path(__file__).resolve().parent / "data" / "costmodel-sim"


# -- metrics ------------------------------------------------------------------------------------
def pairwise_accuracy(latency: np.ndarray, score: np.ndarray, min_ratio: float = 1.0) -> float:
    """Fraction of candidate pairs whose latencies differ (by more than ``min_ratio``) that the
    scores order correctly (higher score = faster); ties in score count half."""
    lat, s = np.asarray(latency, float), np.asarray(score, float)
    i, j = np.triu_indices(len(lat), 1)
    lo, hi = np.minimum(lat[i], lat[j]), np.maximum(lat[i], lat[j])
    keep = hi > lo * min_ratio if min_ratio > 1.0 else hi > lo
    i, j = i[keep], j[keep]
    faster_i = lat[i] < lat[j]
    ds = s[i] - s[j]
    right = np.where(faster_i, ds > 0, ds < 0) + 0.5 * (ds == 0)
    return float(right.mean()) if len(right) else float("nan")


def top_k_score(latency: np.ndarray, score: np.ndarray, k: int) -> float:
    """TenSet's top-k: best latency / best latency among the k highest-scored candidates.

    Candidates tied in score at the k-th place are picked at random, and this is the expected
    score over those picks (exact): the records come from MetaSchedule's database, which keeps
    them sorted by run time, so breaking ties by position would favour a model that ties."""
    lat, s = np.asarray(latency, float), np.asarray(score, float)
    k = min(k, len(lat))
    cut = np.sort(s)[::-1][k - 1]  # the k-th highest score
    sure = lat[s > cut]  # always picked
    tied = np.sort(lat[s == cut])  # r of these m are picked, uniformly
    r, m = k - len(sure), len(tied)
    # P(the fastest picked tie is tied[i]) = C(m-1-i, r-1) / C(m, r)
    p = np.array([comb(m - 1 - i, r - 1) for i in range(m)], float) / comb(m, r)
    best = lat.min()
    best_sure = sure.min() if len(sure) else np.inf
    return float(np.sum(p * best / np.minimum(best_sure, tied)))


def metrics(latency, score) -> dict:
    if np.ndim(score) == 2:  # several draws of a random model: the mean of each metric
        runs = [metrics(latency, s) for s in score]
        return {k: float(np.mean([r[k] for r in runs])) for k in runs[0]}
    return {"pairwise": pairwise_accuracy(latency, score), "pairwise_10pct": pairwise_accuracy(latency, score, 1.1),
            "top1": top_k_score(latency, score, 1), "top5": top_k_score(latency, score, 5)}


# -- data ---------------------------------------------------------------------------------------
def load(data_dir: Path, only=None, kind: str = "llvm"):
    """Records of every task with their features (``dataset.load_with_features``)."""
    from accelc.schedules.tuning import dataset

    return dataset.load_with_features(data_dir, only=only, kind=kind)


def collect_sim(work: Path, trials: int, only=None, log=print) -> None:
    """Random-search records of the sim tasks (resumable, like ``dataset.collect_all``)."""
    from types import SimpleNamespace

    import tvm

    from accelc.benchmarks.bench_tuning import SIM_TASKS
    from accelc.schedules.tuning import dataset
    from accelc.targets.sim import offload
    from accelc.targets.sim.tensorize import workload
    from accelc.targets.sim.tuning import tuning_components

    cfg = offload.default_config()
    comps = tuning_components(cfg)
    for name, m, k, n in SIM_TASKS:
        if only and name not in only:
            continue
        have, t0 = dataset.task_dir_count(work / name), time.perf_counter()
        if have < trials:
            task = SimpleNamespace(dispatched=[tvm.IRModule({"main": workload("gemm", m, k, n, 1, cfg)})],
                                   target=comps["target"])
            have = dataset.collect_task(name, task, work, trials - have, seed=have, builder=comps["builder"],
                                        runner=comps["runner"], space=comps["space"])
        log(f"{name}: {have} records ({time.perf_counter() - t0:.0f} s)")


# -- models under test --------------------------------------------------------------------------
# Each is ``fn(train, tests) -> (model, [scores of each test task])``: one fit, every task scored.
def _as(x, how="mean"):
    """"stats"-aggregated features as the model's aggregation wants them."""
    from accelc.schedules.tuning.dataset import as_model_input

    return as_model_input(x, how)


def ours(train, tests, **kw):
    from tvm.s_tir.meta_schedule.utils import shash2hex

    from accelc.schedules.tuning.cost_model import AccelcXGBModel

    cols = kw.pop("cols", None)
    population = kw.pop("population", False)  # asm: score the test without the assembly group
    model = AccelcXGBModel(**kw)

    def x(t, asm=True):
        v = _as(t.x, model.aggregate)
        v = v if cols is None else _pad(v, cols)
        if model.asm is None:
            return v
        return np.hstack([v, t.asm if asm else np.full_like(t.asm, np.nan)]).astype("float32")

    for t in train:
        model.add(shash2hex(t.context.mod), x(t), t.latency)
    model.fit()
    return model, [model.score(x(t, asm=not population)) for t in tests]


def _pad(x, cols):  # keep only `cols`, zero the rest (same width, so the model is unchanged)
    out = np.zeros_like(x)
    out[:, cols] = x[:, cols]
    return out


def tvm_xgb(train, tests, extractor="per-store-feature", seed=0):
    """TVM's ``XGBModel`` fed the training records through ``update()``, then ``predict()``.

    Its adaptive training would refit (up to 10 000 rounds, early-stopped) after most of the
    per-task updates; only the last fit matters here, so it is held back and done once."""
    from tvm.s_tir import meta_schedule as ms

    model = ms.cost_model.XGBModel(extractor=extractor, num_warmup_samples=0,
                                   config=ms.cost_model.xgb_model.XGBConfig(seed=seed))
    model.last_train_size = 1 << 40
    for t in train:
        model.update(t.context, t.candidates, t.runner_results())
    model._train(*_all_data(model))
    return model, [model.predict(t.context, t.candidates) for t in tests]


def _all_data(model):
    from itertools import chain

    xs = list(chain.from_iterable(g.features for g in model.data.values()))
    ys = np.concatenate([np.divide(g.min_cost, g.costs, out=np.zeros_like(g.costs), where=g.costs != 0)
                         for g in model.data.values()])
    return xs, ys


def random_model(train, tests, seed=0, draws=200):
    """Random scores; its metrics are averaged over ``draws`` draws (the expectation)."""
    rng = np.random.default_rng(seed)
    return None, [rng.uniform(size=(draws, len(t.candidates))) for t in tests]


# -- experiments --------------------------------------------------------------------------------
def leave_one_out(tasks, models: dict, log, pool=()) -> dict:
    """Each task held out in turn; the models train on the others (and on ``pool``)."""
    table = {name: {} for name in models}
    for held in tasks:
        valid = held.subset(np.flatnonzero(held.valid))
        train = [t for t in tasks if t is not held] + list(pool)
        for name, fn in models.items():
            t0 = time.perf_counter()
            _, (score,) = fn(train, [valid])
            table[name][held.name] = {**metrics(valid.latency, score), "seconds": time.perf_counter() - t0}
        log(f"  {held.name:22s} " + "  ".join(f"{n} {table[n][held.name]['pairwise']:.3f}" for n in models))
    return table


def fresh_set(train, tests, models: dict, log) -> dict:
    """Each model fitted once on ``train`` (the benchmark's tasks and the pool), then ranking
    every task of the fresh held-out set (``dataset.FRESH_TASKS``), which no model choice saw."""
    tests = [t.subset(np.flatnonzero(t.valid)) for t in tests]
    table = {name: {} for name in models}
    for name, fn in models.items():
        t0 = time.perf_counter()
        _, scores = fn(train, tests)
        for t, score in zip(tests, scores):
            table[name][t.name] = metrics(t.latency, score)
        log(f"  {name:22s} fitted and scored in {time.perf_counter() - t0:.0f} s")
    for t in tests:
        log(f"  {t.name:26s} " + "  ".join(f"{n} {table[n][t.name]['pairwise']:.3f}" for n in models))
    return table


def online(tasks, known: int, log, seed=0, pool=()) -> dict:
    """The held-out task's first ``known`` records join the training data; rank the rest."""
    from accelc.schedules.tuning.cost_model import AccelcXGBModel

    variants = {}
    out = {k: {} for k in ("ours-cold", "ours-transfer", "ours-warm-pooled", "ours-warm-continue", "tvm-xgb")}
    for held in tasks:
        order = np.random.default_rng(seed).permutation(np.flatnonzero(held.valid))
        seen, rest = held.subset(order[:known]), held.subset(order[known:])
        train = [t for t in tasks if t is not held] + list(pool)
        with tempfile.TemporaryDirectory() as tmp:
            base, _ = ours(train, [rest])
            base.save(str(Path(tmp) / "m.json"))
            variants = {
                "ours-cold": lambda: ours([seen], [rest])[1][0],
                "ours-transfer": lambda: base.score(_as(rest.x)),
                "ours-warm-pooled": lambda: _warm(Path(tmp) / "m.json", "pooled", seen, rest),
                "ours-warm-continue": lambda: _warm(Path(tmp) / "m.json", "continue", seen, rest),
                "tvm-xgb": lambda: tvm_xgb(train + [seen], [rest])[1][0],
            }
            for name, fn in variants.items():
                out[name][held.name] = metrics(rest.latency, fn())
        log(f"  {held.name:22s} " + "  ".join(f"{n} {out[n][held.name]['pairwise']:.3f}" for n in out))
    return out


def _warm(path, mode, seen, rest):
    from tvm.s_tir.meta_schedule.utils import shash2hex

    from accelc.schedules.tuning.cost_model import AccelcXGBModel

    model = AccelcXGBModel(warm_start=str(path), warm_mode=mode)
    model.add(shash2hex(seen.context.mod), _as(seen.x), seen.latency)
    model.fit()
    return model.score(_as(rest.x))


def summarize(table: dict) -> dict:
    return {name: {m: float(np.nanmean([r[m] for r in rows.values()])) for m in
                   ("pairwise", "pairwise_10pct", "top1", "top5")} for name, rows in table.items()}


def print_table(title: str, table: dict) -> None:
    names = list(table)
    tasks = list(next(iter(table.values())))
    print(f"\n{title}\n" + f"{'task':22s}" + "".join(f" | {n:>27s}" for n in names))
    print(f"{'':22s}" + " | pairwise p>10%  top1  top5" * len(names))
    for t in tasks + ["mean"]:
        rows = summarize(table) if t == "mean" else {n: table[n][t] for n in names}
        print(f"{t:22s}" + "".join(f" |   {rows[n]['pairwise']:.3f}  {rows[n]['pairwise_10pct']:.3f} "
                                   f"{rows[n]['top1']:.2f}  {rows[n]['top5']:.2f}" for n in names))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", choices=("cpu", "sim"), default="cpu",
                    help="whose tasks: the CPU's (timed) or the simulated accelerator's (cycles)")
    ap.add_argument("--data", type=Path, default=None, help="task databases (default: the repo's)")
    ap.add_argument("--collect", action="store_true", help="sample and time new records (slow, ~30 min)")
    ap.add_argument("--remeasure", action="store_true", help="time the stored records again (slow)")
    ap.add_argument("--trials", type=int, default=96, help="candidates per task when collecting")
    ap.add_argument("--tasks", help="comma-separated task labels (default: all)")
    ap.add_argument("--pool", action="store_true",
                    help="train every model on the training pool too (dataset.POOL_VARIANTS: the zoo's "
                         "architectures at other sizes; never held out); with --collect, collect the pool")
    ap.add_argument("--ablation", action="store_true", help="also other objectives and feature sets")
    ap.add_argument("--asm", action="store_true",
                    help="also ours with the assembly features (xgb-asm; every candidate built once, cached): "
                         "ranking with them, and the same model ranking without them (as for a population)")
    ap.add_argument("--fresh", action="store_true",
                    help="rank the fresh held-out set instead (dataset.FRESH_TASKS, benchmarks/data/"
                         "costmodel-fresh): every model trained once on the benchmark's tasks (and with "
                         "--pool the pool); with --collect, collect and time that set on this machine")
    ap.add_argument("--pack-asm", action="store_true",
                    help="write the assembly features of every stored record (benchmark, pool, fresh set) "
                         "into benchmarks/data/costmodel-asm.npz, shipped so that --asm and the xgb-asm "
                         "warm start need not build them; then stop")
    ap.add_argument("--online", type=int, default=0, metavar="K",
                    help="also rank with K of the held-out task's own records known (warm start)")
    ap.add_argument("--out", type=Path, default=None, help="JSON results (default: DATA/results.json)")
    args = ap.parse_args(argv)
    sim = args.target == "sim"
    args.data = args.data or (DATA_SIM if sim else DATA)
    args.out = args.out or ((FRESH / f"results{'-pool' if args.pool else ''}{'-asm' if args.asm else ''}.json")
                            if args.fresh else args.data / ("results-pool.json" if args.pool else "results.json"))
    kind = "sim" if sim else "llvm"
    os.environ.setdefault("TVM_NUM_THREADS", str(len(os.sched_getaffinity(0))))
    only = args.tasks.split(",") if args.tasks else None
    if sim and args.remeasure:
        raise UsageError("--remeasure: sim records are simulated cycles; timing them again changes nothing")
    if sim and args.pool:
        raise UsageError("--pool: the training pool holds CPU tasks; the sim target has none")
    if args.fresh and (sim or args.remeasure or args.online):
        raise UsageError("--fresh: the fresh held-out set holds CPU tasks, timed once; it takes none of "
                         "--target sim, --remeasure, --online")
    if args.pack_asm:
        from accelc.schedules.tuning import dataset

        n = dataset.pack_asm_features()
        print(f"wrote {dataset.SHIPPED_ASM}: assembly features of {n} records")
        return 0
    if sim and args.collect:
        from accelc.schedules.tuning import dataset

        work = CACHE / "sim-db"
        collect_sim(work, args.trials, only)
        dataset.pack(work, args.data, only=only)
    elif args.collect and args.fresh:
        from accelc.schedules.tuning import dataset
        from accelc.targets import cpu

        _raise_priority()
        target = cpu.host_target()
        tasks = dataset.fresh_tasks(target, only)
        dataset.collect_all(CACHE / "fresh-db", target, trials=args.trials, tasks=tasks)
        for label, _ in tasks:  # timed again, interleaved, as the stored benchmark records were
            dataset.retime(CACHE / "fresh-db" / label, CACHE / "retimed" / FRESH.name, target=target)
        dataset.pack(CACHE / "retimed" / FRESH.name, FRESH, only=[label for label, _ in tasks])
        return 0
    elif args.collect and args.pool:
        from accelc.schedules.tuning import dataset
        from accelc.targets import cpu

        _raise_priority()
        work = CACHE / "pool-db"
        target = cpu.host_target()
        dataset.collect_all(work, target, trials=args.trials, tasks=dataset.pool_tasks(target, only))
        dataset.pack(work, DATA_POOL, only=only)
        return 0
    elif args.remeasure:
        from accelc.schedules.tuning import dataset
        from accelc.targets import cpu

        _raise_priority()
        target = cpu.host_target()
        dirs = {data: [n for n in dataset.task_names(data) if not only or n in only]
                for data in ((args.data, DATA_POOL) if args.pool else (args.data,))}
        missing = sorted(set(only or ()) - {n for names in dirs.values() for n in names})
        if missing:
            raise UsageError(f"--tasks: no records for {', '.join(missing)} in {', '.join(map(str, dirs))}")
        for data, names in dirs.items():  # --tasks picks from the benchmark's and (--pool) the pool's
            work = CACHE / "retimed" / data.name
            for name in names:
                dataset.retime(data / name, work, target=target)
            if names:
                dataset.pack(work, data, only=names)
    elif args.collect:
        from accelc.schedules.tuning import dataset
        from accelc.targets import cpu

        _raise_priority()
        work = CACHE / "db"
        dataset.collect_all(work, cpu.host_target(), trials=args.trials, only=only)
        dataset.pack(work, args.data, only=only)
    t0 = time.perf_counter()
    tasks = load(args.data, only=only, kind=kind)
    print(f"{len(tasks)} tasks, {sum(len(t.candidates) for t in tasks)} records "
          f"({sum(int(t.valid.sum()) for t in tasks)} valid), features in {time.perf_counter() - t0:.0f} s")
    pool = []
    if args.pool:
        pool = [t for t in load(DATA_POOL, kind=kind) if t.valid.sum() >= 2]
        print(f"training pool: {len(pool)} tasks, {sum(int(t.valid.sum()) for t in pool)} valid records")
    if args.asm:
        if sim:
            raise UsageError("--asm: the assembly features read x86 code; the sim target's tasks have none")
        from accelc.schedules.tuning import dataset

        dataset.load_asm_features(args.data, tasks)
        if pool:
            dataset.load_asm_features(DATA_POOL, pool)

    from accelc.schedules.tuning.features import CPU_NAMES, PER_STORE_LENGTH

    models = {"ours": (lambda tr, te: ours(tr, te, target_kind="sim")) if sim else ours,
              "tvm-xgb": tvm_xgb, "random": random_model}
    if sim:
        from accelc.schedules.tuning.features import PER_STORE_LENGTH as P
        from accelc.schedules.tuning.features import SIM_EXACT_NAMES, feature_names

        # columns after `_as`: per-store means, the store count, then the target features
        no_exact = list(range(P + 1)) + [P + 1 + i for i, n in enumerate(feature_names("sim")[P:])
                                         if n not in SIM_EXACT_NAMES]
        models["ours-no-exact-sim"] = lambda tr, te: ours(tr, te, target_kind="sim", cols=no_exact)
    if args.asm:
        models["ours-asm"] = lambda tr, te: ours(tr, te, asm=True)
        models["ours-asm-no-build"] = lambda tr, te: ours(tr, te, asm=True, population=True)
        from accelc.schedules.tuning.cost_model import ASM_PARAMS, DEFAULT_PARAMS, DEFAULT_ROUNDS

        # the assembly booster as it was before 2026-12-08: the plain booster's parameters (depth 4)
        plain = {k: DEFAULT_PARAMS[k] for k in ASM_PARAMS}
        models["ours-asm-depth4"] = lambda tr, te: ours(tr, te, asm=True, asm_params=plain, asm_rounds=DEFAULT_ROUNDS)
    if args.ablation and not sim:
        psf_only = list(range(PER_STORE_LENGTH + 1))
        target_only = list(range(PER_STORE_LENGTH + 1, PER_STORE_LENGTH + 1 + len(CPU_NAMES)))
        models.update({
            "ours-ndcg": lambda tr, te: ours(tr, te, objective="rank:ndcg"),
            "ours-regression": lambda tr, te: ours(tr, te, objective="reg:squarederror"),
            "ours-depth6": lambda tr, te: ours(tr, te, params={"max_depth": 6}),
            "ours-depth3-eta0.1": lambda tr, te: ours(tr, te, params={"max_depth": 3, "eta": 0.1}, rounds=200),
            "ours-mean/max/min": lambda tr, te: ours(tr, te, aggregate="stats"),
            "ours-psf-only": lambda tr, te: ours(tr, te, cols=psf_only),
            "ours-target-only": lambda tr, te: ours(tr, te, cols=target_only),
            "tvm-xgb+our-features": lambda tr, te: tvm_xgb(tr, te, extractor=_accelc_features()),
        })
    from accelc.schedules.tuning.features import host_caches

    # the cache-traffic features are sized by the caches of the machine running this
    result = {"pool": {"tasks": len(pool), "records": sum(int(t.valid.sum()) for t in pool)},
              "tasks": _task_summary(tasks), "host_caches": list(host_caches())}
    if args.fresh:
        fresh = load(FRESH, only=None, kind=kind)
        if args.asm:
            dataset.load_asm_features(FRESH, fresh)
        result["tasks"] = _task_summary(fresh)
        result["trained_on"] = [t.name for t in tasks]
        print(f"fresh held-out set: {len(fresh)} tasks, {sum(int(t.valid.sum()) for t in fresh)} valid records; "
              f"models trained on {len(tasks)} benchmark tasks" + (f" and {len(pool)} pool tasks" if pool else ""))
        table = fresh_set(tasks + pool, fresh, models, print)
        print_table("fresh held-out tasks", table)
        result["fresh"], result["mean"] = table, summarize(table)
        return _write(args.out, result)
    print("leave-one-task-out (pairwise accuracy per held-out task):")
    loo = leave_one_out(tasks, models, print, pool=pool)
    print_table("held-out tasks", loo)
    result["leave_one_out"], result["mean"] = loo, summarize(loo)
    if args.online:
        print(f"\nonline: {args.online} of the held-out task's records known")
        on = online(tasks, args.online, print, pool=pool)
        print_table(f"held-out tasks, {args.online} own records known", on)
        result["online"], result["online_mean"] = on, summarize(on)
    return _write(args.out, result)


def _task_summary(tasks) -> dict:
    return {t.name: {"records": len(t.candidates), "valid": int(t.valid.sum()),
                     "best_ms": float(t.latency.min() * 1e3)} for t in tasks}


def _write(out: Path, result: dict) -> int:
    from accelc.fileio import atomic_write

    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda tmp: Path(tmp).write_text(json.dumps(result, indent=1, sort_keys=True) + "\n"))
    print(f"\nwrote {out}")
    return 0


def _raise_priority() -> None:
    """Measure at the highest scheduling priority allowed: on a shared machine every
    preemption of a two-thread kernel costs a whole scheduler tick."""
    try:
        os.nice(-20)
    except OSError:
        print("note: could not raise the scheduling priority; timings will be noisier", file=sys.stderr)


def _accelc_features():
    from accelc.schedules.tuning.features import AccelcFeatures

    return AccelcFeatures("llvm")


if __name__ == "__main__":
    from accelc.errors import AccelcError

    try:
        sys.exit(main())
    except AccelcError as err:
        print(f"accelc: error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
