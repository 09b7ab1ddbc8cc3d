"""A small ResNet-style CNN (ResNet-10 layout at half width), as torchvision exports it.

Conv + BatchNormalization (left unfolded, as an export with ``do_constant_folding=False``
keeps it), ReLU, MaxPool, basic residual blocks with 1×1 projection shortcuts,
GlobalAveragePool, Flatten and a Gemm classifier.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .graph import GraphBuilder


@dataclass(frozen=True)
class ResNetConfig:
    image: int = 224
    widths: tuple[int, ...] = (32, 64, 128, 256)
    classes: int = 1000
    batch: int = 1


def _conv_bn(gb: GraphBuilder, x: str, cin: int, cout: int, k: int, stride: int, scope: str,
             conv: str, bn: str, relu: bool) -> str:
    w = gb.randn((cout, cin, k, k), np.sqrt(2.0 / (cin * k * k)))
    y = gb.op("Conv", x, gb.param(f"{conv}.weight", w), name=f"{scope}/Conv",
              kernel_shape=[k, k], strides=[stride, stride], pads=[k // 2] * 4)
    y = gb.op("BatchNormalization", y,
              gb.param(f"{bn}.weight", (1.0 + gb.randn((cout,), 0.1)).astype("float32")),
              gb.param(f"{bn}.bias", gb.randn((cout,), 0.1)),
              gb.param(f"{bn}.running_mean", gb.randn((cout,), 0.1)),
              gb.param(f"{bn}.running_var", (1.0 + np.abs(gb.randn((cout,), 0.2))).astype("float32")),
              name=f"{scope}/BatchNormalization", epsilon=1e-5)
    return gb.op("Relu", y, name=f"{scope}/Relu") if relu else y


def build_resnet(cfg: ResNetConfig = ResNetConfig(), seed: int = 0):
    gb = GraphBuilder("resnet_small", seed)
    px = gb.input("pixel_values", "float32", [cfg.batch, 3, cfg.image, cfg.image])
    x = _conv_bn(gb, px, 3, cfg.widths[0], 7, 2, "/conv1", "conv1", "bn1", relu=True)
    x = gb.op("MaxPool", x, name="/maxpool/MaxPool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    cin = cfg.widths[0]
    for li, cout in enumerate(cfg.widths, start=1):
        stride = 1 if li == 1 else 2
        s, p = f"/layer{li}/layer{li}.0", f"layer{li}.0"
        y = _conv_bn(gb, x, cin, cout, 3, stride, f"{s}/conv1", f"{p}.conv1", f"{p}.bn1", relu=True)
        y = _conv_bn(gb, y, cout, cout, 3, 1, f"{s}/conv2", f"{p}.conv2", f"{p}.bn2", relu=False)
        if stride != 1 or cin != cout:
            x = _conv_bn(gb, x, cin, cout, 1, stride, f"{s}/downsample",
                         f"{p}.downsample.0", f"{p}.downsample.1", relu=False)
        x = gb.op("Relu", gb.op("Add", y, x, name=f"{s}/Add"), name=f"{s}/Relu")
        cin = cout
    x = gb.op("GlobalAveragePool", x, name="/avgpool/GlobalAveragePool")
    x = gb.op("Flatten", x, name="/Flatten", axis=1)
    logits = gb.op("Gemm", x, gb.param("fc.weight", gb.randn((cfg.classes, cin), 1.0 / np.sqrt(cin))),
                   gb.param("fc.bias", gb.randn((cfg.classes,), 0.01)), name="/fc/Gemm", transB=1)
    gb.output(logits, "logits", "float32", [cfg.batch, cfg.classes])
    return gb.build(doc=f"ResNet-style CNN {cfg}, seeded weights (seed={seed})")


def resnet_inputs(cfg: ResNetConfig, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"pixel_values": rng.standard_normal((cfg.batch, 3, cfg.image, cfg.image)).astype("float32")}
