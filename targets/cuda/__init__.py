"""The CUDA target: an ``accelc/cuda`` tag for the local GPU (or ``--arch`` when cross-compiling),
a Relax pipeline with dlight defaults, tensor-core GEMMs and GPU versions of accelc's kernels,
and artifacts that carry their kernels as an nvcc fatbin (they load on a GPU host with no
compiler).

Without a GPU, everything up to the artifact works (nvcc is enough); running needs a CUDA
device and TVM's CUDA runtime (``libtvm_runtime_cuda.so``).
"""

from __future__ import annotations

import os
import re

import tvm
from tvm import relax
from tvm.target import Target

from ...errors import ArtifactError, TargetError
from ..graph_opt import fold_batch_norm

TAG = "accelc/cuda"
#: Per-block limits of every NVIDIA GPU since Volta (sm_70); MetaSchedule and dlight need them.
LIMITS = {"max_num_threads": 1024, "max_threads_per_block": 1024, "thread_warp_size": 32,
           "max_shared_memory_per_block": 49152, "registers_per_block": 65536}


def local_arch() -> str | None:
    """``sm_XY`` of CUDA device 0, read through TVM's CUDA runtime (the driver); None if none."""
    try:
        dev = tvm.cuda(0)
        if not dev.exist:
            return None
        major, minor = str(dev.compute_version).split(".")
        return f"sm_{major}{minor}"
    except Exception:  # noqa: BLE001 - no CUDA runtime, no driver, no device
        return None


def _normalize_arch(arch: str) -> str:
    a = arch.strip().lower()
    if re.fullmatch(r"\d+\.\d+", a):  # "9.0" → sm_90
        a = "sm_" + a.replace(".", "")
    if re.fullmatch(r"\d+[a-z]?", a):  # "90" → sm_90
        a = "sm_" + a
    if not re.fullmatch(r"sm_\d{2,3}[a-z]?", a):
        raise TargetError(f"--arch must be a CUDA architecture such as sm_80 or sm_90, got '{arch}'")
    if int(re.match(r"sm_(\d+)", a).group(1)) < 70:
        raise TargetError(f"--arch {a}: accelc supports sm_70 (Volta) and newer")
    return a


def target(arch: str | None = None, host=None) -> Target:
    """The CUDA target for ``arch`` (default: the local GPU's); the host part for this CPU."""
    from ..cpu import host_target

    arch = _normalize_arch(arch) if arch else (local_arch() or os.environ.get("ACCELC_CUDA_ARCH"))
    if not arch:
        raise TargetError("no CUDA device found: pass --arch (e.g. sm_80, sm_90) to cross-compile for one")
    arch = _normalize_arch(arch)
    cfg = {"kind": "cuda", "arch": arch, "keys": ["cuda", "gpu"], **LIMITS,
           "host": host or host_target()}
    if int(arch[3:5]) >= 80:  # Ampere+: 48 KiB static + dynamic up to 163/227 KiB; keep static
        cfg["l2_cache_size_bytes"] = 40 * 1024 * 1024
    return Target(cfg)


def register_tag() -> None:
    """Register ``accelc/cuda`` for the local GPU with TVM's tag registry (when there is one)."""
    arch = local_arch()
    if arch is None:
        return
    cfg = {"kind": "cuda", "arch": arch, "keys": ["cuda", "gpu"], **LIMITS}
    tvm.target.tag.register_tag(TAG, cfg, override=True)


def arch_of(t: Target | dict) -> str:
    return str(t["arch"] if isinstance(t, dict) else t.arch)


def device():
    return tvm.cuda(0)


def check_runnable(meta_target: dict, required: list[str]) -> None:
    """Refuse a CUDA artifact on a machine without a GPU that can run its fatbin."""
    if meta_target.get("kind") != "cuda":
        raise ArtifactError(f"artifact targets '{meta_target.get('kind')}', not CUDA")
    want = arch_of(meta_target)
    have = local_arch()
    if have is None:
        raise ArtifactError(f"artifact was built for CUDA {want}, and this machine has no CUDA device "
                            f"(or no CUDA driver)")
    if int(re.match(r"sm_(\d+)", have).group(1)) < int(re.match(r"sm_(\d+)", want).group(1)):
        raise ArtifactError(f"artifact was built for CUDA {want}; this GPU is {have}: recompile with --arch {have}")


def export(executable, path: str, meta_target: dict) -> None:
    from .fatbin import export_library

    export_library(executable, path, arch_of(meta_target))


# -- pipeline ----------------------------------------------------------------------------------
def front_passes(target: Target) -> list:
    cuda = relax.backend.cuda.pipeline
    return [
        fold_batch_norm,
        relax.transform.DecomposeOpsForInference(),
        relax.transform.CanonicalizeBindings(),
        *cuda.library_dispatch_passes(target),
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
    ]


def schedule_passes(database=None) -> list:
    """Tuned schedules from ``database`` first, then accelc's GPU kernels and dlight rules."""
    from tvm.s_tir import dlight as dl

    from ...schedules.cuda import default_rules, gpu_kernels

    seq = [gpu_kernels]
    if database is not None:
        seq.append(relax.transform.MetaScheduleApplyDatabase(enable_warning=False))
    # Upstream symptom: a PrimFunc no rule schedules (a hand-written kernel without a GPU twin)
    # is built by TVM 0.27 as *host* code that dereferences device pointers, with no error at
    # compile time. DefaultGPUSchedule binds whatever is still unscheduled to GPU threads.
    return seq + [dl.ApplyDefaultSchedule(*default_rules()), _default_gpu_schedule,
                  relax.transform.DeadCodeElimination()]


@tvm.transform.module_pass(opt_level=0, name="accelc.cuda.DefaultGPUSchedule")
def _default_gpu_schedule(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """``s_tir.transform.DefaultGPUSchedule`` on the module's PrimFuncs (Relax functions kept)."""
    from tvm.s_tir.transform import DefaultGPUSchedule

    from ...errors import CompileError
    from ...schedules.kernel_attrs import kernel_name

    out = None
    for gv, func in mod.functions_items():
        if not isinstance(func, tvm.tirx.PrimFunc) or func.attrs.get("tirx.is_scheduled", False):
            continue
        try:
            done = DefaultGPUSchedule()(tvm.IRModule({gv: func}))[gv.name_hint]
        except Exception:  # noqa: BLE001 - TVM rejects the kernel's structure
            what = kernel_name(func) or gv.name_hint
            raise CompileError(f"ACCELC_NO_GPU_KERNEL {what}: this kernel has no CUDA version yet and TVM "
                               f"cannot place it on the GPU; compile it for -t cpu or -t sim") from None
        if out is None:
            out = tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs)
        out[gv] = done
    return mod if out is None else out


def back_passes(target: Target) -> list:
    cuda = relax.backend.cuda.pipeline
    return [*cuda.dataflow_lower_passes(target), *cuda.finalize_passes(target)]


def pipeline(target: Target | None = None, database=None, fast_math: bool = True) -> tvm.transform.Pass:
    """The CUDA lowering pipeline as one Pass (registered as the Relax pipeline ``accelc.cuda``).

    ``fast_math`` is nvcc's ``--use_fast_math`` (always on: ``__expf`` and friends, ~2 ulp).
    """

    @tvm.transform.module_pass(opt_level=0, name="accelc.cuda.pipeline")
    def _pipeline(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        tgt = target or Target.current(allow_none=True) or globals()["target"]()
        seq = front_passes(tgt) + schedule_passes(database) + back_passes(tgt)
        with tgt:
            if database is not None:
                with database:
                    return tvm.transform.Sequential(seq)(mod)
            return tvm.transform.Sequential(seq)(mod)

    return _pipeline


@relax.register_pipeline("accelc.cuda")
def _registered_pipeline(database=None, fast_math: bool = True):
    return pipeline(None, database=database, fast_math=fast_math)


register_tag()
