"""The ``sim`` target: offloaded layers really run in the simulator, and the build equals the
CPU build bit for bit on the integer shift-add path."""

from __future__ import annotations

import numpy as np
import pytest

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


def test_report_on_the_sim_target_prints_the_per_layer_table(tmp_path, capsys):
    import json

    import onnx

    path = tmp_path / "m.onnx"
    onnx.save(mlp_model(batch=16, d_in=64, d_hidden=96, d_out=32), path)
    out = tmp_path / "r.json"
    assert main(["report", str(path), "--passes", "shift-add:terms=2,keep_first=0", "-t", "sim",
                 "--input-shape", "x=16,64", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "simulated accelerator (32×32 both PEs" in text and "fc1/MatMul" in text
    acc = json.loads(out.read_text())["accelerator"]
    # fc1 offloaded; fc2 kept dense as the last layer: 64·96 of 64·96 + 96·32 MACs per row.
    assert [r["name"] for r in acc["layers"]] == ["fc1/MatMul"]
    assert acc["offloaded_fraction"] == pytest.approx(64 * 96 / (64 * 96 + 96 * 32))
    assert acc["layers"][0]["total_cycles"] >= acc["layers"][0]["compute_cycles"] > 0


def test_mac_only_machine_keeps_shift_add_layers_on_the_host(tmp_path, capsys):
    cfg = tmp_path / "mac.toml"
    cfg.write_text('[array]\npe_type = "mac"\n')
    model = mlp_model(batch=4, d_in=32, d_hidden=32, d_out=8)
    feeds = {"x": np.ones((4, 32), np.float32)}
    offload.reset_log()
    sim = accelc.compile(model, target="sim", passes=[SPEC], input_shapes={"x": (4, 32)},
                         target_options={"sim_config": str(cfg)})
    assert "PEs are mac-only" in capsys.readouterr().err
    cpu = accelc.compile(model, passes=[SPEC], input_shapes={"x": (4, 32)})
    np.testing.assert_array_equal(sim.run(feeds)["y"], cpu.run(feeds)["y"])
    assert offload.RUN_LOG == []


def test_compile_prints_the_table_and_emits_the_program_that_round_trips(tmp_path, capsys):
    import json

    import onnx

    from accelc.targets.sim.program import parse_mlir, to_mlir
    from accelc.targets.sim.timing import time_program

    path = tmp_path / "m.onnx"
    onnx.save(mlp_model(batch=8, d_in=64, d_hidden=96, d_out=32), path)
    mlir, lib = tmp_path / "m.mlir", tmp_path / "m.so"
    assert main(["compile", str(path), "-t", "sim", "--passes", "int8", "--input-shape", "x=8,64",
                 "-o", str(lib), "--emit-mlir", str(mlir)]) == 0
    out = capsys.readouterr().out
    assert "2 layers offloaded, 100.0% of the constant-weight GEMM MACs" in out and "fc2/MatMul" in out
    acc = json.loads(lib.with_suffix(".json").read_text())["accelerator"]
    assert [(r["name"], r["m"], r["k"], r["n"]) for r in acc["layers"]] == \
        [("fc1/MatMul", 8, 64, 96), ("fc2/MatMul", 8, 96, 32)]
    # the MLIR text parses back to the identical program, with identical cycles: the layers'
    # programs run back to back, so the module's total is the per-layer totals' sum
    text = mlir.read_text()
    parsed = parse_mlir(text, str(mlir))
    assert to_mlir(parsed) == text
    assert time_program(parsed, offload.current_config()).total_cycles == \
        sum(r["total_cycles"] for r in acc["layers"]) == acc["total_cycles"]
    # the compile-time estimate is what running the artifact measures
    offload.reset_log()
    accelc.load(lib).run({"x": np.ones((8, 64), np.float32)})
    assert [r["total_cycles"] for r in offload.RUN_LOG] == [r["total_cycles"] for r in acc["layers"]]
    assert [r["energy_pj"]["total"] * 1e-6 for r in offload.RUN_LOG] == \
        pytest.approx([r["energy_uj"] for r in acc["layers"]])
    # --emit-mlir is for the simulated accelerator only
    assert main(["compile", str(path), "--emit-mlir", str(tmp_path / "x.mlir"), "-o", str(tmp_path / "x.so")]) == 2
    assert "--emit-mlir applies to -t sim only" in capsys.readouterr().err
    assert not (tmp_path / "x.mlir").exists()


def test_a_tuned_tiling_from_the_database_replaces_the_default(tmp_path):
    """Tune one layer's accelerator tiling (MetaSchedule, simulated cycles), then compile with
    ``database=``: that layer's program comes from the record — fewer cycles — and the build
    still equals the CPU build bit for bit."""
    from tvm.s_tir import meta_schedule as ms

    from accelc.targets.sim.tensorize import workload
    from accelc.targets.sim.tuning import tuning_components

    model = mlp_model(batch=64, d_in=256, d_hidden=512, d_out=16)
    feeds = {"x": np.random.default_rng(0).standard_normal((64, 256)).astype(np.float32)}
    shapes = {"x": (64, 256)}
    default = accelc.compile(model, target="sim", passes=["int8"], input_shapes=shapes)
    fc1 = default.meta.accelerator["layers"][0]
    assert (fc1["m"], fc1["k"], fc1["n"]) == (64, 256, 512)
    cfg = offload.current_config()
    comps = tuning_components(cfg)
    ms.tune_tir(workload("gemm", 64, 256, 512, 1, cfg), comps["target"], str(tmp_path), max_trials_global=16,
                num_trials_per_iter=16, space=comps["space"], builder=comps["builder"], runner=comps["runner"],
                cost_model=ms.cost_model.RandomModel(seed=0), seed=0, num_tuning_cores=1,
                strategy=ms.search_strategy.EvolutionarySearch(population_size=32, init_min_unmeasured=16))
    best = min(float(r.run_secs[0]) for r in ms.database.JSONDatabase(work_dir=str(tmp_path)).get_all_tuning_records())
    tuned = accelc.compile(model, target="sim", passes=["int8"], input_shapes=shapes, database=str(tmp_path))
    layer = tuned.meta.accelerator["layers"][0]
    assert layer["total_cycles"] == round(best * cfg.clock_mhz * 1e6)  # the record's program, re-timed
    assert layer["total_cycles"] < fc1["total_cycles"]
    assert tuned.meta.accelerator["layers"][1]["total_cycles"] == default.meta.accelerator["layers"][1]["total_cycles"]
    cpu = accelc.compile(model, passes=["int8"], input_shapes=shapes).run(feeds)["y"]
    offload.reset_log()
    np.testing.assert_array_equal(tuned.run(feeds)["y"], cpu)
    assert offload.RUN_LOG[0]["total_cycles"] == layer["total_cycles"]
    offload.set_database(None)
