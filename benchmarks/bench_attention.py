"""Attention block latency: softmax attention vs linearized and 90%-polarized, side by side.

    python -m accelc.benchmarks.bench_attention [--threads 2] [--rounds 7] [--tokens 197,512,2048]

One ``softmax(Q·Kᵀ/√d)·V`` module per N (B=1, H heads, d=64) compiled by accelc as is, and
rewritten by ``linearize`` (angular; causal chunked; local-softmax hybrid) and ``polarize``
(sparsity 0.9 on a ViT-like calibration map: a few global tokens plus a local band, as the
ViTCoD maps look). Every round times each variant back to back for ≥ 0.2 s; the table shows
medians, the ratio to softmax attention, and the MACs each variant does.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys

import numpy as np

from .bench_models import interleaved_medians


def _module(h: int, n: int, d: int, causal: bool):
    from tvm import relax

    bb = relax.BlockBuilder()
    ty = relax.TensorType((1, h, n, d), "float32")
    q, k, v = (relax.Var(name, ty) for name in "qkv")
    with bb.function("main", [q, k, v]):
        with bb.dataflow():
            s = bb.emit(relax.op.matmul(q, relax.op.permute_dims(k, [0, 1, 3, 2])))
            s = bb.emit(relax.op.multiply(s, relax.const(1.0 / np.sqrt(d), "float32")))
            if causal:
                keep = relax.const(np.tril(np.ones((n, n), bool))[None, None])
                s = bb.emit(relax.op.where(keep, s, relax.const(np.finfo(np.float32).min, "float32")))
            p = bb.emit(relax.op.nn.softmax(s, axis=-1))
            o = bb.emit_output(relax.op.matmul(p, v))
        bb.emit_func_output(o)
    return bb.get()


def vit_like_map(h: int, n: int, seed: int = 0, causal: bool = False) -> np.ndarray:
    """A calibration map shaped like ViT attention: ~3% global tokens take half the mass, the
    rest is a local band with noise (rows sum to 1)."""
    rng = np.random.default_rng(seed)
    idx = np.arange(n)
    maps = np.empty((h, n, n))
    for head in range(h):
        glob = rng.choice(n, max(1, n // 32), replace=False)
        band = np.exp(-np.abs(idx[:, None] - idx[None, :]) / 4.0)
        m = band + 0.05 * rng.random((n, n))
        m[:, glob] += band.sum(1, keepdims=True) / len(glob)
        if causal:
            m = np.tril(m)
        maps[head] = m / m.sum(1, keepdims=True)
    return maps


VARIANTS = {  # name: (pass spec or None for the original, needs calibration maps)
    "softmax": (None, False),
    "linear": ("linearize:keep_last=0", False),
    "linear+local": ("linearize:keep_last=0,local=softmax", True),
    "polar-90%": ("polarize:sparsity=0.9", True),
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--tokens", default="197,512,2048")
    ap.add_argument("--causal", action="store_true", help="causal attention (GPT-style) instead of ViT-style")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    ap.add_argument("--json", help="write the medians here")
    args = ap.parse_args(argv)
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    import accelc
    from accelc import passes as registry
    from accelc.compiler.frontend import import_relax
    from accelc.compiler.runtime import set_num_threads

    set_num_threads(args.threads)
    d, h = 64, args.heads
    results = {}
    print(f"# {platform.processor() or platform.machine()}, {args.threads} threads, median of {args.rounds} "
          f"rounds; B=1 H={h} d={d}{' causal' if args.causal else ''}; accelc untuned schedules", file=sys.stderr)
    for n in (int(t) for t in args.tokens.split(",")):
        mod = _module(h, n, d, args.causal)
        rng = np.random.default_rng(1)
        feeds = {name: rng.standard_normal((1, h, n, d)).astype(np.float32) for name in "qkv"}
        maps = {"attention_0": vit_like_map(h, n, causal=args.causal)}
        runs, macs = {}, {}
        for name in args.variants.split(","):
            spec, needs_maps = VARIANTS[name]
            if spec is None:
                runs[name] = accelc.compile(mod)
                macs[name] = 2 * h * n * n * d
                continue
            p = registry.make(spec, calibrated={"maps": maps} if needs_maps else None)
            import tvm

            with tvm.transform.PassContext(opt_level=3):
                rewritten = p(import_relax(mod).mod)
            rec = json.loads(str(rewritten.attrs["accelc.rewrites"]))[-1]["sites"][0]
            macs[name] = rec["macs_after"]
            runs[name] = accelc.compile(rewritten)
        calls = {name: (lambda cm=cm: cm.run(feeds)) for name, cm in runs.items()}
        med = interleaved_medians(calls, args.rounds)
        results[n] = {"median_ms": med, "macs": macs}
        print(f"\nN={n}")
        print(f"  {'variant':<14}{'median ms':>11}{'vs softmax':>12}{'MACs':>12}")
        for name, t in med.items():
            print(f"  {name:<14}{t:>11.3f}{med['softmax'] / t:>11.2f}x{macs[name] / 1e6:>11.1f}M")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
