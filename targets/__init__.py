"""Compilation targets. Each says everything about itself: its TVM target, pipeline and device.

Targets register here by name; ``accelc compile -t NAME`` and ``accelc.compile(target=NAME)``
look them up. Adding a target is adding an entry (the CUDA and simulated-accelerator targets
join the same way).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..errors import TargetError


@dataclass(frozen=True)
class TargetSpec:
    name: str
    description: str
    make: Callable  # (**options) -> tvm.target.Target
    pipeline: Callable  # (target, database, fast_math) -> tvm.transform.Pass
    device: Callable  # () -> tvm.runtime.Device
    check_runnable: Callable  # (artifact target dict) -> None, raising ArtifactError if not here
    #: (executable, path, artifact target dict) -> None; None: ``executable.export_library(path)``
    export: Callable | None = None

    def runnable_here(self, meta) -> bool:
        """Whether an artifact with ``meta`` (an ArtifactMeta) can run on this machine."""
        try:
            self.check_runnable(meta.target, meta.isa_features)
            return True
        except Exception:  # noqa: BLE001 - ArtifactError: not runnable here
            return False


def _cpu() -> TargetSpec:
    from . import cpu

    return TargetSpec(
        name="cpu",
        description="this host's CPU via LLVM (ISA features and cores detected; AVX2/AVX-512)",
        make=cpu.host_target,
        pipeline=cpu.pipeline,
        device=cpu.device,
        check_runnable=cpu.check_runnable,
    )


def _sim() -> TargetSpec:
    from . import cpu
    from .sim import offload

    def make(sim_config=None, **cpu_options):
        from ..schedules.tuning.database import register_trace_hook
        from .sim.config import load_config
        from .sim.tensorize import ensure_intrinsics, register_intrinsics

        offload.set_config(load_config(sim_config) if sim_config else offload.default_config())
        register_intrinsics(offload.current_config())  # before a database of sim records opens
        register_trace_hook(ensure_intrinsics)  # and the per-shape ones its records' traces name
        offload.register_runtime()
        return cpu.host_target(**cpu_options)

    def pipeline(target=None, database=None, fast_math: bool = True):
        import tvm

        offload.set_database(database)
        return tvm.transform.Sequential([offload.offload_pass(),
                                         cpu.pipeline(target, database=database, fast_math=fast_math)])

    def device():
        offload.register_runtime()
        return cpu.device()

    return TargetSpec(
        name="sim",
        description="the simulated shift-add/MAC PE-array accelerator (offloaded layers run in the "
                    "functional + cycle simulator; the rest on this host's CPU)",
        make=make,
        pipeline=pipeline,
        device=device,
        check_runnable=cpu.check_runnable,
    )


def _cuda() -> TargetSpec:
    from . import cuda

    def make(arch=None, **_cpu_options):
        return cuda.target(arch)

    return TargetSpec(
        name="cuda",
        description="an NVIDIA GPU through CUDA (arch detected, or --arch sm_XY to cross-compile); "
                    "kernels shipped as an nvcc fatbin",
        make=make,
        pipeline=cuda.pipeline,
        device=cuda.device,
        check_runnable=cuda.check_runnable,
        export=cuda.export,
    )


_FACTORIES: dict[str, Callable[[], TargetSpec]] = {"cpu": _cpu, "cuda": _cuda, "sim": _sim}
_ALIASES = {"llvm": "cpu", "accelc/cpu": "cpu", "x86": "cpu", "accelc/cuda": "cuda", "gpu": "cuda",
            "nvidia": "cuda"}


def names() -> list[str]:
    return sorted(_FACTORIES)


def get(name: str) -> TargetSpec:
    key = _ALIASES.get(name, name)
    if key not in _FACTORIES:
        raise TargetError(f"unknown target '{name}'; available: {', '.join(names())}")
    return _FACTORIES[key]()
