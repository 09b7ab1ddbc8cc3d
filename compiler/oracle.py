"""onnxruntime as the differential-testing oracle and the benchmark baseline."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from ..errors import UsageError


def have_onnxruntime() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def session(model, threads: int | None = None):
    """An onnxruntime session (CPU provider) for a path, bytes or ModelProto."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise UsageError("onnxruntime is not installed: pip install onnxruntime (or accelc[verify])") from None
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    src = model.SerializeToString() if hasattr(model, "SerializeToString") else str(model)
    return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])


def run_onnxruntime(model, feeds: Mapping[str, np.ndarray], meta=None, threads: int | None = None
                    ) -> dict[str, np.ndarray]:
    sess = session(model, threads)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, dict(feeds))))


@dataclass(frozen=True)
class Comparison:
    name: str
    max_abs: float
    max_rel: float
    ok: bool


def compare(ours: Mapping[str, np.ndarray], ref: Mapping[str, np.ndarray], rtol: float = 1e-3,
            atol: float = 1e-4) -> Comparison:
    """The worst output of ``ours`` vs ``ref`` under ``|a - b| <= atol + rtol·|b|``
    (a failing output first, then the largest absolute error)."""
    results = [_compare_one(name, np.asarray(ours[name]), np.asarray(b), rtol, atol)
               for name, b in ref.items()]
    if not results:
        return Comparison("", 0.0, 0.0, True)
    return max(results, key=lambda c: (not c.ok, c.max_abs))


def _compare_one(name: str, a: np.ndarray, b: np.ndarray, rtol: float, atol: float) -> Comparison:
    if a.shape != b.shape:
        return Comparison(name, float("inf"), float("inf"), False)
    if a.dtype.kind in "biu" and b.dtype.kind in "biu":
        diff = np.abs(a.astype(np.int64) - b.astype(np.int64))
        worst = float(diff.max(initial=0))
        return Comparison(name, worst, worst, bool(np.all(diff == 0)))
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    same_special = (np.isnan(a64) & np.isnan(b64)) | (np.isinf(a64) & (a64 == b64))
    diff = np.where(same_special, 0.0, np.abs(a64 - b64))
    bound = atol + rtol * np.where(same_special, 0.0, np.abs(b64))
    rel = diff / np.maximum(np.abs(b64), 1e-30)
    return Comparison(name, float(np.nan_to_num(diff, nan=np.inf).max(initial=0)),
                      float(np.nan_to_num(rel, nan=np.inf).max(initial=0)), bool(np.all(diff <= bound)))


def bench_onnxruntime(model, feeds, meta=None, threads: int | None = None, repeat: int = 10,
                      warmup: int = 2):
    """onnxruntime latency, measured exactly as ``CompiledModel.benchmark`` measures accelc."""
    from .runtime import BenchStats

    sess = session(model, threads)
    feeds = dict(feeds)
    for _ in range(max(warmup, 1)):
        sess.run(None, feeds)
    t0 = time.perf_counter()
    sess.run(None, feeds)
    number = max(1, min(1000, int(0.05 / max(time.perf_counter() - t0, 1e-6))))
    samples = []
    for _ in range(max(repeat, 1)):
        t0 = time.perf_counter()
        for _ in range(number):
            sess.run(None, feeds)
        samples.append((time.perf_counter() - t0) / number * 1e3)
    return BenchStats(statistics.median(samples), statistics.fmean(samples), statistics.pstdev(samples),
                      min(samples), max(samples), len(samples), number, int(threads or 0))
