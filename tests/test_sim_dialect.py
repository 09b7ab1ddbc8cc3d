"""The ``accel`` dialect (xDSL), its MLIR round trip, and the functional interpreter."""

from __future__ import annotations

import numpy as np
import pytest

from accelc.passes.shift_add_math import encode_int_codes, shift_matmul_int_ref
from accelc.targets.sim.functional import SimError, run
from accelc.targets.sim.program import (
    ProgramBuilder,
    lower_gemm,
    lower_shift_gemm,
    parse_mlir,
    to_mlir,
)

M, K, N, T = 37, 50, 29, 16


def ceil(a, b):
    return -(-a // b)


@pytest.fixture(scope="module")
def gemm_case():
    rng = np.random.default_rng(7)
    a = rng.integers(-128, 128, (M, K), dtype=np.int8)
    b = rng.integers(-128, 128, (K, N), dtype=np.int8)
    return lower_gemm(M, K, N, T, T, T), a, b


def test_gemm_round_trip_and_exact(gemm_case):
    prog, a, b = gemm_case
    text = to_mlir(prog)
    assert "accel.gemm" in text and "accel.dma_load" in text and "!accel.token" not in text
    back = parse_mlir(text)
    assert to_mlir(back) == text
    assert back.is_structurally_equivalent(prog)
    # the generic form parses to the same program too
    assert to_mlir(parse_mlir(to_mlir(prog, generic=True))) == text

    r1, r2 = run(prog, {"A": a, "B": b}), run(back, {"A": a, "B": b})
    want = a.astype(np.int32) @ b.astype(np.int32)
    assert r1["outputs"]["C"].dtype == np.int32
    np.testing.assert_array_equal(r1["outputs"]["C"], want)
    np.testing.assert_array_equal(r2["outputs"]["C"], want)
    assert r1["stats"] == r2["stats"]

    s = r1["stats"]
    tm, tk, tn = ceil(M, T), ceil(K, T), ceil(N, T)
    assert s["mac"] == M * N * K and s["shift_add"] == 0
    # A is re-read once per column of output tiles, B once per row of tiles; C written once.
    assert s["dram_read_bytes"] == tn * M * K + tm * K * N
    assert s["dram_write_bytes"] == 4 * M * N
    assert s["instructions"] == {"accel.dma_load": 2 * tm * tn * tk, "accel.gemm": tm * tn * tk,
                                 "accel.dma_store": tm * tn}
    assert s["sram_write_bytes"]["ifmap"] == tn * M * K
    # every k step writes C, all but the first read it back, and the DMA store drains it once
    assert s["sram_write_bytes"]["acc"] == 4 * M * N * tk
    assert s["sram_read_bytes"]["acc"] == 4 * M * N * (tk - 1) + 4 * M * N
    assert r1["per_program"]["gemm"] == s


def test_shift_gemm_matches_reference():
    rng = np.random.default_rng(3)
    terms = 2
    codes = rng.integers(-8, 9, (terms, K, N)).astype(np.int8)  # c = sign * (e + 1), 0 = zero
    codes[0, 0, 0] = 32  # the largest shift (e = 31)
    xq = rng.integers(-(2**31), 2**31, (M, K), dtype=np.int64).astype(np.int32)
    prog = lower_shift_gemm(M, K, N, T, T, T, terms=terms)
    back = parse_mlir(to_mlir(prog))
    w = encode_int_codes(codes).reshape(terms * K, N)
    res = run(back, {"X": xq, "W": w})
    np.testing.assert_array_equal(res["outputs"]["C"], shift_matmul_int_ref(xq, codes))
    s = res["stats"]
    assert s["shift_add"] == terms * M * N * K and s["mac"] == 0
    assert s["dram_read_bytes"] == ceil(N, T) * M * K * 4 + ceil(M, T) * terms * K * N
    assert s["instructions"]["accel.shift_gemm"] == terms * ceil(M, T) * ceil(N, T) * ceil(K, T)


def _small_gemm(rows_in_dram=4):
    b = ProgramBuilder("small")
    b.buffer("A", (rows_in_dram, 4), "i8")
    b.buffer("C", (4, 4), "i32", "output")
    return b


def test_dma_out_of_bounds_is_reported():
    b = _small_gemm()
    b.dma_load("A", "ifmap", addr=0, rows=4, cols=4, offset=4)  # rows 1..4 of a 4-row buffer
    with pytest.raises(SimError, match=r"accel.dma_load \(op 2 of program 'small'\).*outside buffer 'A'"):
        run(b.module(), {"A": np.zeros((4, 4), np.int8)})

    b = _small_gemm()
    b.dma_load("A", "ifmap", addr=100, rows=4, cols=4)
    with pytest.raises(SimError, match=r"accel.dma_load.*'ifmap'\[100:116\].*outside the 64-byte 'ifmap'"):
        run(b.module(), {"A": np.zeros((4, 4), np.int8)}, scratchpads={"ifmap": 64})

    text = to_mlir(b.module()).replace("addr = 100 : i64", "addr = -16 : i64")
    with pytest.raises(SimError, match=r"accel.dma_load.*attribute addr = -16 must be non-negative"):
        run(parse_mlir(text), {"A": np.zeros((4, 4), np.int8)})

    b = _small_gemm()
    b.dma_store("C", "acc", addr=0, rows=4, cols=4, offset=0, stride=5)
    with pytest.raises(SimError, match=r"accel.dma_store.*outside buffer 'C'"):
        run(b.module(), {"A": np.zeros((4, 4), np.int8)})


def test_unsignalled_token_is_reported():
    # The load waits on the gemm that waits on the load: a cycle, never signalled.
    b = _small_gemm()
    t_load = b.dma_load("A", "ifmap", addr=0, rows=4, cols=4)
    gemm_tok = b.gemm(4, 4, 4, 0, 0, 0, deps=[t_load])
    load_op = t_load.owner
    load_op.operands = [gemm_tok]
    text = to_mlir(b.module())
    with pytest.raises(SimError, match=r"accel.dma_load \(op 2 of program 'small'\) waits on a token "
                                       r"that is never signalled.*accel.gemm"):
        run(parse_mlir(text), {"A": np.zeros((4, 4), np.int8)})

    # A wait on a later instruction of the same in-order unit deadlocks as well.
    b = _small_gemm()
    first = b.dma_load("A", "ifmap", addr=0, rows=2, cols=4)
    second = b.dma_load("A", "ifmap", addr=8, rows=2, cols=4, offset=8)
    first.owner.operands = [second]
    with pytest.raises(SimError, match="never signalled"):
        run(b.module(), {"A": np.zeros((4, 4), np.int8)})


def test_forward_dependency_across_units_runs():
    # A store listed before the gemm it waits on: legal (different units), runs after it.
    rng = np.random.default_rng(0)
    a = rng.integers(-128, 128, (4, 4), dtype=np.int8)
    b = ProgramBuilder("fwd")
    b.buffer("A", (4, 4), "i8")
    b.buffer("B", (4, 4), "i8")
    b.buffer("C", (4, 4), "i32", "output")
    ta = b.dma_load("A", "ifmap", 0, 4, 4)
    tb = b.dma_load("B", "weight", 0, 4, 4)
    st = b.dma_store("C", "acc", 0, 4, 4)
    g = b.gemm(4, 4, 4, 0, 0, 0, deps=[ta, tb])
    st.owner.operands = [g]
    mod = parse_mlir(to_mlir(b.module()))
    out = run(mod, {"A": a, "B": a})["outputs"]["C"]
    np.testing.assert_array_equal(out, a.astype(np.int32) @ a.astype(np.int32))


def test_sparse_and_alu_ops():
    rng = np.random.default_rng(5)
    m, n, d = 6, 8, 5
    mask = rng.random((m, n)) < 0.4
    mask[2] = False  # an empty row
    indptr = np.concatenate([[0], np.cumsum(mask.sum(1))]).astype(np.int32)
    indices = np.nonzero(mask)[1].astype(np.int32)
    nnz = int(indices.size)
    q = rng.integers(-128, 128, (m, d), dtype=np.int8)
    kmat = rng.integers(-128, 128, (n, d), dtype=np.int8)
    v = rng.integers(-128, 128, (n, d), dtype=np.int8)

    b = ProgramBuilder("attn")
    b.buffer("Q", (m, d), "i8")
    b.buffer("K", (n, d), "i8")
    b.buffer("V", (n, d), "i8")
    b.buffer("indptr", (1, m + 1), "i32")
    b.buffer("indices", (1, nnz), "i32")
    b.buffer("S", (1, nnz), "i32", "output")
    b.buffer("O", (m, d), "i8", "output")
    b.buffer("R", (m, 1), "i32", "output")
    loads = [b.dma_load("Q", "ifmap", 0, m, d), b.dma_load("K", "weight", 0, n, d),
             b.dma_load("V", "weight", 64, n, d), b.dma_load("indptr", "weight", 128, 1, m + 1),
             b.dma_load("indices", "weight", 192, 1, nnz)]
    s_tok = b.sddmm(m, n, d, nnz, 0, 0, 128, 192, out_addr=0, deps=loads)
    # scores -> int8 probabilities stand-in: requantize by 1/2**10, store to ifmap as spmm values
    rq = b.alu("requant", 1, nnz, ("acc", 0, "i32"), ("ifmap", 512, "i8"), mult=3, shift=10,
               zero_point=-1, deps=[s_tok])
    sp = b.spmm(m, n, d, nnz, 512, 128, 192, 64, c_addr=1024, deps=[rq])
    relu = b.alu("relu", m, d, ("acc", 1024, "i32"), ("vec", 0, "i8"), deps=[sp])
    rmax = b.alu("rowmax", m, d, ("acc", 1024, "i32"), ("vec", 256, "i32"), deps=[sp])
    sub = b.alu("sub", m, d, ("acc", 1024, "i32"), ("vec", 512, "i32"), src2=("vec", 256, "i32"),
                broadcast=True, deps=[rmax])
    b.dma_store("S", "acc", 0, 1, nnz, deps=[s_tok])
    b.dma_store("O", "vec", 0, m, d, deps=[relu])
    b.dma_store("R", "vec", 256, m, 1, deps=[sub])
    mod = parse_mlir(to_mlir(b.module()))
    res = run(mod, {"Q": q, "K": kmat, "V": v, "indptr": indptr[None], "indices": indices[None]})

    full = q.astype(np.int64) @ kmat.T.astype(np.int64)
    scores = full[mask]
    np.testing.assert_array_equal(res["outputs"]["S"][0], scores)
    p = np.clip(((scores * 3 + 512) >> 10) - 1, -128, 127)
    dense_p = np.zeros((m, n), np.int64)
    dense_p[mask] = p
    out = dense_p @ v.astype(np.int64)
    np.testing.assert_array_equal(res["outputs"]["O"], np.clip(np.maximum(out, 0), -128, 127))
    np.testing.assert_array_equal(res["outputs"]["R"][:, 0], out.max(1))
    st = res["stats"]
    assert st["mac"] == 2 * nnz * d
    assert st["alu_by_kind"] == {"requant": nnz, "relu": m * d, "rowmax": m * d, "sub": m * d}

    # a CSR column index outside the tile is caught
    bad = indices.copy()
    bad[0] = n
    with pytest.raises(SimError, match=r"accel.sddmm.*column index"):
        run(mod, {"Q": q, "K": kmat, "V": v, "indptr": indptr[None], "indices": bad[None]})


def test_bad_feeds_and_builder_errors():
    prog = lower_gemm(8, 8, 8, 4, 4, 4)
    a = np.zeros((8, 8), np.int8)
    with pytest.raises(SimError, match="not fed"):
        run(prog, {"A": a})
    with pytest.raises(SimError, match=r"shape \[8, 9\]"):
        run(prog, {"A": a, "B": np.zeros((8, 9), np.int8)})
    with pytest.raises(SimError, match="fitting int8"):
        run(prog, {"A": a, "B": np.full((8, 8), 300)})
    with pytest.raises(ValueError, match="tile_k must be a positive integer"):
        lower_gemm(8, 8, 8, 4, 0, 4)
    from accelc.errors import ArtifactError

    with pytest.raises(ArtifactError, match="not a valid accel MLIR program"):
        parse_mlir('builtin.module {\n  accel.program attributes {sym_name = "x"} {\n'
                   '    %0 = accel.gemm {m = 4 : i64}\n  }\n}\n')


def test_multi_program_module_shares_dram():
    from accelc.targets.sim.program import make_module

    a = np.arange(-8, 8, dtype=np.int8).reshape(4, 4)
    l1 = ProgramBuilder("layer1")
    l1.buffer("A", (4, 4), "i8")
    l1.buffer("T", (4, 4), "i8", "temp")
    t = l1.dma_load("A", "ifmap", 0, 4, 4)
    r = l1.alu("relu", 4, 4, ("ifmap", 0, "i8"), ("vec", 0, "i8"), deps=[t])
    l1.dma_store("T", "vec", 0, 4, 4, deps=[l1.barrier([t, r])])
    l2 = ProgramBuilder("layer2")
    l2.buffer("T", (4, 4), "i8", "temp")
    l2.buffer("O", (2, 4), "i8", "output")
    t = l2.dma_load("T", "vec", 64, 2, 4, offset=8)
    l2.dma_store("O", "vec", 64, 2, 4, deps=[t])
    mod = parse_mlir(to_mlir(make_module([l1, l2])))
    res = run(mod, {"A": a})
    np.testing.assert_array_equal(res["outputs"]["O"], np.maximum(a, 0)[2:])
    assert set(res["per_program"]) == {"layer1", "layer2"}
    assert res["per_program"]["layer2"]["dram_read_bytes"] == 8
    assert res["stats"]["dram_read_bytes"] == 16 + 8
