"""accelc's graph passes: a registry of ``tvm.transform.Pass`` factories with typed options.

A pass registers itself with ``@register("name", Options)`` where ``Options`` is a dataclass
of its knobs; ``make("name:key=value,...")`` parses a CLI spec into that dataclass (types
coerced, unknown keys rejected) and returns the Pass. Passes are ordinary TVM passes, usable
in ``tvm.transform.Sequential`` without accelc's driver.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import PassError


@dataclass(frozen=True)
class PassInfo:
    name: str
    factory: Callable[..., Any]  # (options, **calibration data) -> tvm.transform.Pass
    options: type | None
    summary: str
    #: options -> the calibration data the pass wants as a factory keyword ("hessians": per
    #: layer XᵀX; "maps": per attention site mean softmax maps) or None; the driver computes it.
    calibration: Callable[[Any], str | None] | None = None

    def wants(self, options) -> str | None:
        return self.calibration(options) if self.calibration is not None else None


_REGISTRY: dict[str, PassInfo] = {}


def register(name: str, options: type | None = None, calibration: Callable | None = None):
    """Decorator: register ``factory(options) -> Pass`` under ``name``; ``calibration(options)``
    names the calibration keyword the factory takes, when it wants one."""

    def wrap(factory):
        doc = (factory.__doc__ or "").strip().splitlines()
        _REGISTRY[name] = PassInfo(name, factory, options, doc[0] if doc else "", calibration)
        return factory

    return wrap


_LAST_ERROR: list = []


def module_pass(name: str):
    """``tvm.transform.module_pass`` whose accelc errors survive the FFI boundary.

    TVM turns a Python exception raised inside a pass into a RuntimeError carrying the text
    only; the driver calls ``take_error()`` to re-raise the original (a ``PassError``).
    """
    import tvm

    def wrap(body):
        def run(mod, ctx):
            try:
                return body(mod, ctx)
            except PassError as err:
                _LAST_ERROR[:] = [err]
                raise

        return tvm.transform.module_pass(run, opt_level=0, name=name)

    return wrap


def constant_take(call) -> tuple[int, int] | None:
    """``(axis, index)`` of ``take(x, i, axis)`` with a constant scalar ``i`` within x's static
    extent on that axis (negative ``i`` counted from the end); None for any other take."""
    import tvm

    x, idx = call.args
    if not isinstance(idx, tvm.ir.expr.Constant) or idx.value.numpy().ndim != 0 or call.attrs.axis is None:
        return None
    shape = static_shape(x)
    if shape is None:
        return None
    axis = int(call.attrs.axis) % len(shape)
    i = int(idx.value.numpy())
    i = i + shape[axis] if i < 0 else i
    return (axis, i) if 0 <= i < shape[axis] else None


def static_shape(expr) -> list[int] | None:
    """A Relax expression's static shape as ints (None when unknown or symbolic)."""
    shape = getattr(getattr(expr, "ty", None), "shape", None)
    if shape is None:
        return None
    try:
        return [int(d) for d in (shape.values if hasattr(shape, "values") else shape)]
    except (TypeError, AttributeError):
        return None


def append_record(old_mod, new_mod, record: dict):
    """``new_mod`` with ``record`` appended to the ``accelc.rewrites`` list ``old_mod`` carried
    (the report and the artifact read it)."""
    import json

    attrs = getattr(old_mod, "attrs", None)
    previous = json.loads(str(attrs["accelc.rewrites"])) if attrs is not None and "accelc.rewrites" in attrs else []
    return new_mod.with_attr("accelc.rewrites", json.dumps(previous + [record]))


def options_record(options) -> dict:
    """A pass's typed options as JSON values (tuples of patterns → lists)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(options).items()}


def check_knobs(options, checks) -> None:
    """Raise ``ValueError("knob must be WANT, got VALUE")`` for the first failed check;
    ``checks`` is ``[(knob, ok, want), ...]`` (the registry reports it as a PassError)."""
    for knob, ok, want in checks:
        if not ok:
            raise ValueError(f"{knob} must be {want}, got {getattr(options, knob)!r}")


def replace_calls(mod, targets: dict, emit):
    """``mod`` with each Relax call in ``targets`` (call → context) replaced by
    ``emit(builder, call, context, remap)`` — ``call`` with its arguments already rewritten,
    ``remap(expr)`` the rewritten form of any other expression of the original function — in
    every Relax function; what the replacements leave dead is removed."""
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    @mutator
    class Rewriter(PyExprMutator):
        def visit_call_(self, call):  # noqa: D102
            context = targets.get(call)
            call = self.visit_expr_post_order(call)
            return call if context is None else emit(self.builder_, call, context, self.visit_expr)

    rw = Rewriter(mod)
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            rw.builder_.update_func(gv, rw.visit_expr(func))
    return relax.transform.DeadCodeElimination()(rw.builder_.get())


def take_error() -> PassError | None:
    """The PassError the last failing accelc pass raised (once), if any."""
    return _LAST_ERROR.pop() if _LAST_ERROR else None


def list_passes() -> list[PassInfo]:
    _load_builtin()
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """``"name:key=value,key2=value2"`` → ``("name", {"key": "value", ...})``."""
    name, _, rest = spec.strip().partition(":")
    opts: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise PassError(f"pass '{name}': option '{item}' is not KEY=VALUE")
        opts[key.strip().replace("-", "_")] = value.strip()
    return name, opts


def _coerce(pass_name: str, field: dataclasses.Field, raw: Any):
    typ = field.type if isinstance(field.type, type) else str(field.type)
    text = str(raw)
    try:
        if typ in (bool, "bool"):
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if typ in (int, "int"):
            return int(text)
        if typ in (float, "float"):
            return float(text)
        if "tuple" in str(typ) or "list" in str(typ):
            return tuple(s for s in text.replace(";", "|").split("|") if s) if isinstance(raw, str) else tuple(raw)
    except ValueError:
        raise PassError(f"pass '{pass_name}': option '{field.name}' expects {typ}, got '{raw}'") from None
    return raw


def resolve(spec, **overrides) -> tuple[PassInfo, object]:
    """A spec's registered pass and its typed options (None for a pass without options)."""
    return _resolve(spec, overrides)


def _resolve(spec, overrides) -> tuple[PassInfo, object]:
    """A spec's registered pass and its typed options (None for a pass without options)."""
    _load_builtin()
    name, opts = parse_spec(spec) if isinstance(spec, str) else (spec, {})
    opts.update(overrides)
    if name not in _REGISTRY:
        known = ", ".join(sorted(_REGISTRY)) or "none registered"
        raise PassError(f"unknown pass '{name}' (available: {known})")
    info = _REGISTRY[name]
    if info.options is None:
        if opts:
            raise PassError(f"pass '{name}' takes no options, got {', '.join(opts)}")
        return info, None
    fields = {f.name: f for f in dataclasses.fields(info.options)}
    unknown = sorted(set(opts) - set(fields))
    if unknown:
        raise PassError(f"pass '{name}': unknown option(s) {', '.join(unknown)}; "
                        f"known: {', '.join(fields)}")
    values = {k: _coerce(name, fields[k], v) for k, v in opts.items()}
    try:
        return info, info.options(**values)
    except (TypeError, ValueError) as err:
        raise PassError(f"pass '{name}': {err}") from None


def make_options(spec, **overrides):
    """The typed options a spec (``name:k=v,...``) asks of its pass (None if it takes none)."""
    return _resolve(spec, overrides)[1]


def make(spec, calibrated: dict | None = None, **overrides):
    """A Pass from a spec string (``name:k=v,...``), a registered name, or a Pass (returned as
    is). ``calibrated``: calibration data by keyword (see ``PassInfo.calibration``)."""
    import tvm

    if isinstance(spec, tvm.transform.Pass):
        return spec
    info, options = _resolve(spec, overrides)
    return instantiate(info, options, calibrated)


def instantiate(info: PassInfo, options, calibrated: dict | None = None):
    """The Pass of a resolved spec (``resolve``), given its calibration data by keyword."""
    kwargs = dict(calibrated or {})
    return info.factory(**kwargs) if info.options is None else info.factory(options, **kwargs)


def _load_builtin() -> None:
    """Import the modules that register accelc's own passes (they register on import)."""
    from importlib import import_module

    for module in _BUILTIN:
        import_module(f"{__name__}.{module}")


_BUILTIN: tuple[str, ...] = ("shift_add", "int8", "linearize", "polarize", "mixed_precision")
