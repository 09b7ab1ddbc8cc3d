"""The ``sim`` target: what the simulated accelerator supports is offloaded to it, the rest
runs on the host CPU.

Offloaded today: the shift accumulation of the shift-add rewrite's integer path
(``pot_matmul_int``) — the host quantizes the activations to fixed point, the accelerator's
shift-add array runs ``accel.shift_gemm`` on the packed weight bytes (a program lowered per
layer, executed by the functional simulator and timed on the machine config), the host scales
the int32 result. Both halves are integer-exact, so a ``-t sim`` build equals the CPU build
bit for bit. Every offloaded call appends its per-layer record (cycles, utilisation, bytes,
energy) to :data:`RUN_LOG`.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from .config import MachineConfig

#: Per-layer records of the offloaded calls, in call order (cleared by :func:`reset_log`).
RUN_LOG: list[dict] = []
def default_config() -> MachineConfig:
    """The sim target's machine without ``--sim-config``: the default config with both PE
    types, so shift-add layers and dense int8 layers can both be offloaded."""
    import dataclasses

    cfg = MachineConfig()
    return dataclasses.replace(cfg, array=dataclasses.replace(cfg.array, pe_type="both"))


_CONFIG: list[MachineConfig] = [default_config()]


def set_config(cfg: MachineConfig) -> None:
    """The machine the offloaded calls run on (the compile's ``--sim-config``)."""
    cfg.validate()
    _CONFIG[0] = cfg
    _program.cache_clear()


def current_config() -> MachineConfig:
    return _CONFIG[0]


def reset_log() -> None:
    RUN_LOG.clear()


def _tiles(cfg: MachineConfig, m: int, k: int, n: int) -> tuple[int, int, int]:
    """Array-aligned tiles that fit the scratchpads double-buffered (int32 activations)."""
    sp = cfg.scratchpad
    tm = min(m, cfg.rows * 2)
    tn = min(n, cfg.cols * 2)
    tk = min(k, cfg.rows * 4)
    while tk > 1 and (2 * tm * tk * 4 > sp.ifmap_bytes or 2 * tk * tn > sp.filter_bytes):
        tk = max(1, tk // 2)
    while tm > 1 and 2 * tm * tn * 4 > sp.ofmap_bytes:
        tm = max(1, tm // 2)
    return tm, tk, tn


@lru_cache(maxsize=256)
def _program(m: int, k: int, n: int, terms: int):
    from .program import lower_shift_gemm

    tm, tk, tn = _tiles(current_config(), m, k, n)
    return lower_shift_gemm(m, k, n, tm, tk, tn, terms=terms)


def _shift_gemm(xq, w, out) -> None:
    """``accelc.sim.shift_gemm(xq int32 [m, k], w int8 [T·k, n], out int32 [m, n])``."""
    from .timing import simulate

    x = xq.numpy()
    codes = w.numpy()
    m, k = x.shape
    terms, n = codes.shape[0] // k, codes.shape[1]
    result = simulate(_program(m, k, n, terms), {"X": x, "W": codes}, current_config())
    out.copyfrom(result["outputs"]["C"])
    RUN_LOG.append({"op": "shift_gemm", "m": m, "k": k, "n": n, "terms": terms,
                    **result["timeline"], "utilisation": result["utilisation"],
                    "energy_pj": result["energy_pj"], "shift_adds": result["stats"]["shift_add"],
                    "dram_bytes": result["stats"]["dram_read_bytes"] + result["stats"]["dram_write_bytes"]})


def register_runtime() -> None:
    """Make the accelerator's entry points callable from compiled Relax VMs in this process."""
    import tvm_ffi

    tvm_ffi.register_global_func("accelc.sim.shift_gemm", _shift_gemm, override=True)


def unpack_codes(packed: np.ndarray, n: int) -> np.ndarray:
    """PoT codes packed ``[T, tiles, K, tile_n]`` → the accelerator's ``[T·K, N]`` rows."""
    t, tiles, k, tile_n = packed.shape
    flat = packed.transpose(0, 2, 1, 3).reshape(t, k, tiles * tile_n)[:, :, :n]
    return np.ascontiguousarray(flat.reshape(t * k, n))


def offload_pass():
    """Relax pass: each ``call_tir(pot_matmul_int, x, codes, out_scale)`` becomes host
    quantize → ``call_dps_packed("accelc.sim.shift_gemm")`` → host ``acc · out_scale``."""
    import tvm
    from tvm import relax

    from ...passes import replace_calls
    from ...schedules import shift_add as kernels
    from ...schedules.kernel_attrs import kernel_name, kernel_param

    @tvm.transform.module_pass(opt_level=0, name="accelc.sim.offload")
    def transform(mod, _ctx):
        targets = {}
        for gv, func in mod.functions_items():
            if not isinstance(func, relax.Function):
                continue

            def visit(expr):
                if (isinstance(expr, relax.Call) and getattr(expr.op, "name", "") == "relax.call_tir"
                        and expr.args[0] in mod.get_global_vars()):
                    callee = mod[expr.args[0]]
                    if kernel_name(callee) == "pot_matmul_int" and kernel_param(callee, "dequantize"):
                        targets[expr] = callee

            relax.analysis.post_order_visit(func, visit)
        if not targets:
            return mod
        if current_config().array.pe_type == "mac":
            import sys

            print(f"accelc: sim: the machine's PEs are mac-only (array.pe_type = 'mac'); "
                  f"{len(targets)} shift-add layer(s) stay on the host", file=sys.stderr)
            return mod

        def emit(bb, call, callee, _remap):
            m, k, n = (kernel_param(callee, key) for key in ("m", "k", "n"))
            frac, ibits = kernel_param(callee, "frac_bits"), kernel_param(callee, "int_bits")
            x, codes, scale = call.args[1].fields
            quant = bb.add_func(kernels.quantize_fixed_point(m, k, frac, ibits).without_attr("global_symbol"),
                                "quantize_fixed_point")
            xq = bb.emit(relax.call_tir(quant, [x], relax.TensorType((m, k), "int32")))
            w = relax.const(unpack_codes(codes.value.numpy(), n))
            acc = bb.emit(relax.call_dps_packed("accelc.sim.shift_gemm", [xq, w],
                                                relax.TensorType((m, n), "int32")))
            return relax.op.multiply(relax.op.astype(acc, "float32"), scale)

        return replace_calls(mod, targets, emit)

    return transform


__all__ = ["RUN_LOG", "current_config", "default_config", "offload_pass", "register_runtime", "reset_log", "set_config",
           "unpack_codes"]
