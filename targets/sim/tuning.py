"""MetaSchedule on the simulated accelerator: tune the DMA tiling of offloaded ops by cycles.

:func:`tuning_components` gives what ``ms.tune_tir`` / the ``accelc tune`` driver needs for a
sim task: the design space (:func:`.tensorize.design_space`: sampled tiles, loop orders,
operand-stationary variants, a scratchpad-fit postproc, MutateTileSize), a builder that
translates each candidate to an ``accel`` program and writes it as MLIR text (the artifact is
the ``.mlir`` path), and a runner that parses it back and returns ``time_program`` cycles /
clock as seconds: deterministic, nothing executes. Failures become BuilderResult / RunnerResult
errors, never exceptions. :func:`program_for` is what the offload calls: the best tuned
schedule from a database, else the default tiling, translated. :func:`sim_features` describes
a candidate for a cost model without translating it.
"""

from __future__ import annotations

import os
import tempfile
from functools import cache

from .config import MachineConfig
from .tensorize import (
    ATTR_OP,
    KINDS,
    activation_bytes,
    config_digest,
    design_space,
    ensure_intrinsics,
    register_intrinsics,
    schedule_gemm,
    workload,
    workload_kind,
)
from .translate import plan, static_stats, translate

_CONFIGS: dict[str, MachineConfig] = {}  # target model (accelc-sim-<digest>) → machine being tuned


def sim_target(cfg: MachineConfig):
    """The TVM target sim tasks are tuned for: llvm-kind (MetaSchedule's plumbing wants one),
    keyed ``accel-sim``, the machine's digest as its model."""
    from tvm.target import Target

    model = f"accelc-sim-{config_digest(cfg)}"
    _CONFIGS[model] = cfg
    return Target({"kind": "llvm", "keys": ["accel-sim", "cpu"], "num-cores": 1, "model": model})


def default_tiles(cfg: MachineConfig, m: int, k: int, n: int, a_bytes: int = 4) -> tuple[int, int, int]:
    """The untuned tiling (offload.py's heuristic): array-aligned tiles that fit the
    scratchpads double-buffered (``a_bytes`` per activation: 4 for shift_gemm's int32, 1 for
    gemm's int8)."""
    sp = cfg.scratchpad
    tm = min(m, cfg.rows * 2)
    tn = min(n, cfg.cols * 2)
    tk = min(k, cfg.rows * 4)
    while tk > 1 and (2 * tm * tk * a_bytes > sp.ifmap_bytes or 2 * tk * tn > sp.filter_bytes):
        tk = max(1, tk // 2)
    while tm > 1 and 2 * tm * tn * 4 > sp.ofmap_bytes:
        tm = max(1, tm // 2)
    return tm, tk, tn


def default_schedule(mod, cfg: MachineConfig):
    """A sim workload (PrimFunc or IRModule) scheduled with :func:`default_tiles`."""
    from tvm.s_tir import Schedule

    func = _task_func(mod)
    kind = workload_kind(func)
    m, k = (int(v) for v in func.params[0].shape)
    n = int(func.params[1].shape[-1])
    sch = Schedule(mod)
    return schedule_gemm(sch, cfg, default_tiles(cfg, m, k, n, activation_bytes(kind)))


def tuned_schedule(func, cfg: MachineConfig, database):
    """The best schedule of ``func`` in ``database`` (replayed; its intrinsics registered
    first), or None if the database has no valid record of this workload."""
    import tvm
    from tvm.s_tir import Schedule

    mod = tvm.IRModule({"main": func})  # what tune_tir commits for a workload
    rec = database.query_tuning_record(mod, sim_target(cfg), "main")
    if rec is None:
        return None
    ensure_intrinsics(rec.trace)
    sch = Schedule(mod)
    rec.trace.apply_to_schedule(sch, remove_postproc=False)
    return sch


def program_for(kind: str, m: int, k: int, n: int, terms: int, cfg: MachineConfig, database=None,
                name: str | None = None, prefix: str = ""):
    """The ``accel`` program of one offloaded op: the database's tuned schedule for this
    workload and machine if it has one, else :func:`default_tiles`, translated (buffers
    ``A, B, C`` or ``X, W, C`` after ``prefix``; program ``name`` defaults to ``kind``). Open a
    JSON database only after ``register_intrinsics(cfg)``: loading one replays its traces."""
    func = workload(kind, m, k, n, terms, cfg)
    sch = tuned_schedule(func, cfg, database) if database is not None else None
    return translate((sch or default_schedule(func, cfg)).mod, cfg, name, prefix)


def _task_func(task):
    """The PrimFunc of an ExtractedTask, TuneContext, IRModule or PrimFunc (None if not one)."""
    import tvm

    mod = task
    if getattr(task, "dispatched", None):
        mod = task.dispatched[0]
    elif hasattr(task, "mod") and not isinstance(task, tvm.ir.IRModule):
        mod = task.mod
    if isinstance(mod, tvm.ir.IRModule):
        funcs = [f for _, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
        mod = funcs[0] if len(funcs) == 1 else None
    return mod if isinstance(mod, tvm.tirx.PrimFunc) else None


def task_filter(task) -> bool:
    """Whether a task is a sim workload (:func:`.tensorize.workload`, tagged with its op):
    those are tuned with these components, everything else on the CPU."""
    func = _task_func(task)
    return func is not None and func.attrs is not None and str(func.attrs.get(ATTR_OP, "")) in KINDS


@cache
def _classes():
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
    from tvm.s_tir.meta_schedule.runner import PyRunner, RunnerFuture, RunnerResult

    from .program import parse_mlir, to_mlir
    from .timing import time_program

    @derived_object
    class SimBuilder(PyBuilder):
        """Candidate → ``accel`` program → ``<tmpdir>/program.mlir`` (one directory per artifact:
        MetaSchedule's RemoveBuildArtifact deletes the artifact's directory)."""

        def __init__(self, cfg: MachineConfig):
            super().__init__()
            self.cfg = cfg

        def build(self, build_inputs):
            out = []
            for bi in build_inputs:
                try:
                    text = to_mlir(translate(bi.mod, self.cfg))
                    path = os.path.join(tempfile.mkdtemp(prefix="accelc-sim-"), "program.mlir")
                    with open(path + ".tmp", "w") as f:
                        f.write(text)
                    os.replace(path + ".tmp", path)
                    out.append(BuilderResult(path, None))
                except Exception as e:  # noqa: BLE001 - a failed candidate, reported not raised
                    out.append(BuilderResult(None, f"{type(e).__name__}: {e}"))
            return out

    @derived_object
    class SimRunner(PyRunner):
        """Artifact → parsed program → ``time_program`` cycles / clock (seconds)."""

        def __init__(self, cfg: MachineConfig):
            super().__init__()
            self.cfg = cfg

        def run(self, runner_inputs):
            futures = []
            for ri in runner_inputs:
                try:
                    with open(ri.artifact_path) as f:
                        prog = parse_mlir(f.read(), source=ri.artifact_path)
                    cycles = time_program(prog, self.cfg).total_cycles
                    res = RunnerResult([cycles / (self.cfg.clock_mhz * 1e6)], None)
                except Exception as e:  # noqa: BLE001
                    res = RunnerResult(None, f"{type(e).__name__}: {e}")
                futures.append(RunnerFuture(f_done=lambda: True, f_result=lambda r=res: r))
            return futures

    return SimBuilder, SimRunner


def sim_builder(cfg: MachineConfig):
    return _classes()[0](cfg)


def sim_runner(cfg: MachineConfig):
    return _classes()[1](cfg)


def config_for_model(model: str | None) -> MachineConfig:
    """The machine a sim tuning target names (registered by :func:`sim_target`); the sim
    target's default machine (``offload.default_config``) for an unknown name."""
    from .offload import default_config

    return _CONFIGS.get(model or "") or default_config()


def tuning_components(cfg: MachineConfig) -> dict:
    """``space`` / ``builder`` / ``runner`` / ``task_filter`` / ``target`` for tuning sim tasks
    on machine ``cfg`` (pass the first three and the target to ``ms.tune_tir``), and
    ``default_schedule(mod, target)``: the untuned schedule of a task."""
    from ...schedules.tuning import load_intrinsics

    cfg.validate()
    load_intrinsics("sim")  # no TVM intrinsics needed: skip the 37 s import of all of them
    register_intrinsics(cfg)
    return {"space": design_space(cfg), "builder": sim_builder(cfg), "runner": sim_runner(cfg),
            "task_filter": task_filter, "target": sim_target(cfg),
            "default_schedule": lambda mod, _target=None: default_schedule(mod, cfg)}


# ----------------------------------------------------------------------------------------------
# Features


def sim_features(sch, cfg: MachineConfig | None = None) -> dict:
    """A candidate's accelerator-level features from its schedule alone (no translation, a few
    ms; :func:`.translate.static_stats`): DMA tiles and counts, DMA bytes and transfers,
    instruction counts, PE-array folds, mapping efficiency (Σ useful PE positions / Σ
    folds·rows·cols, SCALE-Sim's), the exact Σ of the instructions' compute cycles, useful MAC
    vs shift-add ops, scratchpad fill. ``cfg`` defaults to the default machine."""
    cfg = cfg or MachineConfig()
    return static_stats(plan(sch.mod if hasattr(sch, "mod") else sch, cfg, check_fit=False), cfg)


__all__ = ["config_for_model", "default_schedule", "default_tiles", "program_for", "sim_builder", "sim_features", "sim_runner",
           "sim_target", "task_filter", "tuned_schedule", "tuning_components"]
