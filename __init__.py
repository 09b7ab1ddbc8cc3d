"""accelc: a compiler flow for custom accelerators on Apache TVM.

    import accelc
    m = accelc.compile("model.onnx", target="cpu", input_shapes={"x": (1, 3, 224, 224)})
    outputs = m.run({"x": x})            # like onnxruntime's InferenceSession.run, as a dict
    m.export("model.so")                 # + model.json
    accelc.load("model.so").run({"x": x})

The heavy imports (TVM) happen on first use, so ``accelc --help`` stays instant.
"""

from __future__ import annotations

import os

__version__ = "0.1.0"

# TVM sizes its CPU thread pool to half the logical CPUs (it assumes SMT siblings); on a 2-vCPU
# machine that is one thread. Default to every CPU this process may run on instead.
if "TVM_NUM_THREADS" not in os.environ:
    try:
        os.environ["TVM_NUM_THREADS"] = str(len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        os.environ["TVM_NUM_THREADS"] = str(os.cpu_count() or 1)

from .errors import (  # noqa: E402
    AccelcError,
    ArtifactError,
    CompileError,
    InputError,
    ModelError,
    PassError,
    ShapeError,
    TargetError,
    UnsupportedOpError,
    UsageError,
)

_LAZY = {
    "compile": ("compiler.api", "compile"),
    "load": ("compiler.api", "load"),
    "CompiledModel": ("compiler.runtime", "CompiledModel"),
    "BenchStats": ("compiler.runtime", "BenchStats"),
    "import_model": ("compiler.frontend", "import_model"),
    "TensorSpec": ("compiler.frontend", "TensorSpec"),
}


def __getattr__(name: str):
    if name in _LAZY:
        from importlib import import_module

        module, attr = _LAZY[name]
        value = getattr(import_module(f"{__name__}.{module}"), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'accelc' has no attribute {name!r}")


__all__ = [
    "AccelcError", "ArtifactError", "BenchStats", "CompileError", "CompiledModel", "InputError",
    "ModelError", "PassError", "ShapeError", "TargetError", "TensorSpec", "UnsupportedOpError",
    "UsageError", "compile", "import_model", "load", "__version__",
]
