"""TVM's ONNX importer, extended: our own converters for ops it lacks, and errors tied to nodes.

``CONVERTERS`` maps an ONNX op type to a converter with TVM's converter interface
(``get_converter(opset)`` returning ``fn(bb, inputs, attrs, params) -> relax.Expr``). Ours take
precedence over TVM's, so a converter here can also replace a wrong upstream one.
"""

from __future__ import annotations

import math
import os

import numpy as np
import onnx
import tvm
from tvm import relax
from tvm.relax.frontend.onnx import onnx_frontend as upstream

from ..errors import ModelError

CONVERTERS: dict[str, type] = {}


def converter(op_type: str):
    """Register a converter class for ``op_type``."""

    def register(cls):
        CONVERTERS[op_type] = cls
        return cls

    return register


class _Importer(upstream.ONNXGraphImporter):
    """The upstream importer with our converters consulted first and node-named errors."""

    def _check_for_unsupported_ops(self, graph):  # done (for every node at once) beforehand
        return None

    def _convert_operator(self, op_name, inputs, attrs, opset):
        node = attrs.get("tvm_custom", {}).get("name", "?")
        try:
            if op_name in CONVERTERS:
                sym = CONVERTERS[op_name].get_converter(opset)(
                    self.bb, inputs, attrs, [self._nodes, self._params])
                return self.bb.normalize(sym) if isinstance(sym, relax.Expr) else sym
            return super()._convert_operator(op_name, inputs, attrs, opset)
        except ModelError:
            raise
        except Exception as err:  # noqa: BLE001 - any converter failure is a property of the node
            if os.environ.get("ACCELC_DEBUG"):
                raise
            msg = " ".join(str(err).split()) or type(err).__name__
            if len(msg) > 300:
                msg = msg[:300] + "…"
            raise ModelError(f"cannot import node '{node}' ({op_name}, opset {opset}): {msg}") from None


def import_graph(model: onnx.ModelProto, shape_dict: dict, dtype_dict: dict, label: str):
    """Run the (extended) importer on a prepared model; returns the Relax IRModule."""
    from .frontend import _quiet, default_opset

    importer = _Importer(shape_dict, dtype_dict, keep_params_in_input=False, sanitize=True)
    try:
        with _quiet():
            return importer.from_onnx(model.graph, default_opset(model))
    except ModelError as err:
        raise ModelError(f"{label}: {err}") from None
    except Exception as err:  # noqa: BLE001 - graph-level importer failures
        msg = " ".join(str(err).split())[:300] or type(err).__name__
        raise ModelError(f"{label}: TVM's ONNX importer failed: {msg}") from None
    finally:
        importer.bb = None  # drop the builder now: avoids "BlockBuilder destroyed" noise later


# -- converters for operators TVM 0.27's importer lacks ----------------------------------------
def _attr(attrs: dict, name: str, default):
    value = attrs.get(name, default)
    return value.decode() if isinstance(value, bytes) else value


@converter("LpNormalization")
class LpNormalization(upstream.OnnxOpConverter):
    """``x / ‖x‖_p`` along ``axis`` (p ∈ {1, 2}); zero vectors stay zero, as in onnxruntime."""

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        x = inputs[0]
        axis, p = int(_attr(attr, "axis", -1)), int(_attr(attr, "p", 2))
        if p == 1:
            norm = relax.op.sum(relax.op.abs(x), axis=[axis], keepdims=True)
        elif p == 2:
            norm = relax.op.sqrt(relax.op.sum(relax.op.multiply(x, x), axis=[axis], keepdims=True))
        else:
            raise ValueError(f"p must be 1 or 2, got {p}")
        zero = relax.const(0, str(x.ty.dtype))
        safe = relax.op.where(relax.op.equal(norm, zero), relax.const(1, str(x.ty.dtype)), norm)
        return relax.op.divide(x, safe)


@converter("Attention")
class Attention(upstream.OnnxOpConverter):
    """The standard ``Attention`` op (opsets 23/24), following the ONNX reference implementation.

    Upstream symptom: TVM maps ``Attention`` to the com.microsoft contrib op and fails with
    ``KeyError: 'num_heads'`` on every standard one. Supported: 3-D and 4-D Q/K/V, grouped K/V
    heads, bool or additive masks (padded to the K/V length), ``is_causal`` (aligned after a
    past cache), ``scale``, ``softcap``, past key/value caches with present outputs,
    ``nonpad_kv_seqlen``, and the ``qk_matmul_output`` output in every mode. Fully masked
    rows give zeros, as the spec requires.
    """

    @classmethod
    def _impl_v23(cls, bb, inputs, attr, params):
        ins = list(inputs) + [None] * 7
        q, k, v, mask, past_k, past_v, nonpad = ins[:7]
        n_out = int(attr["tvm_custom"]["num_outputs"])
        dtype = str(q.ty.dtype)
        three_d = len(q.ty.shape) == 3
        if three_d:
            qh, kvh = int(_attr(attr, "q_num_heads", 0)), int(_attr(attr, "kv_num_heads", 0))
            if not qh or not kvh:
                raise ValueError("3-D inputs need q_num_heads and kv_num_heads")
            q, k, v = (bb.normalize(_split_heads(t, h)) for t, h in ((q, qh), (k, kvh), (v, kvh)))
        if past_k is not None:
            k = bb.normalize(relax.op.concat([past_k, k], axis=2))
            v = bb.normalize(relax.op.concat([past_v, v], axis=2))
        present_k, present_v = k, v
        _, hq, sq, d = _shape(q)
        hkv, skv = _shape(k)[1], _shape(k)[2]
        scale = _attr(attr, "scale", None)
        scale = 1.0 / math.sqrt(d) if scale is None else float(scale)

        # The additive bias: 0 where attended, -inf where masked (bool masks, causal, padding).
        ninf = relax.const(float("-inf"), dtype)
        zero = relax.const(0.0, dtype)
        bias = None
        if mask is not None:
            m = mask
            pad = skv - int(m.ty.shape[-1])
            if pad > 0:
                fill = relax.const(False) if str(m.ty.dtype) == "bool" else ninf
                m = bb.normalize(relax.op.concat([m, relax.op.broadcast_to(fill, [*_shape(m)[:-1], pad])], axis=-1))
            bias = relax.op.where(m, zero, ninf) if str(m.ty.dtype) == "bool" else relax.op.astype(m, dtype)
        # Causal and sliding-window masks compare key j with the query's absolute position
        # i + offset: offset is the past length, or per batch nonpad_kv_seqlen[b] - sq.
        seqlen = bb.normalize(relax.op.astype(nonpad, "int64")) if nonpad is not None else None
        if past_k is not None or seqlen is None:
            offset = _shape(past_k)[2] if past_k is not None else 0
            diff = relax.const((np.arange(sq)[:, None] + offset) - np.arange(skv)[None, :], "int64")
        else:
            offs = relax.op.reshape(bb.normalize(relax.op.subtract(seqlen, relax.const(sq, "int64"))), (-1, 1, 1, 1))
            # relax.const narrows int64 arrays to int32 unless told the dtype
            diff = relax.op.add(relax.const(np.arange(sq)[:, None] - np.arange(skv)[None, :], "int64"), offs)
        diff = bb.normalize(diff)
        left, right = int(_attr(attr, "left_window_size", -1)), int(_attr(attr, "right_window_size", -1))
        rules = ([("causal", 0)] if int(_attr(attr, "is_causal", 0)) else []) + \
                ([("left", left)] if left >= 0 else []) + ([("right", right)] if right >= 0 else [])
        for kind, bound in rules:  # causal: j <= pos; left: pos - j <= L; right: j - pos <= R
            if kind == "right":
                ok = relax.op.less_equal(relax.op.negative(diff), relax.const(bound, "int64"))
            elif kind == "left":
                ok = relax.op.less_equal(diff, relax.const(bound, "int64"))
            else:
                ok = relax.op.greater_equal(diff, relax.const(0, "int64"))
            term = relax.op.where(ok, zero, ninf)
            bias = term if bias is None else relax.op.add(bias, term)
        if seqlen is not None:
            keep = relax.op.less(relax.const(np.arange(skv), "int64"), relax.op.reshape(seqlen, (-1, 1)))
            padding = relax.op.reshape(bb.normalize(relax.op.where(keep, zero, ninf)), (_shape(q)[0], 1, 1, skv))
            bias = padding if bias is None else relax.op.add(bias, padding)

        if hq != hkv:  # grouped-query attention: repeat K/V heads
            k = relax.op.repeat(k, hq // hkv, axis=1)
            v = relax.op.repeat(v, hq // hkv, axis=1)
        root = relax.const(math.sqrt(scale), dtype)  # the reference scales Q and K by √scale each
        qk = relax.op.matmul(relax.op.multiply(q, root),
                             relax.op.permute_dims(relax.op.multiply(k, root), [0, 1, 3, 2]))
        softcap = float(_attr(attr, "softcap", 0.0) or 0.0)
        if softcap > 0:
            c = relax.const(softcap, dtype)
            qk = relax.op.multiply(relax.op.tanh(relax.op.divide(qk, c)), c)
        qk = bb.normalize(qk)
        with_bias = qk if bias is None else bb.normalize(relax.op.add(qk, bias))
        probs = relax.op.nn.softmax(with_bias, axis=-1)
        if bias is not None:  # rows with no attendable key: zeros, not NaN
            # (not max(bias) == -inf: TVM's max reduction starts from finfo.min, not -inf)
            is_ninf = relax.op.astype(relax.op.equal(bias, ninf), "int32")
            masked_row = relax.op.equal(relax.op.min(is_ninf, axis=-1, keepdims=True), relax.const(1, "int32"))
            probs = relax.op.where(masked_row, zero, probs)
        probs = bb.normalize(probs)
        y = relax.op.matmul(probs, v)
        if three_d:
            y = relax.op.reshape(bb.normalize(relax.op.permute_dims(y, [0, 2, 1, 3])), (_shape(q)[0], sq, -1))
        if n_out == 1:
            return y
        mode = int(_attr(attr, "qk_matmul_output_mode", 0))
        qk_out = {0: qk, 1: qk, 2: with_bias, 3: probs}.get(mode, qk)
        outs = [y, present_k, present_v, qk_out][:n_out]
        return relax.Tuple([bb.normalize(o) for o in outs])


def _shape(t) -> list[int]:
    return [int(d) for d in t.ty.shape]


def _split_heads(t, heads: int):
    bsz, seq, width = _shape(t)
    return relax.op.permute_dims(relax.op.reshape(t, (bsz, seq, heads, width // heads)), [0, 2, 1, 3])


@converter("LayerNormalization")
class LayerNormalization(upstream.OnnxOpConverter):
    """LayerNormalization with its optional ``Mean`` and ``InvStdDev`` outputs.

    Upstream symptom: TVM's converter returns 0-d placeholders for outputs 2 and 3, so any model
    that reads them gets wrong shapes. One output keeps the fused ``layer_norm`` op.
    """

    @classmethod
    def _impl_v17(cls, bb, inputs, attr, params):
        x, scale, bias = inputs[0], inputs[1], inputs[2]
        rank = len(x.ty.shape)
        axis = int(_attr(attr, "axis", -1))
        axis = axis + rank if axis < 0 else axis
        eps = float(_attr(attr, "epsilon", 1e-5))
        axes = list(range(axis, rank))
        n_out = int(attr["tvm_custom"]["num_outputs"])
        if n_out == 1 and len(scale.ty.shape) == len(axes):
            b = bias if bias is not None else relax.const(np.zeros(_shape(scale), str(x.ty.dtype)))
            return relax.op.nn.layer_norm(x, scale, b, axes, eps)
        stash = "float32" if str(x.ty.dtype) in ("float16", "bfloat16") else str(x.ty.dtype)
        xs = relax.op.astype(x, stash)
        mean = bb.normalize(relax.op.mean(xs, axis=axes, keepdims=True))
        centered = bb.normalize(relax.op.subtract(xs, mean))
        var = relax.op.mean(relax.op.multiply(centered, centered), axis=axes, keepdims=True)
        inv = bb.normalize(relax.op.rsqrt(relax.op.add(var, relax.const(eps, stash))))
        y = relax.op.multiply(relax.op.astype(relax.op.multiply(centered, inv), str(x.ty.dtype)), scale)
        if bias is not None:
            y = relax.op.add(y, bias)
        return relax.Tuple([bb.normalize(y), mean, inv][:n_out])


@converter("Pow")
class Pow(upstream.OnnxOpConverter):
    """Pow with mixed operand types (ONNX allows ``T`` ≠ ``T1``; the result has the base's type).

    Upstream symptom: "Binary operators must have the same datatype for both operands" on
    float^int, and int^int fails to lower. Integer results are computed in float64 and cast.
    """

    @classmethod
    def _impl_v7(cls, bb, inputs, attr, params):
        x, y = inputs[0], inputs[1]
        xt, yt = str(x.ty.dtype), str(y.ty.dtype)
        if xt == yt and xt.startswith("float"):
            return relax.op.power(x, y)
        work = xt if xt.startswith("float") else "float64"
        out = relax.op.power(relax.op.astype(x, work), relax.op.astype(y, work))
        return out if work == xt else relax.op.astype(out, xt)


def _nll(bb, logp, target, weight, reduction: str, ignore_index):
    """ONNX NegativeLogLikelihoodLoss on log-probabilities ``logp`` [N, C, d...]."""
    dtype = str(logp.ty.dtype)
    tgt = relax.op.astype(target, "int64")
    valid = None
    if ignore_index is not None:
        valid = relax.op.not_equal(tgt, relax.const(int(ignore_index), "int64"))
        tgt = relax.op.where(valid, tgt, relax.const(0, "int64"))
    tgt = bb.normalize(tgt)
    picked = relax.op.squeeze(relax.op.gather_elements(logp, relax.op.expand_dims(tgt, 1), axis=1), [1])
    loss = relax.op.negative(picked)
    w = None
    if weight is not None:
        w = relax.op.take(weight, tgt, axis=0)
    if valid is not None:
        vf = relax.op.astype(valid, dtype)
        w = vf if w is None else relax.op.multiply(w, vf)
    if w is not None:
        w = bb.normalize(w)
        loss = relax.op.multiply(loss, w)
    loss = bb.normalize(loss)
    if reduction == "none":
        return loss
    if reduction == "sum":
        return relax.op.sum(loss)
    if w is not None:
        return relax.op.divide(relax.op.sum(loss), relax.op.sum(w))
    return relax.op.mean(loss)


@converter("NegativeLogLikelihoodLoss")
class NegativeLogLikelihoodLoss(upstream.OnnxOpConverter):
    """``-input[n, target[n, d], d]·weight[target]``, with ``ignore_index`` and mean/sum/none."""

    @classmethod
    def _impl_v12(cls, bb, inputs, attr, params):
        weight = inputs[2] if len(inputs) > 2 else None
        return _nll(bb, inputs[0], inputs[1], weight, _attr(attr, "reduction", "mean"),
                    _attr(attr, "ignore_index", None))


@converter("SoftmaxCrossEntropyLoss")
class SoftmaxCrossEntropyLoss(upstream.OnnxOpConverter):
    """NLL of ``log_softmax(scores, axis=1)``; the optional second output is that log-softmax."""

    @classmethod
    def _impl_v12(cls, bb, inputs, attr, params):
        scores = inputs[0]
        logp = bb.normalize(relax.op.nn.log_softmax(scores, axis=1))
        weight = inputs[2] if len(inputs) > 2 else None
        loss = bb.normalize(_nll(bb, logp, inputs[1], weight, _attr(attr, "reduction", "mean"),
                                 _attr(attr, "ignore_index", None)))
        if int(attr["tvm_custom"]["num_outputs"]) > 1:
            return relax.Tuple([loss, logp])
        return loss


@converter("RotaryEmbedding")
class RotaryEmbedding(upstream.OnnxOpConverter):
    """Rotary position embedding (opset 23), interleaved or half-split, partial rotary dims."""

    @classmethod
    def _impl_v23(cls, bb, inputs, attr, params):
        x, cos, sin = inputs[0], inputs[1], inputs[2]
        pos = inputs[3] if len(inputs) > 3 else None
        interleaved = int(_attr(attr, "interleaved", 0))
        heads = int(_attr(attr, "num_heads", 0))
        shape = _shape(x)
        if len(shape) == 4:  # [B, H, S, D] → [B, S, H, D]
            xs = relax.op.permute_dims(x, [0, 2, 1, 3])
        else:
            if not heads:
                raise ValueError("3-D input needs num_heads")
            xs = relax.op.reshape(x, (shape[0], shape[1], heads, shape[2] // heads))
        xs = bb.normalize(xs)
        b, s, h, d = _shape(xs)
        rd = int(_attr(attr, "rotary_embedding_dim", 0)) or d
        half = rd // 2
        if pos is not None:
            cos = relax.op.take(cos, pos, axis=0)
            sin = relax.op.take(sin, pos, axis=0)
        cos = relax.op.expand_dims(cos, 2)
        sin = relax.op.expand_dims(sin, 2)
        rot = relax.op.strided_slice(xs, axes=[3], begin=[0], end=[rd])
        if interleaved:
            x1 = relax.op.strided_slice(rot, axes=[3], begin=[0], end=[rd], strides=[2])
            x2 = relax.op.strided_slice(rot, axes=[3], begin=[1], end=[rd], strides=[2])
        else:
            x1 = relax.op.strided_slice(rot, axes=[3], begin=[0], end=[half])
            x2 = relax.op.strided_slice(rot, axes=[3], begin=[half], end=[rd])
        real = relax.op.subtract(relax.op.multiply(cos, x1), relax.op.multiply(sin, x2))
        imag = relax.op.add(relax.op.multiply(sin, x1), relax.op.multiply(cos, x2))
        if interleaved:
            rotated = relax.op.reshape(relax.op.stack([real, imag], axis=4), (b, s, h, rd))
        else:
            rotated = relax.op.concat([real, imag], axis=3)
        if rd < d:
            rotated = relax.op.concat([rotated, relax.op.strided_slice(xs, axes=[3], begin=[rd], end=[d])], axis=3)
        if len(shape) == 4:
            return relax.op.permute_dims(rotated, [0, 2, 1, 3])
        return relax.op.reshape(rotated, shape)


@converter("QLinearMatMul")
class QLinearMatMul(upstream.OnnxOpConverter):
    """``clip(rint((A−a0)·(B−b0) · a_s·b_s/y_s) + y0)``: int32 matmul, scale in float64."""

    @classmethod
    def _impl_v10(cls, bb, inputs, attr, params):
        a, a_s, a_zp, b, b_s, b_zp, y_s, y_zp = (list(inputs) + [None] * 8)[:8]

        def centered(t, zp):
            t = relax.op.astype(t, "int32")
            return t if zp is None else relax.op.subtract(t, relax.op.astype(zp, "int32"))

        acc = relax.op.matmul(centered(a, a_zp), centered(b, b_zp), out_dtype="int32")
        f64 = lambda t: relax.op.astype(t, "float64")  # noqa: E731
        scale = relax.op.divide(relax.op.multiply(f64(a_s), f64(b_s)), f64(y_s))
        y = relax.op.multiply(f64(acc), scale)
        out_dtype = str(y_zp.ty.dtype) if y_zp is not None else str(a.ty.dtype)
        if y_zp is not None:
            y = relax.op.add(y, f64(y_zp))
        info = np.iinfo(out_dtype)
        y = relax.op.clip(relax.op.round(y), float(info.min), float(info.max))
        return relax.op.astype(y, out_dtype)


@converter("BitCast")
class BitCast(upstream.OnnxOpConverter):
    """Reinterpret the bits of each element as another type of the same width."""

    @classmethod
    def _impl_v26(cls, bb, inputs, attr, params):
        from tvm import te, tirx

        from .frontend import _ONNX_DTYPES

        x = inputs[0]
        to = _ONNX_DTYPES.get(int(attr["to"]))
        if to is None:
            raise ValueError(f"unsupported target type {attr['to']}")
        if tvm.DataType(to).bits != tvm.DataType(str(x.ty.dtype)).bits:
            raise ValueError(f"BitCast needs equal widths, got {str(x.ty.dtype)} → {to}")
        if to == "bool" or str(x.ty.dtype) == "bool":
            raise ValueError("BitCast of bool is not supported")
        return bb.emit_te(lambda t: te.compute(t.shape, lambda *i: tirx.reinterpret(to, t(*i)), name="bitcast"), x)


class _RuntimeAxisScan(upstream.OnnxOpConverter):
    """CumSum/CumProd whose ``axis`` is a runtime tensor: the output shape does not depend on it,
    so every axis is computed and the right one selected (rank × the work, still static).

    Upstream symptom: "CumSum with non-constant axis input is not supported yet".
    """

    op = staticmethod(relax.op.cumsum)

    @classmethod
    def _scan(cls, bb, x, axis: int, exclusive: bool, reverse: bool):
        if reverse:
            x = relax.op.flip(x, axis=axis)
        y = cls.op(x, axis=axis, exclusive=exclusive)
        return relax.op.flip(y, axis=axis) if reverse else y

    @classmethod
    def _impl(cls, bb, inputs, attr, params):
        x, axis = inputs[0], inputs[1]
        exclusive, reverse = bool(_attr(attr, "exclusive", 0)), bool(_attr(attr, "reverse", 0))
        rank = len(x.ty.shape)
        if isinstance(axis, tvm.ir.GenericConst):
            ax = int(np.asarray(axis.value.numpy()).reshape(-1)[0])
            return cls._scan(bb, x, ax + rank if ax < 0 else ax, exclusive, reverse)
        ax = relax.op.reshape(relax.op.astype(axis, "int64"), ())
        ax = bb.normalize(relax.op.where(relax.op.less(ax, relax.const(0, "int64")),
                                         relax.op.add(ax, relax.const(rank, "int64")), ax))
        out = cls._scan(bb, x, rank - 1, exclusive, reverse)
        for i in range(rank - 1):
            out = relax.op.where(relax.op.equal(ax, relax.const(i, "int64")),
                                 cls._scan(bb, x, i, exclusive, reverse), out)
        return out


@converter("CumSum")
class CumSum(_RuntimeAxisScan):
    op = staticmethod(relax.op.cumsum)

    @classmethod
    def _impl_v11(cls, bb, inputs, attr, params):
        return cls._impl(bb, inputs, attr, params)


@converter("CumProd")
class CumProd(_RuntimeAxisScan):
    """Cumulative product (opset 26), same semantics as CumSum."""

    op = staticmethod(relax.op.cumprod)

    @classmethod
    def _impl_v26(cls, bb, inputs, attr, params):
        return cls._impl(bb, inputs, attr, params)


@converter("IsInf")
class IsInf(upstream.OnnxOpConverter):
    """IsInf honouring ``detect_positive``/``detect_negative``.

    Upstream symptom: both attributes are ignored, so ``detect_negative=0`` still reports -inf.
    """

    @classmethod
    def _impl_v10(cls, bb, inputs, attr, params):
        x = inputs[0]
        pos, neg = int(_attr(attr, "detect_positive", 1)), int(_attr(attr, "detect_negative", 1))
        dtype = str(x.ty.dtype)
        if pos and neg:
            return relax.op.isinf(x)
        if not pos and not neg:
            return relax.op.zeros(_shape(x), "bool")
        return relax.op.equal(x, relax.const(float("inf") if pos else float("-inf"), dtype))


@converter("Gather")
class Gather(upstream.OnnxOpConverter):
    """Gather with negative-index normalisation done at import time when shapes are static.

    Upstream computes the axis extent at run time (``shape_to_tensor(shape_of(x))`` → take →
    less/add/where) even for static shapes and constant indices; every such chain is left for
    FoldConstant, which JIT-compiles and runs each one (7 of DeiT-tiny's 11 s of compile time).
    Here constant indices are normalised with NumPy, runtime indices against a constant extent.
    """

    @classmethod
    def _impl_v13(cls, bb, inputs, attr, params):
        data, indices = inputs[0], inputs[1]
        axis = int(_attr(attr, "axis", 0))
        static = (isinstance(data, relax.Expr) and isinstance(data.ty, relax.TensorType)
                  and data.ty.shape is not None and all(isinstance(d, tvm.tirx.IntImm) for d in data.ty.shape.values))
        if not static or isinstance(indices, relax.ShapeExpr):
            return upstream.Gather.get_converter(13)(bb, inputs, attr, params)
        extent = int(data.ty.shape.values[axis])
        if isinstance(indices, tvm.ir.GenericConst):
            idx = indices.value.numpy()
            if isinstance(data, tvm.ir.GenericConst):
                out = np.take(data.value.numpy(), idx, axis=axis)
                return relax.const(out, str(out.dtype))
            idx = np.where(idx < 0, idx + extent, idx)
            return relax.op.take(data, relax.const(idx, str(idx.dtype)), axis)
        dtype = str(indices.ty.dtype)
        fixed = relax.op.where(relax.op.less(indices, relax.const(0, dtype)),
                               relax.op.add(indices, relax.const(extent, dtype)), indices)
        return relax.op.take(data, bb.normalize(fixed), axis)
