"""The Python API: ``accelc.compile(model, ...) -> CompiledModel`` and ``accelc.load(path)``."""

from __future__ import annotations

from typing import Mapping, Sequence

from . import artifact, pipeline
from .frontend import import_model
from .runtime import CompiledModel


def compile(  # noqa: A001 - the natural name, as in tvm.compile
    model,
    target: str = "cpu",
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    passes: Sequence = (),
    database=None,
    fast_math: bool = True,
    target_options: Mapping | None = None,
    calibration=None,
) -> CompiledModel:
    """Compile an ONNX model (path, bytes, ``ModelProto``), a Relax ``IRModule`` or a TVMScript
    file for ``target``.

    ``input_shapes`` binds dynamic dims (``{"input_ids": (1, 128)}``); ``passes`` are accelc pass
    specs (``"shift-add:terms=2"``) or ``tvm.transform.Pass`` objects run before lowering;
    ``database`` is a MetaSchedule database (object or directory) whose records replace the
    default schedules; ``fast_math`` uses vectorized polynomial exp/erf/tanh (|rel err| < 1e-6);
    ``calibration`` is input samples (a list of feed dicts, or an ``.npz`` path with a leading
    sample axis) for passes that calibrate.
    """
    imported = import_model(model, input_shapes)
    samples = _samples(calibration, imported)
    ex, meta = pipeline.build(imported, target, passes, database, fast_math, dict(target_options or {}),
                              calibration=samples)
    return CompiledModel(ex, meta, executable=ex)


def _samples(calibration, imported):
    if calibration is None or isinstance(calibration, (list, tuple)):
        return calibration
    from .calibrate import load_calibration

    return load_calibration(calibration, imported.inputs)


def load(path) -> CompiledModel:
    """Load an exported artifact (``.so`` + ``.json``) without recompiling, after checking that it
    was built by this accelc/TVM and for a target this machine runs."""
    lib, meta = artifact.read_meta(path)
    artifact.check_compatible(lib, meta)
    return CompiledModel(artifact.load_library(lib), meta)
