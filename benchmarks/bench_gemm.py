"""fp32 GEMM ``C = A·B`` (B a constant weight): accelc vs NumPy (OpenBLAS), side by side.

    python -m accelc.benchmarks.bench_gemm [--sizes 512,1024] [--threads 2] [--rounds 9]
                                           [--db SIZE=DIR]...

Each round times every contender back to back (≥ ``--budget`` seconds of calls each), so
machine noise hits all alike; the table shows medians over rounds, GFLOP/s and the ratio to
NumPy. NumPy's BLAS threads are limited with threadpoolctl when it is installed; otherwise
OpenBLAS uses every core unless ``OPENBLAS_NUM_THREADS`` is set in the environment (the header
says which applies).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys


def gemm_model(n: int, seed: int = 0):
    """An ONNX ``MatMul`` of an ``[n, n]`` input by a constant ``[n, n]`` weight, and the weight."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(seed).standard_normal((n, n)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "w"], ["c"], name="gemm")], f"gemm{n}",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n])],
                              [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])],
                              [numpy_helper.from_array(w, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), w


def contenders(n: int, db: str | None = None) -> tuple[dict, object, object]:
    """``{name: call}`` for one size, plus A and B; each call computes ``A·B`` once."""
    import numpy as np
    import tvm

    import accelc

    model, w = gemm_model(n)
    a = np.random.default_rng(1).standard_normal((n, n)).astype(np.float32)
    calls = {"numpy (OpenBLAS)": lambda: a @ w}
    for label, database in (("accelc default", None), ("accelc tuned", db)):
        if label == "accelc tuned" and not db:
            continue
        cm = accelc.compile(model, database=database)
        args = [tvm.runtime.tensor(a)]
        vm = cm._vm
        calls[label] = (lambda vm=vm, args=args: vm["main"](*args))
        calls[label + " (check)"] = cm
    return calls, a, w


def _timer(fn, budget: float) -> float:
    import time

    fn()
    t0 = time.perf_counter()
    fn()
    one = max(time.perf_counter() - t0, 1e-7)
    reps = max(1, int(budget / one))
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


def run(sizes, threads: int, rounds: int, budget: float, dbs: dict) -> list[dict]:
    import numpy as np

    from accelc.compiler.runtime import set_num_threads

    set_num_threads(threads)
    rows = []
    for n in sizes:
        calls, a, w = contenders(n, dbs.get(n))
        for key in [k for k in calls if k.endswith("(check)")]:
            got = calls.pop(key).run({"a": a})["c"]
            np.testing.assert_allclose(got, a @ w, rtol=1e-4, atol=1e-3 * np.sqrt(n))
        samples = {k: [] for k in calls}
        for _ in range(rounds):
            for k, fn in calls.items():
                samples[k].append(_timer(fn, budget))
        med = {k: statistics.median(v) for k, v in samples.items()}
        rows.append({"n": n, "median_s": med})
        flops = 2.0 * n ** 3
        base = med["numpy (OpenBLAS)"]
        for k, s in med.items():
            print(f"{n:>6} {k:<20} {s * 1e3:>10.3f} ms {flops / s / 1e9:>9.1f} GFLOP/s {base / s:>8.2f}x of numpy",
                  flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1024")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--budget", type=float, default=0.3, help="seconds of calls per sample")
    ap.add_argument("--db", action="append", default=[], metavar="SIZE=DIR", help="a tuning database for SIZE")
    args = ap.parse_args(argv)
    blas = f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}, {os.cpu_count()} CPUs"
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(args.threads)
        blas = f"threadpoolctl: {args.threads}"
    except ImportError:
        pass
    dbs = {int(k): v for k, _, v in (d.partition("=") for d in args.db)}
    print(f"# fp32 GEMM n×n·n×n (weight constant), {args.threads} threads, median of {args.rounds} interleaved rounds; numpy BLAS threads: {blas}")
    run([int(s) for s in args.sizes.split(",")], args.threads, args.rounds, args.budget, dbs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
