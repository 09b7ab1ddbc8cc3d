"""The ``sim`` target: offloaded layers really run in the simulator, and the build equals the
CPU build bit for bit on the integer shift-add path."""

from __future__ import annotations

import numpy as np

import accelc
from accelc.compiler.cli import main
from accelc.targets.sim import offload
from accelc.tests.util import mlp_model

SPEC = "shift-add:terms=2,keep_first=0,keep_last=0"


def test_shift_add_layers_run_on_the_simulator_bit_exactly():
    model = mlp_model(batch=8, d_in=64, d_hidden=96, d_out=32)
    feeds = {"x": np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32)}
    cpu = accelc.compile(model, passes=[SPEC], input_shapes={"x": (8, 64)}).run(feeds)["y"]
    sim_model = accelc.compile(model, target="sim", passes=[SPEC], input_shapes={"x": (8, 64)})
    offload.reset_log()
    sim = sim_model.run(feeds)["y"]
    np.testing.assert_array_equal(sim, cpu)
    # Both linears went through accel.shift_gemm: 2 terms × M·K·N shift-adds each.
    assert [(r["m"], r["k"], r["n"], r["shift_adds"]) for r in offload.RUN_LOG] == \
        [(8, 64, 96, 2 * 8 * 64 * 96), (8, 96, 32, 2 * 8 * 96 * 32)]
    assert all(r["total_cycles"] >= r["compute_cycles"] > 0 for r in offload.RUN_LOG)


def test_bad_sim_config_is_one_line_naming_the_field(tmp_path, capsys):
    import onnx

    path = tmp_path / "m.onnx"
    onnx.save(mlp_model(batch=2), path)
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[array]\nrows = 0\n")
    rc = main(["compile", str(path), "-t", "sim", "--sim-config", str(cfg), "-o", str(tmp_path / "m.so")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and "array.rows" in err[0], err
    assert not (tmp_path / "m.so").exists()
    assert main(["compile", str(path), "--sim-config", str(cfg), "-o", str(tmp_path / "m.so")]) != 0
    assert "--sim-config applies to -t sim only" in capsys.readouterr().err
