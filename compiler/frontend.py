"""Model import: ONNX (file, bytes or ``ModelProto``), Relax ``IRModule`` or TVMScript text → Relax.

ONNX models go through ``prepare_onnx`` before TVM's importer sees them:
  1. load (external data only from inside the model's folder), ONNX checker;
  2. list *every* operator neither TVM's importer nor our converters handle;
  3. bind dynamic input dimensions from user-given shapes (a named dim bound on one input binds
     it on every input that shares the name);
  4. fold shape-computation subgraphs to constants with onnxslim (TVM's importer breaks on
     ``Range(Shape(·))`` chains and silently mis-shapes ``Expand`` with a runtime shape);
  5. repair what TVM's importer mishandles (see ``onnx_fixes``).
The importer then runs with our converters added and every failure tied to its node.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto

from ..errors import ModelError, ShapeError, UnsupportedOpError

_ONNX_DTYPES = {
    TensorProto.FLOAT: "float32",
    TensorProto.FLOAT16: "float16",
    TensorProto.BFLOAT16: "bfloat16",
    TensorProto.DOUBLE: "float64",
    TensorProto.INT8: "int8",
    TensorProto.INT16: "int16",
    TensorProto.INT32: "int32",
    TensorProto.INT64: "int64",
    TensorProto.UINT8: "uint8",
    TensorProto.UINT16: "uint16",
    TensorProto.UINT32: "uint32",
    TensorProto.UINT64: "uint64",
    TensorProto.BOOL: "bool",
}

# Ops whose presence means shape arithmetic that onnxslim should fold before TVM imports.
_SHAPE_OPS = {"Shape", "Size", "Range", "ConstantOfShape", "EyeLike", "Expand", "Tile"}


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: its ONNX name, static shape and NumPy dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_json(cls, d: Mapping) -> "TensorSpec":
        return cls(str(d["name"]), tuple(int(x) for x in d["shape"]), str(d["dtype"]))

    def __str__(self) -> str:
        return f"{self.name}: {self.dtype}[{','.join(map(str, self.shape))}]"


@dataclass
class ImportedModel:
    """A model in Relax, with the I/O contract the runtime checks feeds against."""

    mod: "object"  # tvm.IRModule (kept untyped so this module imports without TVM)
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    name: str
    onnx_model: onnx.ModelProto | None = None  # the prepared (static, folded) ONNX graph
    index_bounds: dict[str, int] = field(default_factory=dict)  # input → exclusive bound for ids
    source_sha256: str | None = None


# -- loading ---------------------------------------------------------------------------------
def load_onnx(source, *, load_weights: bool = True) -> tuple[onnx.ModelProto, str, str]:
    """Read an ONNX model from a path, bytes or ``ModelProto``; returns (model, label, sha256)."""
    if isinstance(source, onnx.ModelProto):
        data = source.SerializeToString()
        return source, source.graph.name or "model", hashlib.sha256(data).hexdigest()
    if isinstance(source, (bytes, bytearray)):
        return _parse(bytes(source), "<bytes>"), "<bytes>", hashlib.sha256(source).hexdigest()
    path = Path(source)
    if not path.exists():
        raise ModelError(f"{path}: no such file")
    if path.is_dir():
        raise ModelError(f"{path}: is a directory, not an ONNX file")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ModelError(f"{path}: cannot read ({err.strerror})") from None
    model = _parse(data, str(path))
    if load_weights:
        _load_external_data(model, path)
    return model, str(path), hashlib.sha256(data).hexdigest()


def _parse(data: bytes, label: str) -> onnx.ModelProto:
    if not data:
        raise ModelError(f"{label}: empty file, not an ONNX model")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as err:  # google.protobuf.message.DecodeError and friends
        hint = "truncated or corrupt" if data[:1] == b"\x08" else "not an ONNX model"
        raise ModelError(f"{label}: {hint} (protobuf: {err})") from None
    # Protobuf parses many non-ONNX byte strings "successfully": demand the basic fields.
    if model.ir_version <= 0 or not model.HasField("graph") or not (
        model.graph.node or model.graph.output
    ):
        raise ModelError(f"{label}: not an ONNX model (no IR version or graph)")
    return model


def _load_external_data(model: onnx.ModelProto, path: Path) -> None:
    """Load external tensors, refusing any location outside the model's own folder."""
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data

    base = path.resolve().parent
    for tensor in _get_all_tensors(model):
        if not uses_external_data(tensor):
            continue
        info = ExternalDataInfo(tensor)
        loc = Path(info.location)
        target = (base / loc).resolve()
        if loc.is_absolute() or base not in target.parents:
            raise ModelError(
                f"{path}: tensor '{tensor.name}' points at external data '{info.location}' outside "
                f"the model's folder {base}: refused"
            )
        if not target.is_file():
            raise ModelError(f"{path}: tensor '{tensor.name}' needs external data file "
                             f"'{info.location}', which does not exist")
        size = target.stat().st_size
        offset, length = int(info.offset or 0), info.length
        if offset > size or (length is not None and offset + int(length) > size):
            raise ModelError(f"{path}: tensor '{tensor.name}' reads past the end of '{info.location}'")
        with open(target, "rb") as fh:
            fh.seek(offset)
            tensor.raw_data = fh.read(int(length)) if length is not None else fh.read()
        tensor.data_location = TensorProto.DEFAULT
        del tensor.external_data[:]


# -- validation ------------------------------------------------------------------------------
def check_model(model: onnx.ModelProto, label: str) -> None:
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else "invalid model"
        raise ModelError(f"{label}: fails the ONNX checker: {first}") from None
    except Exception as err:  # noqa: BLE001 - the checker raises plain RuntimeErrors too
        raise ModelError(f"{label}: fails the ONNX checker: {str(err).strip().splitlines()[0]}") from None


def default_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 1


def supported_ops() -> set[str]:
    """Operator types TVM's importer or our own converters can import."""
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    from .onnx_ops import CONVERTERS

    return set(_get_convert_map()) | set(CONVERTERS) | {"If", "Constant"}


def find_unsupported(model: onnx.ModelProto) -> list[tuple[str, str, int]]:
    """Every node (subgraphs included) whose operator cannot be imported: (op, node, opset)."""
    ok, opset, out = supported_ops(), default_opset(model), []

    def walk(graph: onnx.GraphProto):
        for i, node in enumerate(graph.node):
            if node.op_type not in ok:
                out.append((node.op_type, node.name or f"#{i}", opset))
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    walk(attr.g)
                for g in attr.graphs:
                    walk(g)

    walk(model.graph)
    return out


# -- shapes ----------------------------------------------------------------------------------
def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    inits = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def _dims(vi: onnx.ValueInfoProto) -> list[int | str | None]:
    if not vi.type.HasField("tensor_type") or not vi.type.tensor_type.HasField("shape"):
        return None  # unknown rank
    out = []
    for d in vi.type.tensor_type.shape.dim:
        if d.HasField("dim_value") and d.dim_value >= 0:  # 0 is a real (empty) extent
            out.append(int(d.dim_value))
        elif d.HasField("dim_param") and d.dim_param:
            out.append(d.dim_param)
        else:
            out.append(None)
    return out


def _dtype(vi: onnx.ValueInfoProto, label: str) -> str:
    elem = vi.type.tensor_type.elem_type if vi.type.HasField("tensor_type") else 0
    if elem not in _ONNX_DTYPES:
        name = TensorProto.DataType.Name(elem) if elem in TensorProto.DataType.values() else elem
        raise ModelError(f"{label}: input/output '{vi.name}' has unsupported type {name}")
    return _ONNX_DTYPES[elem]


def parse_shape_spec(spec: str) -> tuple[str, tuple[int, ...]]:
    """``name=1,3,224,224`` (or ``name:1x3x224x224``) → (name, shape)."""
    sep = "=" if "=" in spec else ":"
    name, _, dims = spec.rpartition(sep)
    if not name or not dims:
        raise ShapeError(f"bad --input-shape '{spec}': expected NAME=D1,D2,... (e.g. x=1,3,224,224)")
    try:
        shape = tuple(int(d) for d in dims.replace("x", ",").split(",") if d.strip())
    except ValueError:
        raise ShapeError(f"bad --input-shape '{spec}': dimensions must be integers") from None
    if not shape or any(d <= 0 for d in shape):
        raise ShapeError(f"bad --input-shape '{spec}': dimensions must be positive")
    return name, shape


def bind_input_shapes(model: onnx.ModelProto, shapes: Mapping[str, Sequence[int]] | None,
                      label: str) -> dict[str, tuple[int, ...]]:
    """Fix every graph input's shape; raise one error naming every dim left dynamic."""
    shapes = {k: tuple(int(x) for x in v) for k, v in (shapes or {}).items()}
    inputs = graph_inputs(model)
    names = [i.name for i in inputs]
    unknown = sorted(set(shapes) - set(names))
    if unknown:
        raise ShapeError(f"{label}: --input-shape names unknown input(s) {', '.join(unknown)}; "
                         f"the inputs are {', '.join(names)}")
    symbols: dict[str, int] = {}
    for vi in inputs:  # learn named dims from the shapes the user gave
        dims = _dims(vi)
        if vi.name in shapes and dims is not None:
            given = shapes[vi.name]
            if len(given) != len(dims):
                raise ShapeError(f"{label}: input '{vi.name}' has rank {len(dims)} "
                                 f"({_fmt_dims(dims)}), --input-shape gives rank {len(given)}")
            for d, g in zip(dims, given):
                if isinstance(d, int) and d != g:
                    raise ShapeError(f"{label}: input '{vi.name}' is fixed at {_fmt_dims(dims)}; "
                                     f"--input-shape gives {','.join(map(str, given))}")
                if isinstance(d, str):
                    symbols.setdefault(d, g)
    resolved, missing = {}, []
    for vi in inputs:
        dims = _dims(vi)
        if vi.name in shapes:
            resolved[vi.name] = shapes[vi.name]
            continue
        if dims is None:
            missing.append(f"'{vi.name}' (unknown rank)")
            continue
        out = []
        for axis, d in enumerate(dims):
            if isinstance(d, int):
                out.append(d)
            elif isinstance(d, str) and d in symbols:
                out.append(symbols[d])
            else:
                missing.append(f"'{vi.name}' dim {axis}" + (f" ('{d}')" if d else ""))
                out.append(None)
        resolved[vi.name] = tuple(out)
    if missing:
        example = next(i.name for i in inputs if None in resolved.get(i.name, (None,)) or
                       i.name not in resolved)
        raise ShapeError(f"{label}: dynamic input dimension(s) {', '.join(missing)}: give static "
                         f"shapes with --input-shape (e.g. --input-shape {example}=1,...)")
    for vi in inputs:
        shape = vi.type.tensor_type.shape
        del shape.dim[:]
        for d in resolved[vi.name]:
            shape.dim.add().dim_value = int(d)
    return resolved


def _fmt_dims(dims) -> str:
    return "[" + ",".join("?" if d is None else str(d) for d in dims) + "]"


# -- preparation -----------------------------------------------------------------------------
def prepare_onnx(model: onnx.ModelProto, input_shapes=None, label: str = "model",
                 fold: str = "auto") -> onnx.ModelProto:
    """Validate, bind shapes, fold shape arithmetic and repair importer gaps (see module doc)."""
    from . import onnx_fixes

    m = onnx.ModelProto()
    m.CopyFrom(model)
    check_model(m, label)
    unsupported = find_unsupported(m)
    if unsupported:
        raise UnsupportedOpError(unsupported, label)
    had_dynamic = any(not all(isinstance(d, int) for d in (_dims(i) or [None])) for i in graph_inputs(m))
    bind_input_shapes(m, input_shapes, label)
    m = onnx_fixes.normalize_constants(m)
    ops = {n.op_type for n in m.graph.node}
    if fold == "always" or (fold == "auto" and (had_dynamic or ops & _SHAPE_OPS)):
        m = _slim(m, label)
    m = _infer_shapes(m, label)
    m = onnx_fixes.apply_all(m)
    return m


def _slim(model: onnx.ModelProto, label: str) -> onnx.ModelProto:
    """Constant-fold with onnxslim, keeping the graph's structure (no pattern fusion)."""
    import onnxslim

    with _quiet():
        try:
            out = onnxslim.slim(model, skip_optimizations=["graph_fusion", "weight_tying"])
        except Exception:  # noqa: BLE001 - a folding failure leaves the graph as it was
            return model
    if not isinstance(out, onnx.ModelProto):
        return model
    # onnxslim drops graph inputs that folding made unused; the model's interface must not
    # change (callers feed every input), so put them back, in their original order.
    kept = {i.name: i for i in out.graph.input}
    inits = {t.name for t in out.graph.initializer}
    inputs = [kept.get(i.name, i) for i in model.graph.input if i.name in kept or i.name not in inits]
    del out.graph.input[:]
    out.graph.input.extend(inputs)
    return out


def _infer_shapes(model: onnx.ModelProto, label: str) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception as err:  # noqa: BLE001
        raise ModelError(f"{label}: ONNX shape inference failed: {str(err).splitlines()[0]}") from None


@contextlib.contextmanager
def _quiet():
    """Silence the chatter of onnxslim and TVM's importer (prints and warnings)."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def index_bounds(model: onnx.ModelProto) -> dict[str, int]:
    """Inputs used directly as Gather indices into a constant table → the table's size.

    TVM lowers ONNX Gather in "fast" mode, which reads out of bounds (and may crash) on a bad
    index, so the runtime checks such inputs before it runs the model.
    """
    inits = {t.name: t for t in model.graph.initializer}
    names = {i.name for i in graph_inputs(model)}
    bounds: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type != "Gather" or len(node.input) < 2 or node.input[1] not in names:
            continue
        table = inits.get(node.input[0])
        if table is None:
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        dims = list(table.dims)
        size = dims[axis if axis >= 0 else axis + len(dims)]
        bounds[node.input[1]] = min(bounds.get(node.input[1], size), int(size))
    return bounds


def weight_names(model: onnx.ModelProto) -> dict[str, str]:
    """Constant weights of MatMul/Gemm/Conv nodes, by content fingerprint → the node's name.

    Relax constants carry no names; graph passes look a constant's fingerprint up here so
    layer allow/deny patterns can name ONNX nodes (``*/attention/*``). Transposed copies are
    listed in the orientation they reach Relax (Gemm's ``transB`` weights arrive transposed).
    """
    from ..passes.naming import fingerprint

    inits = {t.name: t for t in model.graph.initializer}
    names: dict[str, str] = {}
    for index, node in enumerate(model.graph.node):
        if node.op_type not in ("MatMul", "Gemm", "Conv", "ConvTranspose"):
            continue
        label = node.name or f"{node.op_type}_{index}"
        for arg in node.input[1:2]:
            if arg in inits:
                arr = onnx.numpy_helper.to_array(inits[arg])
                names.setdefault(fingerprint(arr), label)
                if arr.ndim == 2 and _transposed_b(node):
                    names.setdefault(fingerprint(arr.T), label)
    return names


def _transposed_b(node) -> bool:
    return node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute)


def _specs(values, label: str) -> list[TensorSpec]:
    out = []
    for vi in values:
        dims = _dims(vi)
        if dims is None or not all(isinstance(d, int) for d in dims):
            raise ShapeError(f"{label}: '{vi.name}' has no static shape after shape inference "
                             f"({_fmt_dims(dims or [])}); data-dependent shapes are not supported")
        out.append(TensorSpec(vi.name, tuple(dims), _dtype(vi, label)))
    return out


def _output_specs(model: onnx.ModelProto, label: str) -> list[TensorSpec]:
    known = {vi.name: vi for vi in list(model.graph.value_info) + list(model.graph.output)}
    return _specs([known.get(o.name, o) for o in model.graph.output], label)


# -- import ----------------------------------------------------------------------------------
def import_onnx(source, input_shapes=None, fold: str = "auto") -> ImportedModel:
    """ONNX → Relax with accelc's preparation and converters (see the module docstring)."""
    model, label, digest = load_onnx(source)
    prepared = prepare_onnx(model, input_shapes, label, fold=fold)
    inputs = _specs(graph_inputs(prepared), label)
    outputs = _output_specs(prepared, label)
    from .onnx_ops import import_graph

    mod = import_graph(prepared, {s.name: list(s.shape) for s in inputs},
                       {s.name: s.dtype for s in inputs}, label)
    mod = mod.with_attr("accelc.weight_names", weight_names(prepared))
    name = Path(label).stem if label not in ("<bytes>",) else (model.graph.name or "model")
    return ImportedModel(mod, inputs, outputs, name, prepared, index_bounds(prepared), digest)


def import_relax(mod, name: str = "relax_module") -> ImportedModel:
    """A Relax ``IRModule`` whose ``main`` has statically shaped tensor params and results."""
    import tvm
    from tvm import relax

    if not isinstance(mod, tvm.IRModule) or "main" not in [g.name_hint for g in mod.get_global_vars()]:
        raise ModelError(f"{name}: an IRModule with a Relax function 'main' is required")
    main = mod["main"]
    if not isinstance(main, relax.Function):
        raise ModelError(f"{name}: 'main' is not a Relax function")
    num_input = int(main.attrs["num_input"]) if main.attrs and "num_input" in main.attrs else len(main.params)
    inputs = [_relax_spec(p.name, p.ty, name) for p in main.params[:num_input]]
    ret = main.ret_ty if hasattr(main, "ret_ty") else main.body.ty
    if isinstance(ret, relax.TupleType):
        outputs = [_relax_spec(f"output_{i}", t, name) for i, t in enumerate(ret.fields)]
    else:
        outputs = [_relax_spec("output_0", ret, name)]
    return ImportedModel(mod, inputs, outputs, name)


def _relax_spec(label: str, ty, name: str) -> TensorSpec:
    from tvm import relax

    if not isinstance(ty, relax.TensorType) or ty.shape is None:
        raise ModelError(f"{name}: '{label}' must be a tensor with a known shape, got {ty}")
    try:
        shape = tuple(int(d) for d in ty.shape.values)
    except (TypeError, AttributeError):
        raise ShapeError(f"{name}: '{label}' has a symbolic shape {ty.shape}; accelc compiles "
                         "static shapes (bind them before compiling)") from None
    return TensorSpec(label, shape, str(ty.dtype))


def import_model(model, input_shapes=None, fold: str = "auto") -> ImportedModel:
    """Dispatch on what ``model`` is: ``ImportedModel``, IRModule, ModelProto, bytes or a path
    to an ONNX file or a TVMScript (``.py``) file."""
    import tvm

    if isinstance(model, ImportedModel):
        return model
    if isinstance(model, tvm.IRModule):
        if input_shapes:
            raise ShapeError("input shapes apply to ONNX models; a Relax module carries its own")
        return import_relax(model)
    if isinstance(model, (str, os.PathLike)) and Path(model).suffix in (".py", ".tvmscript"):
        return import_relax(_parse_tvmscript(Path(model)), Path(model).stem)
    return import_onnx(model, input_shapes, fold=fold)


def _parse_tvmscript(path: Path):
    """The IRModule a TVMScript file defines.

    A ``.py`` file is run as the Python it is (it imports ``tvm.script`` and decorates a class
    with ``@I.ir_module``), and must define exactly one IRModule (or one named ``Module``);
    a ``.tvmscript`` file holds the bare printed module, parsed with ``tvm.script.from_source``.
    """
    import runpy

    import tvm

    if not path.is_file():
        raise ModelError(f"{path}: no such file")
    try:
        with _quiet():
            if path.suffix == ".tvmscript":
                found = {"Module": tvm.script.from_source(path.read_text())}
            else:
                found = runpy.run_path(str(path), run_name="accelc_tvmscript")
    except Exception as err:  # noqa: BLE001 - parse errors of any kind are the file's
        last = [ln for ln in str(err).strip().splitlines() if ln.strip()] or [type(err).__name__]
        raise ModelError(f"{path}: not a TVMScript IRModule ({type(err).__name__}: {last[-1].strip()})") from None
    mods = {k: v for k, v in found.items() if isinstance(v, tvm.IRModule)}
    if "Module" in mods:
        return mods["Module"]
    if len(mods) != 1:
        raise ModelError(f"{path}: defines {len(mods)} IRModules ({', '.join(mods) or 'none'}); "
                         "name the one to compile 'Module'")
    return next(iter(mods.values()))


def random_feeds(specs: Sequence[TensorSpec], seed: int = 0,
                 bounds: Mapping[str, int] | None = None) -> dict[str, np.ndarray]:
    """Deterministic feeds for benchmarking or checking: normal floats, in-range ids, ones masks."""
    rng = np.random.default_rng(seed)
    out = {}
    for s in specs:
        if s.dtype.startswith("float") or s.dtype == "bfloat16":
            out[s.name] = rng.standard_normal(s.shape).astype(s.dtype)
        elif s.dtype == "bool":
            out[s.name] = np.ones(s.shape, bool)
        else:
            hi = (bounds or {}).get(s.name, 2)
            out[s.name] = rng.integers(0, max(hi, 1), s.shape).astype(s.dtype)
    return out
