"""``accelc.int8``: constant-weight matmuls and convs → int8 × int8 → int32 GEMMs.

The reparameterization a MAC PE array needs (the simulated accelerator's ``mac`` PEs compute
int8 × int8 → int32), measured like the others. Same layers as the shift-add rewrite
(``R.matmul`` with a 2-D float32 constant weight, also transposed; NCHW/OIHW ``conv2d`` as
its im2col matmul; grouped convs stay dense).

Rewrite per layer: weights quantized symmetrically per output channel at compile time
(``wq = round(W / sw)``, ``sw[n] = max|W[:, n]| / 127``); activations quantized at run time
by the host, symmetrically per row (``act=row``: per token / output pixel) or per tensor
(``act=tensor``): ``sx = max|x| / 127``, ``xq = clip(round(x / sx), -127, 127)``; then
``call_tir(int8_matmul, xq, wq, sx, sw)`` = ``float(xq @ wq) · sx[i] · sw[j]``
(``schedules/int8.py``). The integer product is exact, so the CPU build and the ``-t sim``
build (which runs it on the MAC array) agree bit for bit.

``act=auto`` (the default) is per row for matmuls (per token, as LLM.int8 and SmoothQuant
do) and per tensor for convs (as onnxruntime's dynamic quantization and TensorRT do). A conv
quantized per tensor takes its scale over its input tensor ``x`` (the padding adds zeros)
and quantizes ``x`` *before* the im2col, so the patch matrix is built from int8 codes: a
quarter of the bytes of the float32 patches that a per-row scale needs, and one abs-max pass
over ``x`` instead of over the 9–49× larger patch matrix.

Knobs: the options dataclass. Validate: ``accelc report MODEL --passes int8``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import check_knobs, register, static_shape
from .shift_add import LayerRewrite, _patterns, _probe_cos, rewrite_layers

ACT = ("auto", "row", "tensor")


@dataclass(frozen=True)
class Int8Options:
    act: str = "auto"  # activation scale: per row (token / output pixel), per tensor, or auto:
    # per row for matmuls, per tensor for convs
    layers: tuple = ()  # allow patterns (fnmatch over ONNX node names); empty = every layer
    exclude: tuple = ()  # deny patterns
    keep_first: bool = False  # leave the first matched layer in float32
    keep_last: bool = False  # leave the last matched layer in float32

    def __post_init__(self):
        check_knobs(self, [("act", self.act in ACT, f"one of {', '.join(ACT)}")])
        object.__setattr__(self, "layers", _patterns(self.layers))
        object.__setattr__(self, "exclude", _patterns(self.exclude))

    def describe(self) -> str:
        if self.act == "auto":
            return "w8 per-channel, a8 per-row (matmuls) / per-tensor (convs)"
        return f"w8 per-channel, a8 per-{self.act}"


def quantize_weight(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-output-channel int8: ``(wq int8 [K, N], sw float32 [N])``; an all-zero
    channel gets scale 1 (its codes are 0)."""
    amax = np.abs(w).max(axis=0).astype(np.float32)
    sw = np.where(amax > 0, amax / np.float32(127), np.float32(1)).astype(np.float32)
    wq = np.clip(np.rint(w / sw), -127, 127).astype(np.int8)
    return wq, sw


def quantize_activation(x: np.ndarray, act: str = "row") -> tuple[np.ndarray, np.ndarray]:
    """NumPy reference of the host's run-time quantizer: ``(xq int8 [M, K], sx float32 [M])``."""
    x = np.asarray(x, np.float32)
    amax = np.abs(x).max(axis=1) if act == "row" else np.full(x.shape[0], np.abs(x).max(), np.float32)
    sx = (np.maximum(amax, np.float32(1e-30)) / np.float32(127)).astype(np.float32)
    return np.clip(np.rint(x / sx[:, None]), -127, 127).astype(np.int8), sx


def quantize_conv_input(x: np.ndarray, geometry) -> tuple[np.ndarray, np.ndarray]:
    """NumPy reference of a per-tensor conv layer's quantizer: the conv input ``x`` [N, C, H,
    W] quantized with the scale over all of ``x``, then im2col: ``(xq int8 [rows, K], sx
    float32 [rows])``."""
    x = np.asarray(x, np.float32)
    codes, sx = quantize_activation(x.reshape(1, -1), "tensor")
    patches = geometry.patches(codes.reshape(x.shape))
    return patches, np.full(patches.shape[0], sx[0], np.float32)


@register("int8", Int8Options)
def int8(options: Int8Options | None = None):
    """W8A8: constant-weight matmuls/convs → int8 GEMMs (per-channel weights, dynamic activations)."""
    from . import module_pass

    opts = options or Int8Options()

    @module_pass("accelc.int8")
    def transform(mod, _ctx):
        return run(mod, opts)

    return transform


def _emit_quantize_conv_input(bb, x, geometry):
    """Host side, a conv quantized per tensor: ``(patches int8 [rows, K], sx float32 [rows])``
    with the scale over the conv input ``x`` and the im2col built from its int8 codes."""
    from tvm import relax

    from .shift_add import _emit_patches

    op = relax.op
    codes, sx = _emit_codes(bb, x, op.max(op.abs(x)))
    patches = _emit_patches(bb, codes, geometry)
    if not geometry.pointwise:
        # keep the quantizer out of the im2col: fused in, FuseOps would recompute its division
        # for every patch element (9-49 per input element: int8 ResNet went 4.1 -> 4.8 ms)
        gv = bb.lookup_binding(patches).args[0]
        bb.update_func(gv, bb.get()[gv].with_attr("op_pattern", 8))
    rows = static_shape(patches)[0]
    return patches, bb.emit(op.broadcast_to(op.reshape(sx, (1,)), (rows,)))


def _emit_codes(bb, x, amax):
    """``(xq int8, sx)``: ``sx = max(amax, 1e-30) / 127``, ``xq = clip(round(x / sx), ±127)``."""
    from tvm import relax

    op = relax.op
    sx = bb.emit(op.divide(op.maximum(amax, relax.const(np.float32(1e-30))), relax.const(np.float32(127))))
    return bb.emit(op.astype(op.clip(op.round(op.divide(x, sx)), -127, 127), "int8")), sx


def _emit_quantize(bb, x2, act: str):
    """Host side: ``(xq int8 [M, K], sx float32 [M])`` of ``x2`` float32 ``[M, K]`` (Relax ops,
    so the CPU and sim builds compile the same code)."""
    from tvm import relax

    op = relax.op
    m = static_shape(x2)[0]
    amax = op.max(op.abs(x2), axis=[1] if act == "row" else None, keepdims=act == "row")
    xq, sx = _emit_codes(bb, x2, amax)
    sx_rows = op.reshape(sx, (m,)) if act == "row" else op.broadcast_to(op.reshape(sx, (1,)), (m,))
    return xq, bb.emit(sx_rows)


def run(mod, opts: Int8Options):
    """The pass body on an IRModule (see the module docstring)."""
    from tvm import relax

    from ..schedules.int8 import int8_matmul

    def rewrite(bb, cand):
        w = cand.weight
        k, n = w.shape
        wq, sw = quantize_weight(w)
        gv = bb.add_func(int8_matmul(cand.rows, k, n).without_attr("global_symbol"), "int8_matmul")
        deq = wq.astype(np.float32) * sw
        macs = cand.rows * k * n
        info = LayerRewrite(cand.name, k, n, cand.rows, "int8_matmul", w.nbytes, wq.nbytes + sw.nbytes,
                            float(np.linalg.norm(deq - w) / max(np.linalg.norm(w), 1e-30)), _probe_cos(w, deq),
                            {"mult": macs, "add": macs, "shift": 0, "lut": 0, "datapath": "int8"}, cand.op)

        def gemm(xq, sx):
            return bb.emit(relax.call_tir(gv, [xq, relax.const(wq), sx, relax.const(sw)],
                                          relax.TensorType((cand.rows, n), "float32")))

        def matmul(x2):
            return gemm(*_emit_quantize(bb, x2, "row" if opts.act == "auto" else opts.act))

        if cand.conv is not None and opts.act in ("auto", "tensor"):
            def conv(x):  # the conv's NCHW input: quantized first, then im2col of the codes
                return gemm(*_emit_quantize_conv_input(bb, x, cand.conv))

            conv.takes_conv_input = True
            return info, conv
        return info, matmul

    return rewrite_layers(mod, opts, "int8", rewrite)
