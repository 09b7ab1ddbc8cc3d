"""Zoo latency: accelc (untuned) vs onnxruntime vs stock ``tvm.compile``, side by side.

    python -m accelc.benchmarks.bench_models [--models deit-tiny,bert-encoder] [--threads 2]
                                             [--rounds 7] [--no-stock] [--json out.json]
                                             [--variant LABEL=PASS[+PASS…]]…
                                             [--db MODEL=DIR]…

``--db bert-encoder=bert.tune`` adds the flow "accelc tuned": the model compiled with that
``accelc tune`` database (``compile --db``), timed in the same rounds.

``--variant sa+lin=shift-add:terms=2+linearize`` adds a flow: the model rewritten with those
passes (in order), timed in the same rounds and compared with onnxruntime on the *original*
model: speed-up (ort ms / variant ms) and fidelity (cosine, top-1 of the first output).

Every model is compiled once per flow; then, in each round, every flow is timed back to back
(≥ 0.2 s of calls each), so machine noise hits all three alike, with ``--pause`` seconds (0.5)
of sleep before each: TVM's and onnxruntime's worker threads spin for a while after a call, and
on two cores a spinning thread takes half of the next flow's CPU. The table shows the median
over rounds and the ratios. Batch 1, the same seeded inputs for every flow.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time


def _timer(fn, budget: float):
    """Mean seconds per call of ``fn`` over at least ``budget`` seconds (≥ 1 call)."""
    t0 = time.perf_counter()
    fn()
    one = time.perf_counter() - t0
    n = max(1, int(budget / max(one, 1e-6)))
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


#: Seconds of sleep before timing each variant: after a call, TVM's and onnxruntime's worker
#: threads (and OpenBLAS's) keep spinning for a while, and on two cores a spinning thread takes
#: half of the next variant's CPU.
PAUSE = 0.5


def interleaved_samples(calls: dict, rounds: int, budget: float = 0.2, pause: float = PAUSE,
                        budgets: dict | None = None) -> dict:
    """ms per call of each ``calls[name]()``, one sample per round: every round times each
    variant back to back for ≥ ``budget`` seconds (``budgets[name]`` where given), after
    ``pause`` seconds of sleep, so machine noise hits all variants alike."""
    times = {name: [] for name in calls}
    for _ in range(rounds):
        for name, fn in calls.items():
            time.sleep(pause)  # the previous variant's worker threads stop spinning
            times[name].append(_timer(fn, (budgets or {}).get(name, budget)) * 1e3)
    return times


def interleaved_medians(calls: dict, rounds: int, budget: float = 0.2, pause: float = PAUSE) -> dict:
    """Median over ``interleaved_samples``' rounds, per variant (ms per call)."""
    return {name: statistics.median(v) for name, v in interleaved_samples(calls, rounds, budget, pause).items()}


def _stock(proto, feeds, threads):
    """Plain TVM: from_onnx + tvm.compile (legalize only; no fusion, no schedule)."""
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    t0 = time.perf_counter()
    mod = from_onnx(proto)
    ex = tvm.compile(mod, tvm.target.Target({"kind": "llvm", "num-cores": threads}))
    secs = time.perf_counter() - t0
    vm = relax.VirtualMachine(ex, tvm.cpu())
    args = [tvm.runtime.tensor(feeds[i.name]) for i in proto.graph.input
            if i.name not in {t.name for t in proto.graph.initializer}]
    return (lambda: vm["main"](*args)), secs


def parse_variant(spec: str) -> tuple[str, list[str]]:
    """``LABEL=PASS+PASS`` → (label, [pass specs])."""
    label, eq, passes = spec.partition("=")
    if not eq or not label or not passes:
        raise SystemExit(f"--variant {spec!r}: expected LABEL=PASS[+PASS...]")
    return label, [p for p in passes.split("+") if p]


def fidelity(got, want) -> dict:
    """Cosine and top-1 agreement (over the last axis) of ``got`` against ``want``."""
    import numpy as np

    a, b = np.asarray(got, np.float64), np.asarray(want, np.float64)
    cos = float((a * b).sum() / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30))
    top1 = float((a.reshape(-1, a.shape[-1]).argmax(-1) == b.reshape(-1, b.shape[-1]).argmax(-1)).mean())
    return {"cosine": cos, "top1": top1}


def run(names, threads: int, rounds: int, stock: bool, budget: float, variants=(), dbs=None, pause: float = PAUSE):
    import accelc
    from accelc import models
    from accelc.compiler.oracle import session
    from accelc.compiler.runtime import set_num_threads

    set_num_threads(threads)
    rows = []
    for name in names:
        proto, feeds = models.build(name), models.example_inputs(name)
        t0 = time.perf_counter()
        compiled = accelc.compile(proto)
        flows = {"accelc": (lambda c=compiled, f=feeds: c.run(f), time.perf_counter() - t0)}
        if (dbs or {}).get(name):
            t0 = time.perf_counter()
            tuned = accelc.compile(proto, database=dbs[name])
            flows["accelc tuned"] = (lambda c=tuned, f=feeds: c.run(f), time.perf_counter() - t0)
        sess = session(proto, threads)
        flows["onnxruntime"] = (lambda s=sess, f=feeds: s.run(None, f), 0.0)
        if stock:
            flows["tvm.compile"] = _stock(proto, feeds, threads)
        want = sess.run(None, feeds)[0]
        fid = {}
        for label, passes in variants:
            t0 = time.perf_counter()
            cm = accelc.compile(proto, passes=passes, calibration=[models.example_inputs(name, seed=s)
                                                                   for s in (1, 2)])
            flows[label] = (lambda c=cm, f=feeds: c.run(f), time.perf_counter() - t0)
            fid[label] = fidelity(next(iter(cm.run(feeds).values())), want)
        samples = interleaved_samples({k: fn for k, (fn, _) in flows.items()}, rounds, budget, pause,
                                      budgets={"tvm.compile": budget / 4})
        med = {k: statistics.median(v) for k, v in samples.items()}
        rows.append({"model": name, "median_ms": med, "samples_ms": samples, "fidelity": fid,
                     "compile_s": {k: round(v[1], 2) for k, v in flows.items() if k != "onnxruntime"}})
        print(_row(rows[-1]), flush=True)
        if "accelc tuned" in med:
            print(f"  {'accelc tuned':<24} {med['accelc tuned']:>10.2f} ms   tuned/ort {med['accelc tuned'] / med['onnxruntime']:.2f}x"
                  f"   untuned/tuned {med['accelc'] / med['accelc tuned']:.2f}x", flush=True)
        for label, _ in variants:
            f = fid[label]
            print(f"  {label:<24} {med[label]:>10.2f} ms   ort(original)/variant {med['onnxruntime'] / med[label]:.2f}x"
                  f"   accelc/variant {med['accelc'] / med[label]:.2f}x   cosine {f['cosine']:.5f}"
                  f"   top-1 {f['top1'] * 100:.1f}%", flush=True)
    return rows


def _row(r) -> str:
    m = r["median_ms"]
    stock = m.get("tvm.compile")
    cells = [f"{r['model']:<14}", f"{m['accelc']:>10.2f}", f"{m['onnxruntime']:>12.2f}",
             f"{stock:>12.1f}" if stock else f"{'-':>12}",
             f"{m['accelc'] / m['onnxruntime']:>13.2f}x",
             f"{stock / m['accelc']:>13.1f}x" if stock else f"{'-':>14}"]
    return " ".join(cells)


HEADER = (f"{'model':<14} {'accelc ms':>10} {'onnxrt ms':>12} {'tvm.compile':>12} "
          f"{'accelc/ort':>14} {'stock/accelc':>14}")


def main(argv=None) -> int:
    from accelc import models

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(models.names(include_real=False)))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--budget", type=float, default=0.2, help="seconds of calls per sample")
    ap.add_argument("--no-stock", action="store_true", help="skip stock tvm.compile (slow: naive loops)")
    ap.add_argument("--pause", type=float, default=PAUSE, help="seconds to sleep before timing each flow")
    ap.add_argument("--json", help="write all samples here")
    ap.add_argument("--variant", action="append", default=[], metavar="LABEL=PASS[+PASS...]",
                    help="also time the model rewritten with these passes (repeatable)")
    ap.add_argument("--db", action="append", default=[], metavar="MODEL=DIR",
                    help="also time MODEL compiled with this tuning database (repeatable)")
    args = ap.parse_args(argv)
    variants = [parse_variant(v) for v in args.variant]
    dbs = dict(parse_variant(d) for d in args.db)
    dbs = {k: v[0] for k, v in dbs.items()}
    import onnxruntime
    import tvm

    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; threads={args.threads}; "
          f"batch 1; median of {args.rounds} interleaved rounds, {args.pause} s pause; tvm {tvm.__version__}, "
          f"onnxruntime {onnxruntime.__version__}")
    print(HEADER)
    rows = run(args.models.split(","), args.threads, args.rounds, not args.no_stock, args.budget, variants, dbs,
               args.pause)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"threads": args.threads, "rounds": args.rounds, "rows": rows}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
