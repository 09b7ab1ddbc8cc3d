"""Exported artifacts: ``NAME.so`` (the VM executable) + ``NAME.json`` (everything needed to run
it safely: I/O contract, target and its ISA needs, passes, versions).

Writes are atomic (temp file in the destination folder, then rename): an interrupted export
never leaves a partial artifact, and never clobbers a good one with a broken one.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import ArtifactError, UsageError
from ..fileio import atomic_write, native_stderr_silenced
from .frontend import TensorSpec

FORMAT = 1


def versions() -> dict[str, str]:
    import tvm
    import tvm_ffi

    from .. import __version__

    return {"accelc": __version__, "tvm": tvm.__version__, "tvm_ffi": tvm_ffi.__version__}


@dataclass
class ArtifactMeta:
    """The sidecar: read before the library is loaded, so mismatches fail with a clear message."""

    name: str
    target_name: str
    target: dict
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    passes: list[str] = field(default_factory=list)
    isa_features: list[str] = field(default_factory=list)
    index_bounds: dict[str, int] = field(default_factory=dict)
    fast_math: bool = True
    tuned: bool = False
    source_sha256: str | None = None
    #: sim target: the compile-time accelerator summary (machine config, per-layer cycles,
    #: bytes, energy; ``report.accelerator_summary`` of ``offload.estimate``)
    accelerator: dict | None = None
    versions: dict[str, str] = field(default_factory=versions)
    format: int = FORMAT

    def to_json(self) -> dict:
        d = asdict(self)
        d["inputs"] = [s.to_json() for s in self.inputs]
        d["outputs"] = [s.to_json() for s in self.outputs]
        return d

    @classmethod
    def from_json(cls, d: dict) -> "ArtifactMeta":
        d = dict(d)
        d["inputs"] = [TensorSpec.from_json(x) for x in d["inputs"]]
        d["outputs"] = [TensorSpec.from_json(x) for x in d["outputs"]]
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


def paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """(library, sidecar) for a user-given artifact path (``out.so`` or ``out``)."""
    p = Path(path)
    lib = p if p.suffix == ".so" else p.with_name(p.name + ".so")
    return lib, lib.with_suffix(".json")


def check_writable(path: str | os.PathLike) -> tuple[Path, Path]:
    """Fail before any work if the artifact cannot be written where asked."""
    lib, meta = paths(path)
    folder = lib.parent if str(lib.parent) else Path(".")
    if not folder.exists():
        raise UsageError(f"output directory {folder} does not exist")
    if not folder.is_dir():
        raise UsageError(f"output path {folder} is not a directory")
    if not os.access(folder, os.W_OK):
        raise UsageError(f"output directory {folder} is not writable")
    if lib.exists() and lib.is_dir():
        raise UsageError(f"output path {lib} is a directory")
    return lib, meta


def export(executable, meta: ArtifactMeta, path) -> Path:
    """Write the library and its sidecar atomically; returns the library path.

    The sidecar is serialised before anything touches the disk, and written only after the
    library is in place, so a failure never leaves a library without its metadata.
    """
    from .. import targets

    lib, side = check_writable(path)
    text = json.dumps(meta.to_json(), indent=2) + "\n"
    spec = targets.get(meta.target_name)
    write = ((lambda tmp: spec.export(executable, tmp, meta.target)) if spec.export
             else (lambda tmp: executable.export_library(tmp)))
    with native_stderr_silenced():
        atomic_write(lib, write, executable=True)
    try:
        atomic_write(side, lambda tmp: Path(tmp).write_text(text))
    except BaseException:
        lib.unlink(missing_ok=True)
        raise
    return lib


def read_meta(path) -> tuple[Path, ArtifactMeta]:
    lib, side = paths(path)
    if not lib.exists():
        raise ArtifactError(f"{lib}: no such artifact")
    if not side.exists():
        raise ArtifactError(f"{lib}: its metadata file {side.name} is missing (was it built by accelc?)")
    try:
        meta = ArtifactMeta.from_json(json.loads(side.read_text()))
    except (ValueError, KeyError, TypeError) as err:
        raise ArtifactError(f"{side}: corrupt artifact metadata ({err})") from None
    if meta.format != FORMAT:
        raise ArtifactError(f"{lib}: artifact format {meta.format}, this accelc reads format {FORMAT}")
    return lib, meta


def check_compatible(lib: Path, meta: ArtifactMeta) -> None:
    """Same accelc/TVM versions, and a target this machine can run."""
    from .. import targets

    here = versions()
    for key in ("accelc", "tvm", "tvm_ffi"):
        theirs = meta.versions.get(key)
        if theirs != here[key]:
            raise ArtifactError(
                f"{lib}: built by {key} {theirs}, this is {key} {here[key]}: recompile the model")
    spec = targets.get(meta.target_name)
    spec.check_runnable(meta.target, meta.isa_features)


def load_library(lib: Path):
    import tvm

    try:
        with native_stderr_silenced():
            return tvm.runtime.load_module(str(lib))
    except Exception as err:  # noqa: BLE001
        raise ArtifactError(f"{lib}: cannot load the library ({str(err).strip().splitlines()[0]})") from None
