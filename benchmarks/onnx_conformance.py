"""ONNX node conformance: the onnx package's node test cases run through a compiler.

    python -m accelc.benchmarks.onnx_conformance [--flow accelc|stock|both] [--jobs 2] [--json out.json]

The cases are generated in memory (``onnx.backend.test.case.node.collect_testcases``; the onnx
wheel no longer ships their data). Cases run in spawned worker processes, so a crash or a hang
costs one case (the worker is replaced), not the run. Outcomes: pass, mismatch, unsupported (an op the frontend
refuses), import (other import failure), compile, run, crash, timeout, skipped (sequence,
optional or string I/O, which no tensor compiler takes).

Flows: ``accelc`` = ``accelc.compile`` (our frontend + CPU pipeline); ``stock`` = plain
``tvm.relax.frontend.onnx.from_onnx`` + ``tvm.compile`` (the upstream baseline).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np

OUTCOMES = ("pass", "mismatch", "unsupported", "import", "compile", "run", "crash", "timeout", "skipped")


@dataclass
class CaseResult:
    name: str
    outcome: str
    detail: str = ""


def collect_cases():
    """All node test cases, sorted by name (deterministic order)."""
    import warnings

    from onnx.backend.test.case import node as node_cases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = node_cases.collect_testcases()
    return sorted(cases, key=lambda c: c.name)


def _to_array(x):
    from onnx import numpy_helper

    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "dims") and hasattr(x, "data_type"):
        return numpy_helper.to_array(x)
    if isinstance(x, (list, tuple)) or x is None or isinstance(x, dict):
        return None  # sequences, optionals, maps
    return np.asarray(x)


def _io_arrays(case):
    """(input name → array, expected outputs) or None when the case has non-tensor I/O."""
    graph = case.model.graph
    inits = {t.name for t in graph.initializer}
    names = [i.name for i in graph.input if i.name not in inits]
    inputs, outputs = case.data_sets[0]
    feeds = {}
    for name, value in zip(names, inputs):
        arr = _to_array(value)
        if arr is None or arr.dtype.kind in "OUS":
            return None
        feeds[name] = arr
    if len(feeds) != len(names):
        return None
    expected = []
    for value in outputs:
        arr = _to_array(value)
        if arr is None or arr.dtype.kind in "OUS":
            return None
        expected.append(arr)
    return feeds, expected


def _close(got: np.ndarray, want: np.ndarray, rtol: float, atol: float) -> tuple[bool, str]:
    got = np.asarray(got)
    if got.shape != want.shape:
        return False, f"shape {got.shape} != {want.shape}"
    if want.dtype.kind in "biu" or want.dtype == bool:
        ok = np.array_equal(got.astype(want.dtype), want)
        return ok, "" if ok else "integer values differ"
    ok = np.allclose(got.astype(np.float64), want.astype(np.float64), rtol=rtol, atol=atol, equal_nan=True)
    if ok:
        return True, ""
    err = np.nanmax(np.abs(got.astype(np.float64) - want.astype(np.float64)))
    return False, f"max abs err {err:.3g}"


def run_case(case, flow: str) -> CaseResult:
    """Compile and run one case in this process."""
    io = _io_arrays(case)
    if io is None:
        return CaseResult(case.name, "skipped", "non-tensor input or output")
    feeds, expected = io
    rtol, atol = max(case.rtol, 1e-3), max(case.atol, 1e-4)
    try:
        outputs = _run_accelc(case, feeds) if flow == "accelc" else _run_stock(case, feeds)
    except _Outcome as o:
        return CaseResult(case.name, o.outcome, o.detail)
    if len(outputs) < len(expected):
        return CaseResult(case.name, "mismatch", f"{len(outputs)} outputs, expected {len(expected)}")
    for got, want in zip(outputs, expected):
        ok, why = _close(got, want, rtol, atol)
        if not ok:
            return CaseResult(case.name, "mismatch", why)
    return CaseResult(case.name, "pass")


class _Outcome(Exception):
    def __init__(self, outcome: str, detail: str):
        super().__init__(detail)
        self.outcome, self.detail = outcome, " ".join(detail.split())[:200]


def _run_accelc(case, feeds):
    import accelc
    from accelc.errors import AccelcError, CompileError, UnsupportedOpError

    try:
        model = accelc.compile(case.model, target="cpu")
    except UnsupportedOpError as err:
        raise _Outcome("unsupported", str(err)) from None
    except CompileError as err:
        raise _Outcome("compile", str(err)) from None
    except AccelcError as err:
        raise _Outcome("import", str(err)) from None
    try:
        result = model.run(feeds)
    except Exception as err:  # noqa: BLE001
        raise _Outcome("run", f"{type(err).__name__}: {err}") from None
    return [result[s.name] for s in model.outputs]


def _run_stock(case, feeds):
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    try:
        mod = from_onnx(case.model)
    except tvm.error.OpNotImplemented as err:
        raise _Outcome("unsupported", str(err)) from None
    except Exception as err:  # noqa: BLE001
        raise _Outcome("import", f"{type(err).__name__}: {err}") from None
    try:
        ex = tvm.compile(mod, tvm.target.Target({"kind": "llvm"}))
        vm = relax.VirtualMachine(ex, tvm.cpu())
    except Exception as err:  # noqa: BLE001
        raise _Outcome("compile", f"{type(err).__name__}: {err}") from None
    try:
        out = vm["main"](*[tvm.runtime.tensor(v) for v in feeds.values()])
        outs = [out] if isinstance(out, tvm.runtime.Tensor) else list(out)
        return [o.numpy() if hasattr(o, "numpy") else np.asarray(o) for o in outs]
    except Exception as err:  # noqa: BLE001
        raise _Outcome("run", f"{type(err).__name__}: {err}") from None


def _warm_up(flow: str) -> None:
    """Pay the one-time costs (LLVM and TVM initialisation, imports) once per worker."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "warm", [x],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    if flow == "accelc":
        import accelc

        accelc.compile(model)
    else:
        import tvm
        from tvm.relax.frontend.onnx import from_onnx

        tvm.compile(from_onnx(model), tvm.target.Target({"kind": "llvm"}))


def _worker(conn, flow: str) -> None:
    """A fresh interpreter that runs the cases it is sent until it is sent None.

    Workers are spawned, not forked: a process that already ran TVM code owns a thread pool
    whose threads a forked child would not have (its parallel loops then spin forever).
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    _warm_up(flow)
    while True:
        case = conn.recv()
        if case is None:
            return
        try:
            res = run_case(case, flow)
        except BaseException as err:  # noqa: BLE001 - report, keep serving
            res = CaseResult(case.name, "crash", f"{type(err).__name__}: {err}"[:200])
        conn.send(res)


def run_all(cases, flow: str = "accelc", jobs: int = 2, timeout: float = 60.0, progress=None):
    """Run ``cases`` on ``jobs`` worker processes; a crash or hang costs one case (the worker is
    replaced). Returns [CaseResult] sorted by name."""
    import multiprocessing as mp
    from multiprocessing.connection import wait

    ctx = mp.get_context("spawn")

    def start():
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_worker, args=(child, flow), daemon=True)
        proc.start()
        child.close()
        return {"proc": proc, "conn": parent, "case": None, "since": 0.0}

    pending = list(cases)
    workers = [start() for _ in range(max(1, min(jobs, len(pending))))]
    results: list[CaseResult] = []

    def finish(w, res):
        results.append(res)
        w["case"] = None
        if progress:
            progress(res)

    while pending or any(w["case"] is not None for w in workers):
        for w in workers:
            if w["case"] is None and pending:
                w["case"], w["since"] = pending.pop(0), time.monotonic()
                w["conn"].send(w["case"])
        busy = [w for w in workers if w["case"] is not None]
        ready = wait([w["conn"] for w in busy], timeout=0.5)
        for w in busy:
            if w["conn"] in ready:
                try:
                    finish(w, w["conn"].recv())
                    continue
                except (EOFError, OSError):  # the worker died inside the case
                    w["proc"].join(5)
                    code = w["proc"].exitcode
                    detail = f"signal {-code}" if code is not None and code < 0 else f"exit {code}"
                    finish(w, CaseResult(w["case"].name, "crash", detail))
            elif time.monotonic() - w["since"] > timeout:
                w["proc"].kill()
                finish(w, CaseResult(w["case"].name, "timeout", f">{timeout:.0f} s"))
            else:
                continue
            w.update(start())  # replace a dead or killed worker
    for w in workers:
        try:
            w["conn"].send(None)
        except (OSError, BrokenPipeError):
            pass
        w["proc"].join(10)
        if w["proc"].is_alive():
            w["proc"].kill()
    return sorted(results, key=lambda r: r.name)


def summarize(results) -> dict[str, int]:
    counts = Counter(r.outcome for r in results)
    return {k: counts.get(k, 0) for k in OUTCOMES} | {"total": len(results)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flow", choices=("accelc", "stock", "both"), default="accelc")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds per case")
    ap.add_argument("--filter", default="", help="only cases whose name contains this")
    ap.add_argument("--json", help="write per-case results here")
    args = ap.parse_args(argv)
    cases = [c for c in collect_cases() if args.filter in c.name]
    flows = ("accelc", "stock") if args.flow == "both" else (args.flow,)
    report = {}
    for flow in flows:
        t0 = time.time()
        results = run_all(cases, flow, args.jobs, args.timeout)
        report[flow] = {"summary": summarize(results), "seconds": round(time.time() - t0, 1),
                        "cases": [r.__dict__ for r in results]}
    print(f"ONNX node conformance, {len(cases)} cases (onnx {__import__('onnx').__version__})")
    print(f"{'flow':<8}" + "".join(f"{k:>12}" for k in OUTCOMES) + f"{'seconds':>10}")
    for flow, rep in report.items():
        s = rep["summary"]
        print(f"{flow:<8}" + "".join(f"{s[k]:>12}" for k in OUTCOMES) + f"{rep['seconds']:>10}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
