"""fp32 GEMM ``C = A·B`` (B a constant weight): accelc vs NumPy (OpenBLAS), side by side.

    python -m accelc.benchmarks.bench_gemm [--sizes 512,1024] [--threads 2] [--rounds 9]
                                           [--db SIZE=DIR]... [--int8]

``--int8`` adds the model compiled with ``--passes int8`` (dynamic per-row int8 activations,
per-channel int8 weights, int32 accumulation: the ``vpdpbusd`` kernel on AVX-512 VNNI CPUs,
the generic one elsewhere), timed whole (quantizing the activations included) and checked
against the fp32 product to 2% relative error; its row also gives the speed-up over accelc's
fp32 default.

Each round times every contender back to back (≥ ``--budget`` seconds of calls each), so
machine noise hits all alike; the table shows medians over rounds, GFLOP/s and the ratio to
NumPy. Between two contenders the benchmark sleeps ``--pause`` seconds: after a call,
OpenBLAS's worker threads spin for a while (up to ~0.1 s by default) and TVM's thread pool
briefly too, and on a 2-core machine a spinning thread takes half of the next contender's
cores (measured on the AVX-512 host: accelc fp32 at 0.76x NumPy right after NumPy, faster than
NumPy when timed alone). NumPy's BLAS threads are limited with threadpoolctl when it is installed; otherwise
OpenBLAS uses every core unless ``OPENBLAS_NUM_THREADS`` is set in the environment (the header
says which applies).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

from .bench_models import PAUSE  # seconds for the previous contender's worker threads to stop spinning


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


INT8 = "accelc int8"


def int8_kernel_name() -> str:
    from accelc.schedules.cpu.int8 import has_vnni
    from accelc.targets import cpu

    return "AVX-512 VNNI vpdpbusd" if has_vnni(cpu.host_target()) else "generic int32 (no VNNI on this CPU)"


def contenders(n: int, db: str | None = None, int8: bool = False) -> tuple[dict, object, object]:
    """``{name: call}`` for one size, plus A and B; each call computes ``A·B`` once."""
    import numpy as np
    import tvm

    import accelc

    model, w = gemm_model(n)
    a = np.random.default_rng(1).standard_normal((n, n)).astype(np.float32)
    calls = {"numpy (OpenBLAS)": lambda: a @ w}
    for label, database, passes in (("accelc default", None, ()), ("accelc tuned", db, ()),
                                     (INT8, None, ("int8",))):
        if (label == "accelc tuned" and not db) or (label == INT8 and not int8):
            continue
        cm = accelc.compile(model, database=database, passes=list(passes))
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


def run(sizes, threads: int, rounds: int, budget: float, dbs: dict, int8: bool = False,
        pause: float = PAUSE) -> list[dict]:
    import time

    import numpy as np

    from accelc.compiler.runtime import set_num_threads

    set_num_threads(threads)
    rows = []
    for n in sizes:
        calls, a, w = contenders(n, dbs.get(n), int8)
        for key in [k for k in calls if k.endswith("(check)")]:
            got = calls.pop(key).run({"a": a})["c"]
            if key.startswith(INT8):  # quantized: within int8's error of the fp32 product
                ref = a @ w
                rel = float(np.linalg.norm(got - ref) / np.linalg.norm(ref))
                assert rel <= 2e-2, f"int8 GEMM relative error {rel:.3g}"
            else:
                np.testing.assert_allclose(got, a @ w, rtol=1e-4, atol=1e-3 * np.sqrt(n))
        samples = {k: [] for k in calls}
        for _ in range(rounds):
            for k, fn in calls.items():
                time.sleep(pause)  # the previous contender's worker threads stop spinning
                samples[k].append(_timer(fn, budget))
        med = {k: statistics.median(v) for k, v in samples.items()}
        rows.append({"n": n, "median_s": med})
        flops = 2.0 * n ** 3
        base = med["numpy (OpenBLAS)"]
        for k, s in med.items():
            vs = f"  {med['accelc default'] / s:.2f}x of accelc fp32" if k == INT8 else ""
            print(f"{n:>6} {k:<20} {s * 1e3:>10.3f} ms {flops / s / 1e9:>9.1f} GFLOP/s {base / s:>8.2f}x of numpy"
                  f"{vs}", flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1024")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--budget", type=float, default=0.3, help="seconds of calls per sample")
    ap.add_argument("--db", action="append", default=[], metavar="SIZE=DIR", help="a tuning database for SIZE")
    ap.add_argument("--int8", action="store_true", help="add the int8-rewritten GEMM (VNNI where the CPU has it)")
    ap.add_argument("--pause", type=float, default=PAUSE,
                    help="seconds to sleep between contenders (worker threads of the previous one stop spinning)")
    args = ap.parse_args(argv)
    blas = f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}, {os.cpu_count()} CPUs"
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(args.threads)
        blas = f"threadpoolctl: {args.threads}"
    except ImportError:
        pass
    dbs = {int(k): v for k, _, v in (d.partition("=") for d in args.db)}
    print(f"# fp32 GEMM n×n·n×n (weight constant), {args.threads} threads, median of {args.rounds} interleaved rounds "
          f"({args.pause} s pause between contenders); numpy BLAS threads: {blas}")
    if args.int8:
        print(f"# int8 kernel: {int8_kernel_name()} (GFLOP/s counts its integer MACs as 2 ops)")
    run([int(s) for s in args.sizes.split(",")], args.threads, args.rounds, args.budget, dbs, args.int8, args.pause)
    return 0


if __name__ == "__main__":
    sys.exit(main())
