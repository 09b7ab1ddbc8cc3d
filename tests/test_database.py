"""A MetaSchedule database given to ``accelc.compile`` replaces the default schedules.

A tiny tuning run (a few trials on the MLP's tasks) produces the records; the compiled model
must use them (MetaScheduleApplyDatabase marks the PrimFuncs it schedules) and stay correct.
"""

from __future__ import annotations

import numpy as np
import pytest
import tvm

import accelc
from accelc.compiler.frontend import import_onnx
from accelc.targets import cpu

from accelc.tests.util import mlp_model, ort_run


@pytest.fixture(scope="module")
def tuned_db(tmp_path_factory):
    from tvm.s_tir import meta_schedule as ms

    from accelc.schedules.tuning import load_intrinsics, local_builder

    load_intrinsics("llvm")  # not TVM's 37 s import of every architecture's intrinsics
    work = tmp_path_factory.mktemp("db")
    target = cpu.host_target()
    mod = import_onnx(mlp_model(batch=8)).mod
    with target:
        fused = tvm.transform.Sequential(cpu.front_passes(target))(mod)
    db = ms.relax_integration.tune_relax(fused, params={}, target=target, work_dir=str(work),
                                         max_trials_global=8, max_trials_per_task=4,
                                         num_trials_per_iter=4, seed=0, builder=local_builder(),
                                         cost_model="random")
    return work, db


def test_compile_with_database_uses_the_records(tuned_db):
    work, db = tuned_db
    assert len(db.get_all_tuning_records()) > 0
    x = np.random.default_rng(0).standard_normal((8, 16)).astype("float32")
    want = ort_run(mlp_model(batch=8), {"x": x})["y"]
    for database in (db, str(work)):  # a Database object or its directory
        compiled = accelc.compile(mlp_model(batch=8), database=database)
        assert compiled.meta.tuned
        np.testing.assert_allclose(compiled.run({"x": x})["y"], want, rtol=1e-4, atol=1e-4)

    # the records really were applied: the tuned PrimFuncs carry MetaSchedule's traces
    target = cpu.host_target()
    mod = import_onnx(mlp_model(batch=8)).mod
    with target, db:
        applied = tvm.transform.Sequential(cpu.front_passes(target) + cpu.schedule_passes(db)[:1])(mod)
    tuned = [gv.name_hint for gv, f in applied.functions_items()
             if isinstance(f, tvm.tirx.PrimFunc) and f.attrs and "tirx.is_scheduled" in f.attrs]
    assert tuned, "no PrimFunc was scheduled from the database"


def test_missing_database_directory(tmp_path):
    from accelc.errors import UsageError

    with pytest.raises(UsageError, match="does not exist"):
        accelc.compile(mlp_model(batch=2), database=tmp_path / "nope")
