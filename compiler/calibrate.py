"""Calibration: run the ORIGINAL model over a calibration set and collect what the passes need.

- ``attention_maps`` — the average softmax map ``[H, N, N]`` of every matched attention site
  (ViTCoD's fixed masks, the linearization's local-mass gates);
- ``layer_hessians`` — ``XᵀX / rows`` of the input of every shift-add candidate (ShiftAddLLM's
  GPTQ-style error feedback).

The tensors are tapped by compiling the model once with them as extra outputs (the CPU target,
untuned), so calibration sees exactly what inference computes. Passes never compile (they sit
upstream of targets); the driver calls these and hands the passes plain arrays.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Sequence

import numpy as np

from ..errors import InputError
from .frontend import ImportedModel, TensorSpec


def tap_module(mod, taps: Sequence):
    """``mod`` whose ``main`` also returns the values bound to ``taps`` (vars of ``main``)."""
    from tvm import relax

    func = mod["main"]
    order = [b.var for block in func.body.blocks for b in block.bindings]
    positions = [order.index(t) for t in taps]
    flat = relax.transform.ToNonDataflow()(mod)
    nfunc = flat["main"]
    bindings = [b.var for block in nfunc.body.blocks for b in block.bindings]
    body = nfunc.body
    ret = body.body
    outs = list(ret.fields) if isinstance(ret, relax.Tuple) else [ret]
    fields = outs + [bindings[p] for p in positions]
    new_body = relax.SeqExpr(body.blocks, relax.Tuple(fields))
    ret_ty = relax.TupleType([f.ty for f in fields])
    new_func = relax.Function(nfunc.params, new_body, ret_ty, nfunc.is_pure, nfunc.attrs)
    new = flat.clone()  # a pass may hand back its input unchanged: never mutate the caller's module
    new[new.get_global_var("main")] = new_func
    return relax.transform.ConvertToDataflow()(relax.transform.Normalize()(new))


def run_tapped(imported: ImportedModel, taps: Sequence, feeds: Sequence[Mapping[str, np.ndarray]],
               consume: Callable[[int, np.ndarray], None], progress: str = "") -> None:
    """Compile ``imported`` with ``taps`` as extra outputs and call ``consume(i, value)`` for tap
    ``i`` on every calibration sample."""
    from . import pipeline
    from .runtime import CompiledModel

    if not feeds:
        raise InputError("calibration needs at least one input sample")
    tapped = tap_module(imported.mod, taps)
    specs = [TensorSpec(f"__tap{i}", (), "float32") for i in range(len(taps))]
    model = dataclasses.replace(imported, mod=tapped, outputs=list(imported.outputs) + specs)
    ex, meta = pipeline.build(model, "cpu")
    compiled = CompiledModel(ex, meta, executable=ex)
    n_out = len(imported.outputs)
    samples = feeds
    if progress:
        from tqdm import tqdm

        samples = tqdm(feeds, desc=progress, unit="sample", leave=False, disable=len(feeds) < 4)
    for feed in samples:
        outs = compiled._invoke(compiled._args(feed))
        for i, value in enumerate(outs[n_out:]):
            consume(i, value.numpy())


def attention_maps(imported: ImportedModel, feeds: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """``{site name: mean softmax map [H, N, N] (float64)}`` over samples and batch."""
    from ..passes.attention import find_sites
    from ..passes.naming import module_weight_names

    sites = [s for s in find_sites(imported.mod["main"], module_weight_names(imported.mod)) if s.matched]
    if not sites:
        return {}
    sums = [None] * len(sites)
    count = [0] * len(sites)

    def consume(i, p):
        batch_mean = p.astype(np.float64).mean(axis=0)
        sums[i] = batch_mean if sums[i] is None else sums[i] + batch_mean
        count[i] += 1

    run_tapped(imported, [s.probs for s in sites], feeds, consume, progress="calibrating attention")
    return {s.name: sums[i] / count[i] for i, s in enumerate(sites)}


def layer_hessians(imported: ImportedModel, feeds: Sequence[Mapping[str, np.ndarray]],
                   layers: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """``{layer name: XᵀX / rows}`` of each shift-add candidate's input (``layers``: only these)."""
    from tvm import relax

    from ..passes.naming import module_weight_names
    from ..passes.shift_add import find_candidates

    func = imported.mod["main"]
    cands = find_candidates(func, module_weight_names(imported.mod))
    if layers is not None:
        cands = [c for c in cands if c.name in set(layers)]
    # Tap each candidate's input: the var bound to it (a constant or a param cannot be tapped).
    bound = {b.var for block in func.body.blocks for b in block.bindings}
    cands = [c for c in cands if isinstance(c.call.args[0], relax.Var) and c.call.args[0] in bound]
    if not cands:
        return {}
    taps, index = [], {}
    for c in cands:
        x = c.call.args[0]
        if x not in index:
            index[x] = len(taps)
            taps.append(x)
    by_tap: dict = {}
    for c in cands:
        by_tap.setdefault(index[c.call.args[0]], []).append(c)
    sums: dict = {}
    rows: dict = {}

    def consume(i, x):
        # Each candidate sees the tap through its own operand view (a conv's im2col patches).
        for c in by_tap[i]:
            x2 = c.input_matrix(x).astype(np.float64)
            h = x2.T @ x2
            sums[c.name] = h if c.name not in sums else sums[c.name] + h
            rows[c.name] = rows.get(c.name, 0) + x2.shape[0]

    run_tapped(imported, taps, feeds, consume, progress="calibrating layers")
    return {name: sums[name] / rows[name] for name in sums}


def load_calibration(path, specs: Sequence[TensorSpec]) -> list[dict[str, np.ndarray]]:
    """Calibration samples from an ``.npz``: per input either one sample (the input's shape) or
    a stack of samples (a leading sample axis)."""
    from ..fileio import read_npz

    data = read_npz(path, "calibration")
    missing = [s.name for s in specs if s.name not in data]
    if missing:
        raise InputError(f"{path}: calibration set lacks input(s) {', '.join(missing)}")
    counts = set()
    for s in specs:
        arr = data[s.name]
        if tuple(arr.shape) == tuple(s.shape):
            data[s.name] = arr[None]
        elif tuple(arr.shape[1:]) != tuple(s.shape):
            raise InputError(f"{path}: '{s.name}' has shape {list(arr.shape)}; expected {list(s.shape)} "
                             f"or [samples, {', '.join(map(str, s.shape))}]")
        counts.add(data[s.name].shape[0])
    if len(counts) != 1:
        raise InputError(f"{path}: inputs have different sample counts {sorted(counts)}")
    n = counts.pop()
    return [{s.name: np.ascontiguousarray(data[s.name][i]).astype(s.dtype, copy=False) for s in specs}
            for i in range(n)]


__all__ = ["attention_maps", "layer_hessians", "load_calibration", "run_tapped", "tap_module"]
