"""Shift-add kernels vs fp32 dense, side by side: batch-1 GEMV 1×4096×4096 and the zoo
models' linear shapes, on the CPU target (untuned schedules), plus onnxruntime's MatMul.

    python -m accelc.benchmarks.bench_shift_add [--threads 2] [--rounds 7] [--shapes gemv,minilm-fc1]

Each variant is one ``R.matmul(x, W)`` module compiled by accelc (dense) or rewritten by the
``shift-add`` pass first; in every round each variant is timed back to back for ≥ 0.2 s, so
machine noise hits all alike. The table shows medians over rounds, the ratio to fp32 dense,
and the weight bytes each variant streams.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys

import numpy as np

from .bench_models import interleaved_medians

SHAPES = {  # name: (M, K, N)
    "gemv-4096": (1, 4096, 4096),
    "minilm-fc1": (32, 384, 1536),
    "minilm-qkv": (32, 384, 384),
    "deit-fc1": (197, 192, 768),
    "bert-fc2": (128, 1536, 384),
}
VARIANTS = {
    "pot1-int": "shift-add:terms=1,keep_first=0,keep_last=0",
    "pot2-int": "shift-add:terms=2,keep_first=0,keep_last=0",
    "pot1-float": "shift-add:terms=1,path=float,keep_first=0,keep_last=0",
    "bcq3-lut": "shift-add:mode=bcq,bits=3,keep_first=0,keep_last=0,rounds=5",
    "bcq2-lut": "shift-add:mode=bcq,bits=2,keep_first=0,keep_last=0,rounds=5",
}


def _module(m, k, n, seed=0):
    from tvm import relax

    w = (np.random.default_rng(seed).standard_normal((k, n)) * 0.05).astype(np.float32)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((m, k), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit_output(relax.op.matmul(x, relax.const(w)))
        bb.emit_func_output(y)
    return bb.get(), w


def _ort_matmul(w, threads):
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    k, n = w.shape
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "mm",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", n])],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--shapes", default=",".join(SHAPES), help=f"comma list of {', '.join(SHAPES)}")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    ap.add_argument("--json", help="write the medians here")
    args = ap.parse_args(argv)
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    import accelc
    from accelc.compiler import pipeline
    from accelc.compiler.frontend import import_relax
    from accelc.compiler.runtime import set_num_threads

    set_num_threads(args.threads)
    results = {}
    print(f"# {platform.processor() or platform.machine()}, {args.threads} threads, median of {args.rounds} "
          f"rounds; accelc untuned schedules", file=sys.stderr)
    for shape in args.shapes.split(","):
        m, k, n = SHAPES[shape]
        mod, w = _module(m, k, n)
        x = np.random.default_rng(1).standard_normal((m, k)).astype(np.float32)
        runs = {"fp32-dense": accelc.compile(mod)}
        weight_bytes = {"fp32-dense": w.nbytes, "ort-fp32": w.nbytes}
        for name in args.variants.split(","):
            rewritten, _ = pipeline.apply_passes(import_relax(mod), [VARIANTS[name]])
            rec = json.loads(str(rewritten.attrs["accelc.rewrites"]))[0]["layers"][0]
            weight_bytes[name] = rec["bytes_after"]
            runs[name] = accelc.compile(rewritten)
        sess = _ort_matmul(w, args.threads)
        calls = {name: (lambda cm=cm: cm.run({"x": x})) for name, cm in runs.items()}
        calls["ort-fp32"] = lambda: sess.run(None, {"x": x})
        med = interleaved_medians(calls, args.rounds)
        results[shape] = {"mkn": [m, k, n], "median_ms": med, "weight_bytes": weight_bytes}
        print(f"\n{shape} (M={m}, K={k}, N={n})")
        print(f"  {'variant':<12}{'median ms':>11}{'speedup':>15}{'weight MB':>11}")
        for name, t in med.items():
            print(f"  {name:<12}{t:>11.3f}{med['fp32-dense'] / t:>14.2f}x{weight_bytes[name] / 1e6:>11.2f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
