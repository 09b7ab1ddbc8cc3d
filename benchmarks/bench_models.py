"""Zoo latency: accelc (untuned) vs onnxruntime vs stock ``tvm.compile``, side by side.

    python -m accelc.benchmarks.bench_models [--models deit-tiny,bert-encoder] [--threads 2]
                                             [--rounds 7] [--no-stock] [--json out.json]

Every model is compiled once per flow; then, in each round, every flow is timed back to back
(≥ 0.2 s of calls each), so machine noise hits all three alike. The table shows the median
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


def interleaved_medians(calls: dict, rounds: int, budget: float = 0.2) -> dict:
    """Median ms per call of each ``calls[name]()``: every round times each variant back to
    back for ≥ ``budget`` seconds, so machine noise hits all variants alike."""
    import statistics

    times = {name: [] for name in calls}
    for _ in range(rounds):
        for name, fn in calls.items():
            times[name].append(_timer(fn, budget) * 1e3)
    return {name: statistics.median(v) for name, v in times.items()}


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


def run(names, threads: int, rounds: int, stock: bool, budget: float):
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
        sess = session(proto, threads)
        flows["onnxruntime"] = (lambda s=sess, f=feeds: s.run(None, f), 0.0)
        if stock:
            flows["tvm.compile"] = _stock(proto, feeds, threads)
        samples = {k: [] for k in flows}
        for _ in range(rounds):
            for key, (fn, _) in flows.items():
                samples[key].append(_timer(fn, budget if key != "tvm.compile" else budget / 4) * 1e3)
        med = {k: statistics.median(v) for k, v in samples.items()}
        rows.append({"model": name, "median_ms": med, "samples_ms": samples,
                     "compile_s": {k: round(v[1], 2) for k, v in flows.items() if k != "onnxruntime"}})
        print(_row(rows[-1]), flush=True)
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
    ap.add_argument("--json", help="write all samples here")
    args = ap.parse_args(argv)
    import onnxruntime
    import tvm

    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; threads={args.threads}; "
          f"batch 1; median of {args.rounds} interleaved rounds; tvm {tvm.__version__}, "
          f"onnxruntime {onnxruntime.__version__}")
    print(HEADER)
    rows = run(args.models.split(","), args.threads, args.rounds, not args.no_stock, args.budget)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"threads": args.threads, "rounds": args.rounds, "rows": rows}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
