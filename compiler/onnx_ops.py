"""TVM's ONNX importer, extended: our own converters for ops it lacks, and errors tied to nodes.

``CONVERTERS`` maps an ONNX op type to a converter with TVM's converter interface
(``get_converter(opset)`` returning ``fn(bb, inputs, attrs, params) -> relax.Expr``). Ours take
precedence over TVM's, so a converter here can also replace a wrong upstream one.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
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
        zero = relax.const(0, x.ty.dtype)
        safe = relax.op.where(relax.op.equal(norm, zero), relax.const(1, x.ty.dtype), norm)
        return relax.op.divide(x, safe)


@converter("CumProd")
class CumProd(upstream.OnnxOpConverter):
    """Cumulative product (``exclusive``/``reverse`` supported), as TVM's cumprod op."""

    @classmethod
    def _impl_v26(cls, bb, inputs, attr, params):
        x, axis = inputs[0], inputs[1]
        if not isinstance(axis, relax.Constant):
            raise ValueError("the axis input must be a constant")
        ax = int(np.asarray(axis.data.numpy()).reshape(-1)[0])
        exclusive = bool(_attr(attr, "exclusive", 0))
        reverse = bool(_attr(attr, "reverse", 0))
        if reverse:
            x = relax.op.flip(x, axis=ax)
        y = relax.op.cumprod(x, axis=ax, exclusive=exclusive)
        return relax.op.flip(y, axis=ax) if reverse else y


@converter("Attention")
class Attention(upstream.OnnxOpConverter):
    """The standard ``Attention`` op (opset 23): scaled dot-product attention.

    Upstream symptom: TVM maps ``Attention`` to the com.microsoft contrib op and fails with
    ``KeyError: 'num_heads'`` on every standard one. Inputs Q, K, V are 4-D ``[B, H, S, D]`` or
    3-D ``[B, S, H·D]`` (with ``q_num_heads``/``kv_num_heads``); supports ``attn_mask`` (bool
    or additive), ``is_causal``, ``scale``, ``softcap`` and grouped K/V heads. Past K/V caches
    and the auxiliary outputs are rejected.
    """

    @classmethod
    def _impl_v23(cls, bb, inputs, attr, params):
        if any(i is not None for i in list(inputs)[4:]):
            raise ValueError("past key/value inputs are not supported")
        q, k, v, mask = inputs[0], inputs[1], inputs[2], inputs[3]
        if attr["tvm_custom"]["num_outputs"] > 1:
            raise ValueError("only the first output (Y) is supported")
        three_d = len(q.ty.shape) == 3
        if three_d:
            qh, kvh = int(_attr(attr, "q_num_heads", 0)), int(_attr(attr, "kv_num_heads", 0))
            if not qh or not kvh:
                raise ValueError("3-D inputs need q_num_heads and kv_num_heads")
            q, k, v = (cls._heads(bb, t, h) for t, h in ((q, qh), (k, kvh), (v, kvh)))
        dtype = q.ty.dtype
        b, hq, sq, d = (int(x) for x in q.ty.shape)
        hkv, skv = int(k.ty.shape[1]), int(k.ty.shape[2])
        if hq != hkv:  # grouped-query attention: repeat K/V heads
            rep = hq // hkv
            k = relax.op.repeat(k, rep, axis=1)
            v = relax.op.repeat(v, rep, axis=1)
        scale = _attr(attr, "scale", None)
        scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
        s = relax.op.matmul(q, relax.op.permute_dims(k, [0, 1, 3, 2]))
        s = relax.op.multiply(s, relax.const(scale, dtype))
        softcap = float(_attr(attr, "softcap", 0.0) or 0.0)
        if softcap > 0:
            c = relax.const(softcap, dtype)
            s = relax.op.multiply(relax.op.tanh(relax.op.divide(s, c)), c)
        neg = relax.const(float(np.finfo(np.float32).min), dtype)
        if int(_attr(attr, "is_causal", 0)):
            tri = np.tril(np.ones((sq, skv), bool), k=skv - sq)
            s = relax.op.where(relax.const(tri), s, neg)
        if mask is not None:
            if mask.ty.dtype == "bool":
                s = relax.op.where(mask, s, neg)
            else:
                s = relax.op.add(s, mask)
        y = relax.op.matmul(relax.op.nn.softmax(s, axis=-1), v)
        if three_d:
            y = relax.op.reshape(relax.op.permute_dims(y, [0, 2, 1, 3]), (b, sq, hq * int(v.ty.shape[3])))
        return y

    @staticmethod
    def _heads(bb, t, heads: int):
        bsz, seq, width = (int(x) for x in t.ty.shape)
        return relax.op.permute_dims(relax.op.reshape(t, (bsz, seq, heads, width // heads)), [0, 2, 1, 3])

