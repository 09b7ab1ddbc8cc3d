"""MetaSchedule integration: what tuning needs from accelc, made fast enough to use.

``import tvm.s_tir.tensor_intrin`` (done by every ``TuneContext`` and every ``LocalBuilder``
worker) parses every architecture's tensor intrinsics from TVMScript: 37 s on this machine,
26 s of it CUDA's. A builder worker pays it per batch, so an 8-trial run took 3 minutes and
builds hit LocalBuilder's 30 s timeout. ``load_intrinsics`` registers only the target's own.
"""

from __future__ import annotations

import importlib
import importlib.util
import platform
import sys

_PKG = "tvm.s_tir.tensor_intrin"
# llvm: this host's architecture only (arm_cpu's take 4-5 s to parse, in every builder worker)
_HOST_ARCH = ("arm_cpu",) if platform.machine().lower() in ("aarch64", "arm64") else ("x86",)
_BY_KIND = {"llvm": _HOST_ARCH, "cuda": ("cuda",), "rocm": ("rocm",), "metal": ("metal",)}


def load_intrinsics(kind: str = "llvm") -> None:
    """Register the tensor intrinsics of one target kind, and make the package import a no-op.

    The package module is created without running its ``__init__`` (which imports every
    architecture); later ``import tvm.s_tir.tensor_intrin`` then finds it in ``sys.modules``.
    """
    import tvm.s_tir

    if _PKG not in sys.modules:
        spec = importlib.util.find_spec(_PKG)
        module = importlib.util.module_from_spec(spec)
        sys.modules[_PKG] = module
        tvm.s_tir.tensor_intrin = module
    for sub in _BY_KIND.get(kind, ()):
        importlib.import_module(f"{_PKG}.{sub}")


def _builder_init(cuda_arch: str | None = None) -> None:
    """Runs in each LocalBuilder worker: light intrinsics and our build (and export) function."""
    import tvm_ffi

    load_intrinsics("llvm")

    @tvm_ffi.register_global_func("accelc.tuning.build", override=True)
    def build(mod, target, _params):
        import tvm
        from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

        load_intrinsics(target.kind.name)
        mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
        return tvm.tirx.build(mod, target=target)

    if cuda_arch is not None:
        @tvm_ffi.register_global_func("accelc.tuning.export", override=True)
        def export(mod) -> str:
            """A shared library with the kernels as an nvcc fatbin: the measuring side (a local
            GPU or an RPC server) loads it with no compiler or linker of its own."""
            import os
            import tempfile

            from ...targets.cuda.fatbin import export_library

            path = os.path.join(tempfile.mkdtemp(), "tvm_tmp_mod.so")
            export_library(mod, path, cuda_arch)
            return path


def local_builder(cuda_arch: str | None = None, **kwargs):
    """``LocalBuilder`` whose workers skip the 37 s all-architecture intrinsic import; for CUDA
    (``cuda_arch``) candidates are exported as shared libraries carrying a fatbin."""
    import functools

    from tvm.s_tir import meta_schedule as ms

    if cuda_arch is not None:
        kwargs.setdefault("f_export", "accelc.tuning.export")
        kwargs.setdefault("timeout_sec", 120.0)  # nvcc per candidate
    return ms.builder.LocalBuilder(f_build="accelc.tuning.build", initializer=functools.partial(_builder_init, cuda_arch),
                                   **kwargs)


def _tolerate_unnamed_log_handlers() -> None:
    """Upstream fix: MetaSchedule's ``create_loggers`` re-lists its logger's handlers by name
    and crashes on one without a name ('NoneType' object has no attribute 'format' in
    ``_parameterize_config``) — a user's handler, or pytest's log capture, which attaches to
    non-propagating loggers. Unnamed handlers are set aside while it configures, then put back."""
    import logging

    from tvm.s_tir.meta_schedule import logging as ms_logging

    stock = ms_logging.create_loggers
    if getattr(stock, "_accelc", False):
        return

    def create_loggers(*args, **kwargs):
        ms_logger = logging.getLogger("tvm.s_tir.meta_schedule")
        aside = [h for h in ms_logger.handlers if h.get_name() is None]
        for h in aside:
            ms_logger.removeHandler(h)
        try:
            return stock(*args, **kwargs)
        finally:
            for h in aside:
                ms_logger.addHandler(h)

    create_loggers._accelc = True
    ms_logging.create_loggers = create_loggers


_tolerate_unnamed_log_handlers()
