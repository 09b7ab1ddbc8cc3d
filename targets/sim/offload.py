"""The ``sim`` target: what the simulated accelerator supports is offloaded to it, the rest
runs on the host CPU.

Offloaded: the integer GEMMs of the int8 rewrite (``int8_matmul``: int8 × int8 → int32 on the
``mac`` PEs, ``accel.gemm``) and of the shift-add rewrite's integer path (``pot_matmul_int``:
``accel.shift_gemm`` on the ``shift-add`` PEs). The host quantizes the activations, the
accelerator runs the layer's program (lowered per layer, executed by the functional simulator
and timed on the machine config), the host scales the int32 result. Both halves are
integer-exact, so a ``-t sim`` build equals the CPU build bit for bit. Float32 layers stay on
the host (the array has no float datapath): rewrite them first (``--passes int8`` or
``shift-add``). Every offloaded call appends its per-layer record (cycles, utilisation, bytes,
energy) to :data:`RUN_LOG`.
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import lru_cache

import numpy as np

from .config import MachineConfig

#: Per-layer records of the offloaded calls, in call order (cleared by :func:`reset_log`).
RUN_LOG: list[dict] = []
#: The progress bar of the inference being simulated (see :func:`progress`), or None.
_BAR: list = [None]
#: The layers the last compile offloaded, in program order: ``{"op", "m", "k", "n", "terms"}``
#: (the compile-time view; :func:`estimate` times each without running the model).
PLAN: list[dict] = []
def default_config() -> MachineConfig:
    """The sim target's machine without ``--sim-config``: the default config with both PE
    types, so shift-add layers and dense int8 layers can both be offloaded."""
    import dataclasses

    cfg = MachineConfig()
    return dataclasses.replace(cfg, array=dataclasses.replace(cfg.array, pe_type="both"))


_CONFIG: list[MachineConfig] = [default_config()]
#: The tuning database the compile was given (``--db``), or None.
_DATABASE: list = [None]


def set_config(cfg: MachineConfig) -> None:
    """The machine the offloaded calls run on (the compile's ``--sim-config``)."""
    cfg.validate()
    _CONFIG[0] = cfg
    _program.cache_clear()
    _estimate.cache_clear()


def set_database(database) -> None:
    """The tuning database whose sim records choose the layers' tilings (None: defaults)."""
    if database is not _DATABASE[0]:
        _DATABASE[0] = database
        _program.cache_clear()
        _estimate.cache_clear()


def current_config() -> MachineConfig:
    return _CONFIG[0]


def reset_log() -> None:
    RUN_LOG.clear()


def _lower(kind: str, m: int, k: int, n: int, terms: int, name: str | None = None, prefix: str = ""):
    """The layer's ``accel`` program: its TIR workload scheduled onto the ISA (the tuning
    database's best tiling when ``--db`` has one for this shape and machine, else the default
    tiles), tensorized and translated (``targets/sim/tuning.program_for``). ``prefix`` goes on
    its DRAM buffer names, so several layers can share one module and one DRAM."""
    from .tuning import program_for

    return program_for(kind, m, k, n, terms, current_config(), _DATABASE[0], name=name, prefix=prefix)


@lru_cache(maxsize=256)
def _program(kind: str, m: int, k: int, n: int, terms: int):
    return _lower(kind, m, k, n, terms)


def _record(kind: str, m: int, k: int, n: int, terms: int, result: dict) -> dict:
    """A per-layer record from ``simulate``'s result: cycles, utilisation, SCALE-Sim mapping
    efficiency over the program's tiles, bytes per level, energy, and the roofline point."""
    from .cycles import gemm_compute_cycles
    from .dialect import GemmOp, ShiftGemmOp
    from .program import programs

    cfg = current_config()
    stats, tl = result["stats"], result["timeline"]
    folds = weighted = 0.0
    for prog in programs(_program(kind, m, k, n, terms)):
        for op in prog.body.block.ops:
            if isinstance(op, (GemmOp, ShiftGemmOp)):
                cs = gemm_compute_cycles(*(op.attributes[a].value.data for a in ("m", "k", "n")),
                                         cfg.rows, cfg.cols, cfg.array.dataflow)
                folds += cs.folds
                weighted += cs.folds * cs.mapping_efficiency
    actions = stats["mac"] + stats["shift_add"]
    dram = stats["dram_read_bytes"] + stats["dram_write_bytes"]
    intensity = actions / dram if dram else float("inf")
    peak = cfg.rows * cfg.cols
    return {"op": kind, "m": m, "k": k, "n": n, "terms": terms, **tl, "utilisation": result["utilisation"],
            "mapping_efficiency": weighted / folds if folds else 0.0,
            "energy_pj": result["energy_pj"], "shift_adds": stats["shift_add"], "macs": stats["mac"],
            "dram_bytes": dram, "sram_bytes": sum(stats["sram_read_bytes"].values())
            + sum(stats["sram_write_bytes"].values()),
            "roofline": {"intensity": intensity, "attained": actions / tl["total_cycles"] if tl["total_cycles"] else 0.0,
                         "roof": min(peak, intensity * cfg.dram.bandwidth_bytes_per_cycle), "peak": peak}}


def _names(kind: str) -> tuple[str, str]:
    return ("X", "W") if kind == "shift_gemm" else ("A", "B")


def _run_layer(kind: str, x, w, out, terms: int) -> None:
    from .timing import simulate

    m, k = x.shape
    n = w.shape[1]
    result = simulate(_program(kind, m, k, n, terms), dict(zip(_names(kind), (x, w))), current_config())
    out.copyfrom(result["outputs"]["C"])
    RUN_LOG.append(_record(kind, m, k, n, terms, result))
    if _BAR[0] is not None:
        _BAR[0].set_postfix_str(f"{sum(r['total_cycles'] for r in RUN_LOG[-_BAR[0].n - 1:])} cycles", refresh=False)
        _BAR[0].update()


@lru_cache(maxsize=256)
def _estimate(kind: str, m: int, k: int, n: int, terms: int) -> dict:
    from .timing import simulate

    x = np.zeros((m, k), np.int32 if kind == "shift_gemm" else np.int8)
    w = np.zeros((terms * k if kind == "shift_gemm" else k, n), np.int8)
    return _record(kind, m, k, n, terms, simulate(_program(kind, m, k, n, terms), dict(zip(_names(kind), (x, w))),
                                                  current_config()))


def estimate(op: str, m: int, k: int, n: int, terms: int = 1) -> dict:
    """A layer's record without its data (at compile time): the counts and cycles of a GEMM
    program do not depend on the values, so the program runs once on zeros per shape."""
    return dict(_estimate(op, m, k, n, terms))


def program_module(plan: list[dict] | None = None, names: list[str] | None = None):
    """The offloaded layers' programs as one MLIR module (``--emit-mlir``): one
    ``accel.program`` per layer, named after the layer, its DRAM buffers prefixed ``l<i>_``."""
    import re

    from .program import make_module, programs

    plan = PLAN if plan is None else plan
    progs = []
    for i, p in enumerate(plan):
        label = names[i] if names and i < len(names) else p["op"]
        name = f"l{i}_" + re.sub(r"[^A-Za-z0-9_]", "_", label).strip("_")
        progs += programs(_lower(p["op"], p["m"], p["k"], p["n"], p["terms"], name=name, prefix=f"l{i}_"))
    return make_module([prog.clone() for prog in progs])


@contextmanager
def progress(layers: int, label: str):
    """A progress bar over one inference's simulated layers (shown on a terminal only; the
    functional simulation of a large model takes seconds per layer)."""
    from tqdm import tqdm

    bar = tqdm(total=layers, desc=f"simulating {label}", unit="layer", leave=False, disable=None)
    _BAR[0] = bar
    try:
        yield bar
    finally:
        _BAR[0] = None
        bar.close()


def _shift_gemm(xq, w, out) -> None:
    """``accelc.sim.shift_gemm(xq int32 [m, k], w int8 [T·k, n], out int32 [m, n])``."""
    x = xq.numpy()
    codes = w.numpy()
    _run_layer("shift_gemm", x, codes, out, codes.shape[0] // x.shape[1])


def _gemm(xq, w, out) -> None:
    """``accelc.sim.gemm(xq int8 [m, k], w int8 [k, n], out int32 [m, n])``."""
    _run_layer("gemm", xq.numpy(), w.numpy(), out, 1)


def register_runtime() -> None:
    """Make the accelerator's entry points callable from compiled Relax VMs in this process."""
    import tvm_ffi

    tvm_ffi.register_global_func("accelc.sim.shift_gemm", _shift_gemm, override=True)
    tvm_ffi.register_global_func("accelc.sim.gemm", _gemm, override=True)


def unpack_codes(packed: np.ndarray, n: int) -> np.ndarray:
    """PoT codes packed ``[T, tiles, K, tile_n]`` → the accelerator's ``[T·K, N]`` rows."""
    t, tiles, k, tile_n = packed.shape
    flat = packed.transpose(0, 2, 1, 3).reshape(t, k, tiles * tile_n)[:, :, :n]
    return np.ascontiguousarray(flat.reshape(t * k, n))


#: Offloadable kernels: name → (the PE type they need, accel instruction).
_OFFLOAD = {"int8_matmul": ("mac", "gemm"), "pot_matmul_int": ("shift-add", "shift_gemm")}


def offloadable(func) -> str | None:
    """The accel instruction a kernel PrimFunc offloads to (None: it stays on the host)."""
    from ...schedules.kernel_attrs import kernel_name, kernel_param

    name = kernel_name(func)
    if name not in _OFFLOAD or not kernel_param(func, "dequantize"):
        return None
    return _OFFLOAD[name][1]


def offload_pass():
    """Relax pass: each ``call_tir(int8_matmul, xq, wq, sx, sw)`` becomes
    ``call_dps_packed("accelc.sim.gemm", xq, wq)`` → host ``acc · sx · sw``; each
    ``call_tir(pot_matmul_int, x, codes, out_scale)`` becomes host quantize →
    ``call_dps_packed("accelc.sim.shift_gemm")`` → host ``acc · out_scale``. Layers whose PE type
    the machine lacks stay on the host, with one notice."""
    import sys

    import tvm
    from tvm import relax

    from ...passes import replace_calls
    from ...schedules import shift_add as kernels
    from ...schedules.int8 import dequantize
    from ...schedules.kernel_attrs import kernel_name, kernel_param

    @tvm.transform.module_pass(opt_level=0, name="accelc.sim.offload")
    def transform(mod, _ctx):
        pe_type = current_config().array.pe_type
        targets, missing = {}, {}
        PLAN.clear()
        for gv, func in mod.functions_items():
            if not isinstance(func, relax.Function):
                continue

            def visit(expr):
                if (isinstance(expr, relax.Call) and getattr(expr.op, "name", "") == "relax.call_tir"
                        and expr.args[0] in mod.get_global_vars()):
                    callee = mod[expr.args[0]]
                    if offloadable(callee) is None:
                        return
                    need = _OFFLOAD[kernel_name(callee)][0]
                    if pe_type in (need, "both"):
                        targets[expr] = callee
                    else:
                        missing[kernel_name(callee)] = missing.get(kernel_name(callee), 0) + 1

            relax.analysis.post_order_visit(func, visit)
        for name, count in missing.items():
            print(f"accelc: sim: the machine's PEs are {pe_type}-only (array.pe_type = '{pe_type}'); "
                  f"{count} {name} layer(s) need '{_OFFLOAD[name][0]}' PEs and stay on the host", file=sys.stderr)
        if not targets:
            return mod

        def emit(bb, call, callee, _remap):
            m, k, n = (kernel_param(callee, key) for key in ("m", "k", "n"))
            args = call.args[1].fields
            row_scale = kernel_name(callee) == "int8_matmul"
            PLAN.append({"op": offloadable(callee), "m": m, "k": k, "n": n,
                         "terms": 1 if row_scale else kernel_param(callee, "terms")})
            if row_scale:
                xq, wq, sx, sw = args
                acc = bb.emit(relax.call_dps_packed("accelc.sim.gemm", [xq, wq], relax.TensorType((m, n), "int32")))
                scales = [sx, sw]
            else:
                frac, ibits = kernel_param(callee, "frac_bits"), kernel_param(callee, "int_bits")
                x, codes, scale = args
                quant = bb.add_func(kernels.quantize_fixed_point(m, k, frac, ibits).without_attr("global_symbol"),
                                    "quantize_fixed_point")
                xq = bb.emit(relax.call_tir(quant, [x], relax.TensorType((m, k), "int32")))
                w = relax.const(unpack_codes(codes.value.numpy(), n))
                acc = bb.emit(relax.call_dps_packed("accelc.sim.shift_gemm", [xq, w],
                                                    relax.TensorType((m, n), "int32")))
                scales = [scale]
            deq = bb.add_func(dequantize(m, n, row_scale).without_attr("global_symbol"), "dequantize")
            return relax.call_tir(deq, [acc, *scales], relax.TensorType((m, n), "float32"))

        return replace_calls(mod, targets, emit)

    return transform


__all__ = ["PLAN", "RUN_LOG", "current_config", "set_database", "estimate", "program_module", "default_config", "offload_pass", "offloadable", "register_runtime", "reset_log", "set_config",
           "unpack_codes"]
