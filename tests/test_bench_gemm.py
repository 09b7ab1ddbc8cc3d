"""bench_gemm's contenders compute the same product (the benchmark checks it before timing)."""

import numpy as np

from accelc.benchmarks import bench_gemm


def test_bench_gemm_small_run_checks_against_numpy(capsys):
    rows = bench_gemm.run([64], threads=1, rounds=1, budget=0.001, dbs={})
    assert set(rows[0]["median_s"]) == {"numpy (OpenBLAS)", "accelc default"}
    assert all(v > 0 for v in rows[0]["median_s"].values())
    assert "x of numpy" in capsys.readouterr().out


def test_gemm_model_is_a_constant_weight_matmul():
    model, w = bench_gemm.gemm_model(8)
    assert [n.op_type for n in model.graph.node] == ["MatMul"]
    np.testing.assert_array_equal(np.frombuffer(model.graph.initializer[0].raw_data, np.float32).reshape(8, 8), w)


def test_bench_gemm_int8_row_is_checked_and_compared_with_fp32(capsys):
    rows = bench_gemm.run([64], threads=1, rounds=1, budget=0.001, dbs={}, int8=True)
    assert set(rows[0]["median_s"]) == {"numpy (OpenBLAS)", "accelc default", "accelc int8"}
    assert "x of accelc fp32" in capsys.readouterr().out
