"""The tuning-efficiency benchmark: its trials-to-95 % metric on synthetic curves, and one tiny
real sim search producing a table row."""

import math

import numpy as np
import pytest

from accelc.benchmarks import bench_tuning as bt
from accelc.errors import UsageError


def test_trials_to_95_and_the_summary():
    best = 1.0
    assert bt.trials_to([2.0, 1.2, 1.05, 1.0], best) == 3  # 1.05 ≤ 1 / 0.95 = 1.0526
    assert bt.trials_to([1.06, 1.06, 1.06], best) is None  # never within 5 %
    assert bt.trials_to([math.inf, 1e10, 1.0], best) == 3  # failed trials never count
    assert list(bt.best_so_far([3.0, 1e10, 2.0, 5.0])) == [3.0, 3.0, 2.0, 2.0]
    runs = {"a": {"xgb": {0: [4.0, 1.0, 1.0, 1.0]}, "tvm-xgb": {0: [4.0, 4.0, 4.0, 1.02]},
                  "random": {0: [4.0, 4.0, 4.0, 4.0]}},
            "b": {"xgb": {0: [2.0, 2.0, 1.0, 1.0], 1: [1.0, 2.0, 2.0, 2.0]},
                  "tvm-xgb": {0: [2.0, 2.0, 2.0, 2.0], 1: [2.0, 1.0, 2.0, 2.0]},
                  "random": {0: [2.0, 2.0, 2.0, 2.0], 1: [2.0, 2.0, 2.0, 2.0]}}}
    s = bt.summarize(runs, trials=4)
    assert s["tasks"]["a"]["trials_to"] == {"xgb": {0: 2}, "tvm-xgb": {0: 4}, "random": {0: None}}
    assert s["tasks"]["a"]["mean"] == {"xgb": 2.0, "tvm-xgb": 4.0, "random": 5.0}  # never = T + 1
    assert s["tasks"]["b"]["mean"] == {"xgb": 2.0, "tvm-xgb": 3.5, "random": 5.0}
    assert s["ratio_to_xgb"]["tvm-xgb"] == pytest.approx(math.sqrt(2.0 * 1.75))
    assert s["ours_over_stock"] == pytest.approx(1 / math.sqrt(3.5))
    assert s["tasks"]["a"]["final"]["random"] == 4.0


def test_a_tiny_sim_run_produces_a_row():
    res = bt.run("sim", 1, trials=4, seeds=1, batch=4, models=("xgb", "random"), only=("gpt2_qkv",),
                 log=lambda _: None)
    row = res["tasks"]["gpt2_qkv"]
    assert len(res["curves"]["gpt2_qkv"]["xgb"]["0"]) == 4 and len(res["curves"]["gpt2_qkv"]["random"]["0"]) == 4
    # 64×384×1152 MACs on the default 32×32 array at 500 MHz: at least 27648 cycles = 55.3 µs
    assert 64 * 384 * 1152 / 1024 / 500e6 <= row["best_s"] < 1e-2
    assert min(row["mean"].values()) <= 4 and all(1 <= v <= 5 for v in row["mean"].values())
    assert "gpt2_qkv" in bt.table(res) and "geomean ratio to xgb" in bt.table(res)
    with pytest.raises(UsageError, match="unknown sim task"):
        bt.run("sim", 1, 4, 1, 4, only=("nope",))


def test_reuse_takes_curves_of_models_not_searched_again(tmp_path):
    """--reuse: the sim runner is deterministic, so an earlier run's curves of the models not
    named stand in for them; a mismatched run or a CPU benchmark is refused."""
    import json

    first = bt.run("sim", 1, trials=4, seeds=1, batch=4, models=("xgb", "random"), only=("gpt2_qkv",),
                   log=lambda _: None)
    saved = json.loads(json.dumps(bt._finite(first)))
    logs = []
    again = bt.run("sim", 1, trials=4, seeds=1, batch=4, models=("xgb",), only=("gpt2_qkv",),
                   log=logs.append, reuse=saved)
    assert again["curves"]["gpt2_qkv"]["random"] == first["curves"]["gpt2_qkv"]["random"]
    assert again["curves"]["gpt2_qkv"]["xgb"] == first["curves"]["gpt2_qkv"]["xgb"]  # same seed, same search
    assert again["models"] == ["xgb", "random"] and again["reused"] == ["random"]
    assert any("reused" in line for line in logs)
    with pytest.raises(UsageError, match="trials/seeds/batch"):
        bt.run("sim", 1, trials=8, seeds=1, batch=4, models=("xgb",), only=("gpt2_qkv",), reuse=saved)
    with pytest.raises(UsageError, match="only sim"):
        bt._reusable(saved, "cpu", ["gpt2_qkv"], 4, 1, 4, ("xgb",))


def test_merge_puts_runs_side_by_side(tmp_path):
    import json

    def res(models, trials=4):
        curves = {"t": {m: {"0": [4.0, 2.0, 1.0, 1.0][:trials]} for m in models}}
        return {"trials": trials, "seeds": 1, "batch": 4, "curves": curves,
                "seconds": {"t": {m: 1.0 for m in models}}}

    merged = bt.merge([res(["xgb"]), res(["tvm-xgb", "random"])], ["a", "b"])
    assert merged["models"] == ["xgb", "tvm-xgb", "random"] and merged["tasks"]["t"]["mean"]["xgb"] == 3.0
    assert "geomean ratio to xgb" in bt.table(merged)
    with pytest.raises(UsageError, match="model xgb is in two"):
        bt.merge([res(["xgb"]), res(["xgb"])], ["a", "b"])
    with pytest.raises(UsageError, match="differ"):
        bt.merge([res(["xgb"]), res(["random"], trials=3)], ["a", "b"])
    # cpu: tasks split over runs, each task's models from one run
    other = res(["xgb", "random"])
    other["curves"] = {"u": other["curves"]["t"]}
    other["seconds"] = {"u": other["seconds"]["t"]}
    cpu = bt.merge([res(["xgb", "random"]), other], ["a", "b"], "cpu")
    assert sorted(cpu["tasks"]) == ["t", "u"] and cpu["target"] == "cpu"
    with pytest.raises(UsageError, match="cpu task t is in two files"):
        bt.merge([res(["xgb"]), res(["random"])], ["a", "b"], "cpu")
    with pytest.raises(UsageError, match="lack some of the models"):
        bt.merge([res(["xgb", "random"]), {**other, "curves": {"u": {"xgb": other["curves"]["u"]["xgb"]}}}],
                 ["a", "b"], "cpu")
    with pytest.raises(UsageError, match="xgb reference"):
        bt.merge([res(["random"])], ["a"])
    path = tmp_path / "a.json"
    path.write_text(json.dumps({"sim": res(["xgb", "random"])}))
    assert bt.main(["--merge", str(path), "--json", str(tmp_path / "m.json")]) == 0
    assert json.loads((tmp_path / "m.json").read_text())["sim"]["models"] == ["xgb", "random"]


def test_bad_flags_are_refused_in_one_line(tmp_path, capsys):
    """--frac outside (0, 1], --merge of a file without that target's results, and --merge of
    an unreadable file: one line, exit code 2, from the command line."""
    import json
    import subprocess
    import sys

    path = tmp_path / "sim.json"
    path.write_text(json.dumps({"sim": {}}))
    for args, words in ((["--frac", "0"], "--frac 0.0: must be in (0, 1]"),
                        (["--target", "cpu", "--merge", str(path)], f"--merge {path}: no cpu results in it"),
                        (["--merge", str(tmp_path / "missing.json")], "--merge")):
        res = subprocess.run([sys.executable, "-m", "accelc.benchmarks.bench_tuning", *args],
                             capture_output=True, text=True, timeout=120)
        assert res.returncode == 2, res.stderr
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("accelc: error: ") and words in lines[0], res.stderr


def test_warm_start_model_leaves_the_tuned_task_out(tmp_path):
    """``xgb-warm`` starts from a model trained on every *other* task's records: the saved
    model holds the other tasks' groups, not the tuned one's, and it ranks the tuned task's
    candidates better than chance from its first trial."""
    from pathlib import Path

    from tvm.s_tir.meta_schedule.utils import shash2hex

    from accelc.benchmarks import bench_cost_model as bcm
    from accelc.schedules.tuning.cost_model import AccelcXGBModel

    data = Path(__file__).parent / "data" / "costmodel"  # bert_dense, minilm_fc2, vit_qkv: 64 records each
    path = bt.warm_start_file("vit_qkv", "llvm", tmp_path, data=data)
    tasks = {t.name: t for t in bcm.load(data)}
    model = AccelcXGBModel("llvm", warm_start=str(path))
    assert set(model.groups) == {shash2hex(tasks[n].context.mod) for n in ("bert_dense", "minilm_fc2")}
    assert model.n_records == 128
    held = tasks["vit_qkv"].subset(np.flatnonzero(tasks["vit_qkv"].valid))
    acc = bcm.pairwise_accuracy(held.latency, model.score(bcm._as(held.x, model.aggregate)))
    assert acc > 0.58, acc  # as test_cost_model's task it never saw (0.63 there; random 0.5)
    assert bt.warm_start_file("vit_qkv", "llvm", tmp_path, data=data) == path  # written once per task
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "vit_qkv").symlink_to(data / "vit_qkv")
    with pytest.raises(UsageError, match="no records of tasks other than vit_qkv"):
        bt.warm_start_file("vit_qkv", "llvm", tmp_path / "x", data=alone)


def test_pool_warm_start_adds_the_training_pool(tmp_path, monkeypatch):
    """``xgb-pool`` trains on the other tasks *and* the training pool (here two of its tasks)."""
    from pathlib import Path

    from tvm.s_tir.meta_schedule.utils import shash2hex

    from accelc.benchmarks import bench_cost_model as bcm
    from accelc.schedules.tuning.cost_model import AccelcXGBModel

    data = Path(__file__).parent / "data" / "costmodel"
    pool = tmp_path / "pool"
    pool.mkdir()
    for name in ("bert256.fused_matmul_add31", "res160.max_pool2d1"):
        (pool / name).symlink_to(bcm.DATA_POOL / name)
    monkeypatch.setattr(bcm, "DATA_POOL", pool)
    bt._records.cache_clear()
    path = bt.warm_start_file("vit_qkv", "llvm", tmp_path, data=data, pool=True)
    assert path.name == "warm-llvm-vit_qkv-pool.json"
    model = AccelcXGBModel("llvm", warm_start=str(path))
    pooled = {t.name: t for t in bcm.load(pool)}
    assert len(model.groups) == 4  # bert_dense, minilm_fc2 and the two pool tasks
    assert {shash2hex(t.context.mod) for t in pooled.values()} <= set(model.groups)
    assert model.n_records == 128 + sum(int(t.valid.sum()) for t in pooled.values())
    with pytest.raises(UsageError, match="pool holds CPU tasks"):
        bt.warm_start_file("deit_qkv", "sim", tmp_path, pool=True)
    bt._records.cache_clear()


def test_asm_models_search_through_the_reranking_wrapper(tmp_path, monkeypatch):
    """``xgb-asm``/``xgb-asm-pool`` search as ``accelc tune --cost-model xgb-asm`` does: through
    ``driver.SkipMeasured`` re-ranking by the model's assembly scores; the other models through
    the plain evolutionary search. Their warm-start model (``xgb-asm-pool``) is trained on the
    other tasks' and the pool's records with their assembly, and keeps both boosters."""
    from pathlib import Path

    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.utils import shash2hex

    from accelc.benchmarks import bench_cost_model as bcm
    from accelc.schedules.tuning.asm_features import ASM_NAMES
    from accelc.schedules.tuning.cost_model import AccelcXGBModel
    from accelc.schedules.tuning.driver import RERANK_FACTOR, _classes, make_cost_model

    seen = []
    monkeypatch.setattr(ms, "tune_tir", lambda *a, **kw: seen.append(kw["strategy"]))
    asm, plain = make_cost_model("xgb-asm", "llvm", None, 0), make_cost_model("xgb", "llvm", None, 0)
    for model in (asm, plain):
        assert bt.search(None, {"target": None, "space": None, "builder": None, "runner": None},
                         model, 0, 8, 4) == []
    assert isinstance(seen[0], _classes()[0]) and seen[0].budget == 8
    assert seen[0].factor == RERANK_FACTOR > 1  # the wrapper re-ranks (factor 1 without rerank)
    assert isinstance(seen[1], ms.search_strategy.EvolutionarySearch)

    data = Path(__file__).parent / "data" / "costmodel"
    only, pool = tmp_path / "data", tmp_path / "pool"
    only.mkdir(), pool.mkdir()
    for name in ("bert_dense", "vit_qkv"):
        (only / name).symlink_to(data / name)
    (pool / "res160.max_pool2d1").symlink_to(bcm.DATA_POOL / "res160.max_pool2d1")
    monkeypatch.setattr(bcm, "DATA_POOL", pool)
    bt._records.cache_clear()
    path = bt.warm_start_file("vit_qkv", "llvm", tmp_path, data=only, pool=True, asm=True)
    assert path.name == "warm-llvm-vit_qkv-pool-asm.json"
    model = AccelcXGBModel("llvm", warm_start=str(path), asm=True)
    tasks = {t.name: t for t in bcm.load(only)}
    assert len(model.groups) == 2 and shash2hex(tasks["bert_dense"].context.mod) in model.groups
    assert model.booster is not None and model.asm_booster is not None
    x = np.stack(model.groups[shash2hex(tasks["bert_dense"].context.mod)].x)
    assert not np.isnan(x[:, -len(ASM_NAMES):]).all(1).any()  # every record built and read
    with pytest.raises(UsageError, match="use --target cpu"):
        bt.warm_start_file("deit_qkv", "sim", tmp_path, asm=True)
    bt._records.cache_clear()
