"""The driver: imported model + passes + target (+ tuning database) → executable + metadata."""

from __future__ import annotations

import os
from typing import Sequence

from ..errors import CompileError
from ..fileio import native_stderr_silenced
from .artifact import ArtifactMeta
from .frontend import ImportedModel


def apply_passes(imported: ImportedModel, passes: Sequence, calibration=None) -> tuple[object, list[str]]:
    """Run accelc graph passes (spec strings or Pass objects) on the Relax module, in order.

    ``calibration``: input samples (a list of feed dicts). A pass that wants calibration data
    (attention maps, layer Hessians) gets it computed on the module as the earlier passes left
    it; without samples such a pass runs uncalibrated or says what it needs.
    """
    import dataclasses

    import tvm

    from .. import passes as registry

    names = [p if isinstance(p, str) else getattr(p.info, "name", str(p)) for p in passes]
    resolved = check_passes(passes)  # every spec, before any pass or calibration runs
    mod = imported.mod
    registry.take_error()
    for spec, (info, options) in zip(passes, resolved):
        calibrated = {}
        if info is not None:
            kind = info.wants(options)
            if kind and calibration:
                calibrated[kind] = _calibrate(kind, dataclasses.replace(imported, mod=mod), calibration)
        obj = spec if info is None else registry.instantiate(info, options, calibrated)
        try:
            with tvm.transform.PassContext(opt_level=3):
                mod = obj(mod)
        except Exception:
            err = registry.take_error()
            if err is not None:
                raise err from None
            raise
    return mod, names


def check_passes(passes: Sequence) -> list[tuple]:
    """Each pass spec's registered pass and typed options (``(None, None)`` for a Pass object);
    a bad spec raises its one-line PassError here, before anything is compiled."""
    import tvm

    from .. import passes as registry

    return [(None, None) if isinstance(p, tvm.transform.Pass) else registry.resolve(p) for p in passes]


def _calibrate(kind: str, imported: ImportedModel, samples):
    from . import calibrate

    if kind == "hessians":
        return calibrate.layer_hessians(imported, samples)
    if kind == "maps":
        return calibrate.attention_maps(imported, samples)
    raise ValueError(f"unknown calibration kind {kind!r}")


def build(imported: ImportedModel, target: str = "cpu", passes: Sequence = (), database=None,
          fast_math: bool = True, target_options: dict | None = None, calibration=None):
    """Compile; returns ``(tvm Executable, ArtifactMeta)``."""
    import tvm

    from .. import targets

    spec = targets.get(target)
    tvm_target = spec.make(**(target_options or {}))
    mod, pass_names = apply_passes(imported, passes, calibration)
    db = _open_database(database, tvm_target)
    try:
        with tvm.transform.PassContext(opt_level=3), native_stderr_silenced():
            ex = tvm.compile(mod, tvm_target,
                             relax_pipeline=spec.pipeline(tvm_target, database=db, fast_math=fast_math))
    except Exception as err:  # noqa: BLE001 - TVM raises many error types; keep the first line
        if os.environ.get("ACCELC_DEBUG"):
            raise
        raise CompileError(f"{imported.name}: TVM failed to compile for {target}: {_first_error_line(err)}") from None
    meta = ArtifactMeta(
        name=imported.name,
        target_name=spec.name,
        target=_jsonable(tvm_target.export()),
        inputs=list(imported.inputs),
        outputs=list(imported.outputs),
        passes=pass_names,
        isa_features=_isa(spec.name, tvm_target),
        index_bounds=dict(imported.index_bounds),
        fast_math=fast_math,
        tuned=db is not None,
        source_sha256=imported.source_sha256,
        accelerator=_accelerator(mod) if spec.name == "sim" else None,
    )
    return ex, meta


def _accelerator(mod) -> dict:
    """The sim compile's per-layer accelerator table, from the layers the offload planned."""
    import json

    from ..targets.sim import offload
    from .report import accelerator_summary

    records = json.loads(str(mod.attrs["accelc.rewrites"])) if mod.attrs and "accelc.rewrites" in mod.attrs else []
    return accelerator_summary(records, [offload.estimate(**p) for p in offload.PLAN], offload.current_config())


def _jsonable(value):
    """TVM containers (Array, Map, IntImm) → plain JSON values."""
    if isinstance(value, (str, bool, int, float)) or value is None:
        return value
    if hasattr(value, "items"):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) or hasattr(value, "__iter__"):
        return [_jsonable(v) for v in value]
    if hasattr(value, "value"):
        return value.value
    return str(value)


def _isa(target_name: str, tvm_target) -> list[str]:
    if target_name in ("cpu", "sim"):  # sim: the host part runs on this CPU
        from ..targets import cpu

        return cpu.isa_features(tvm_target)
    return []


def _open_database(database, target):
    if database is None:
        return None
    from tvm.s_tir import meta_schedule as ms

    if isinstance(database, ms.database.Database):
        return database
    from ..schedules.tuning.database import open_database

    # refuses corrupt or foreign databases; applies each verified task's side-by-side winner
    return open_database(os.fspath(database), target).for_compile()


def _first_error_line(err: Exception) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    for ln in lines:  # an accelc error raised inside a TVM pass: its own words
        if "ACCELC_NO_GPU_KERNEL " in ln:
            return ln[ln.index("ACCELC_NO_GPU_KERNEL ") + len("ACCELC_NO_GPU_KERNEL "):][:300]
    for ln in lines:
        if "Check failed" in ln or ln.startswith(("Error", "ValueError", "TypeError", "InternalError")):
            return ln[:300]
    return (lines[-1] if lines else type(err).__name__)[:300]
