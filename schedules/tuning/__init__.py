"""MetaSchedule integration: what tuning needs from accelc, made fast enough to use.

``import tvm.s_tir.tensor_intrin`` (done by every ``TuneContext`` and every ``LocalBuilder``
worker) parses every architecture's tensor intrinsics from TVMScript: 37 s on this machine,
26 s of it CUDA's. A builder worker pays it per batch, so an 8-trial run took 3 minutes and
builds hit LocalBuilder's 30 s timeout. ``load_intrinsics`` registers only the target's own.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

_PKG = "tvm.s_tir.tensor_intrin"
_BY_KIND = {"llvm": ("x86", "arm_cpu"), "cuda": ("cuda",), "rocm": ("rocm",), "metal": ("metal",)}


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


def _builder_init() -> None:
    """Runs in each LocalBuilder worker: light intrinsics and our build function."""
    import tvm_ffi

    load_intrinsics("llvm")

    @tvm_ffi.register_global_func("accelc.tuning.build", override=True)
    def build(mod, target, _params):
        import tvm
        from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

        load_intrinsics(target.kind.name)
        mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
        return tvm.tirx.build(mod, target=target)


def local_builder(**kwargs):
    """``LocalBuilder`` whose workers skip the 37 s all-architecture intrinsic import."""
    from tvm.s_tir import meta_schedule as ms

    return ms.builder.LocalBuilder(f_build="accelc.tuning.build", initializer=_builder_init, **kwargs)
