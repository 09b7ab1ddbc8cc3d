"""Target-independent Relax graph optimisations that the CPU and CUDA pipelines share.

``fold_batch_norm``: an inference BatchNorm after a conv with constant weights becomes a
per-channel scale folded into the weights plus one bias add, as onnxruntime does at load time.
Unfolded, TVM decomposes the BatchNorm into subtract / divide / multiply / add in the conv's
epilogue: a vector division per output register on CPU (28 ``vdivps`` per 14×32 tile of a
ResNet conv, about a tenth of its time).

TVM 0.27 ships ``relax.transform.FoldBatchnormToConv2D``, but it misses the common ONNX case
of a conv *with* a bias (``Conv(x, W, B)`` imports as ``conv2d`` + ``add``: the BatchNorm then
follows the add), and it builds the folded constants in float32 with the epsilon typed
float32 whatever the model's dtype. This pass handles both, computes the fold in float64 and
casts once, and checks that the BatchNorm's axis is the conv's output-channel axis.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax.dpl import TupleGetItemPattern, is_const, is_op, rewrite_call, wildcard

from ..passes import static_shape


def _np(const: relax.Constant) -> np.ndarray:
    return const.value.numpy()


def _fold_one(matches, pats, expr):
    conv_call = matches[pats["conv"]]
    bn_call = matches[pats["bn"]]
    conv_attrs, bn_attrs = conv_call.attrs, bn_call.attrs
    weight = _np(matches[pats["weight"]])
    dtype = weight.dtype
    out_layout = str(conv_attrs.out_layout or conv_attrs.data_layout)
    kernel_layout = str(conv_attrs.kernel_layout)
    if (bool(bn_attrs.training) or dtype.kind != "f" or len(out_layout) != 4
            or "C" not in out_layout or "O" not in kernel_layout):
        return expr
    c_axis = out_layout.index("C")
    if int(bn_attrs.axis) % 4 != c_axis:
        return expr
    channels = weight.shape[kernel_layout.index("O")]
    gamma, beta, mean, var = (_np(matches[pats[k]]).astype(np.float64)
                              for k in ("gamma", "beta", "mean", "var"))
    if any(a.shape != (channels,) for a in (gamma, beta, mean, var)):
        return expr
    if not bool(bn_attrs.scale):
        gamma = np.ones_like(gamma)
    if not bool(bn_attrs.center):
        beta = np.zeros_like(beta)
    bias = np.zeros(channels)
    if pats["bias"] in matches:  # conv + add(bias) + batch_norm (ONNX: a reshaped constant)
        want = [1] * 4
        want[c_axis] = channels
        shape = static_shape(matches[pats["bias"]])
        b = _np(matches[pats["bias_value"]])
        if shape is None or b.size != channels or (shape != want and shape != [channels]):
            return expr
        if shape == [channels] and c_axis != 3:  # a 1-D bias broadcasts along the last axis
            return expr
        bias = b.reshape(channels).astype(np.float64)
    scale = gamma / np.sqrt(var + float(bn_attrs.epsilon))
    shape = [1] * weight.ndim
    shape[kernel_layout.index("O")] = channels
    new_weight = (weight.astype(np.float64) * scale.reshape(shape)).astype(dtype)
    new_bias = ((bias - mean) * scale + beta).astype(dtype)
    bias_shape = [1] * 4
    bias_shape[c_axis] = channels
    conv = relax.Call(conv_call.op, [matches[pats["data"]], relax.const(new_weight)],
                      conv_attrs)
    return relax.op.add(conv, relax.const(new_bias.reshape(bias_shape)))


def _patterns() -> dict:
    p = {k: is_const() for k in ("weight", "bias_value", "gamma", "beta", "mean", "var")}
    p["bias"] = p["bias_value"] | is_op("relax.reshape")(p["bias_value"], wildcard())
    p["data"] = wildcard()
    p["conv"] = is_op("relax.nn.conv2d")(p["data"], p["weight"])
    pre = p["conv"] | is_op("relax.add")(p["conv"], p["bias"])
    p["bn"] = is_op("relax.nn.batch_norm")(pre, p["gamma"], p["beta"], p["mean"], p["var"])
    p["root"] = TupleGetItemPattern(p["bn"], 0)
    return p


def has_op(mod: tvm.IRModule, op_name: str) -> bool:
    """Whether any Relax function of ``mod`` calls the operator ``op_name``."""
    op = tvm.ir.Op.get(op_name)
    found = []
    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(
                func, lambda e: found.append(1) if isinstance(e, relax.Call) and e.op.same_as(op) else None)
    return bool(found)


@tvm.transform.module_pass(opt_level=0, name="accelc.FoldBatchNorm")
def fold_batch_norm(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """Fold inference ``batch_norm`` (after ``conv2d`` [+ constant bias]) into the conv."""
    if not has_op(mod, "relax.nn.batch_norm"):
        return mod
    pats = _patterns()
    updates = {}
    for gv, func in mod.functions_items():
        if not isinstance(func, relax.Function) or (func.attrs and "Primitive" in func.attrs):
            continue
        new = rewrite_call(pats["root"], lambda expr, m: _fold_one(m, pats, expr), func)
        if not new.same_as(func):
            updates[gv] = relax.analysis.remove_all_unused(new)
    if not updates:
        return mod
    funcs = {gv: updates.get(gv, f) for gv, f in mod.functions_items()}
    return tvm.IRModule(funcs, attrs=mod.attrs, global_infos=mod.global_infos)
