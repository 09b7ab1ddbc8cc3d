"""Every zoo model compiled for the simulated accelerator equals its CPU build bit for bit
(issue 5's functional bar), with every rewritten integer layer really executed by the
simulator: the int8 layers on the MAC PEs, and shift-add layers on the shift-add PEs."""

from __future__ import annotations

import json

import numpy as np
import pytest

import accelc
from accelc import models
from accelc.compiler import pipeline
from accelc.compiler.frontend import import_model
from accelc.targets.sim import offload
from accelc.tests.util import require_minilm

SHIFT = "shift-add:terms=2"
CASES = [(name, "int8") for name in models.names()] + [("gpt2-like", SHIFT), ("deit-tiny", SHIFT)]


@pytest.mark.parametrize("name,spec", CASES, ids=[f"{n}-{s.split(':')[0]}" for n, s in CASES])
def test_zoo_model_on_the_simulator_equals_the_cpu_build(name, spec):
    if models.get(name).real:
        require_minilm()
    onnx_model = models.build(name)
    feeds = models.example_inputs(name)
    mod, _ = pipeline.apply_passes(import_model(onnx_model), [spec])
    layers = [layer for rec in json.loads(str(mod.attrs["accelc.rewrites"])) for layer in rec["layers"]]
    want_op = "gemm" if spec == "int8" else "shift_gemm"

    cpu_out = accelc.compile(onnx_model, passes=[spec]).run(feeds)
    sim = accelc.compile(onnx_model, target="sim", passes=[spec])
    offload.reset_log()
    sim_out = sim.run(feeds)
    for key, want in cpu_out.items():
        np.testing.assert_array_equal(sim_out[key], want, err_msg=f"{name} {spec}: output {key}")
    # one simulated program per rewritten layer, of that layer's GEMM shape (convs: im2col)
    assert len(layers) > 0
    assert [(r["op"], r["m"], r["k"], r["n"]) for r in offload.RUN_LOG] == \
        [(want_op, layer["rows"], layer["k"], layer["n"]) for layer in layers]
