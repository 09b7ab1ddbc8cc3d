"""``accelc tune``: a killed run resumes without losing or re-measuring a record, the database is
stock MetaSchedule and ``compile --db`` applies it, corrupt or foreign databases are refused
untouched, reports, RPC measurement on loopback, and the sim target.

The budgets are tiny (a few trials of the MLP's first matmul task): these tests check the
machinery, not how fast the schedules are.
"""

from __future__ import annotations

import base64
import json
import math
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import onnx
import pytest

from accelc.tests.util import mlp_model

ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}
ENV.pop("ACCELC_DEBUG", None)
RECORDS, WORKLOADS = "database_tuning_record.json", "database_workload.json"
VERIFIED = "accelc_verified.json"
TASK = "matmul_add_relu"  # the MLP's first layer: a 8x16x32 matmul with its bias and ReLU
SMALL = ["--trials", "3", "--batch", "2", "--tasks", TASK, "--cost-model", "random", "--no-progress",
         "--no-model-check"]  # timed inside the model: test_model_check_*


def cli(*args, **kw):
    return [sys.executable, "-m", "accelc.compiler.cli", *map(str, args)]


def run_main(capsys, *args) -> tuple[int, str, str]:
    from accelc.compiler.cli import main

    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines() if path.exists() else []


def assert_one_line_error(rc: int, err: str, *fragments):
    assert rc == 2, err
    errs = [ln for ln in err.splitlines() if ln.strip()]
    assert len(errs) == 1 and errs[0].startswith("accelc: error: "), err
    for frag in fragments:
        assert frag in errs[0], (frag, errs[0])


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """Tune the MLP, SIGKILL the run once its first batch is on disk, then run it again."""
    d = tmp_path_factory.mktemp("tune")
    model = d / "mlp.onnx"
    onnx.save(mlp_model(batch=8), str(model))
    db = d / "db"
    first = subprocess.Popen(cli("tune", model, "--db", db, *SMALL), env=ENV, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 300
    while len(lines(db / RECORDS)) < 3:  # the default schedule's record, then a batch of two
        assert first.poll() is None, first.stdout.read().decode()
        assert time.time() < deadline, "the first batch never reached the database"
        time.sleep(0.1)
    os.killpg(first.pid, signal.SIGKILL)  # the run and its builder/runner workers
    first.wait()
    assert first.returncode == -signal.SIGKILL
    before = (db / RECORDS).read_bytes()
    again = subprocess.run(cli("tune", model, "--db", db, *SMALL), env=ENV, capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stderr
    return SimpleNamespace(dir=d, model=model, db=db, before=before, out=again.stdout)


def replayed_hashes(db: Path) -> list[int]:
    """Structural hash of every record's scheduled module, replayed by stock TVM from its trace."""
    import tvm_ffi
    from tvm.s_tir import meta_schedule as ms

    from accelc.schedules.tuning import load_intrinsics

    load_intrinsics("llvm")
    recs = ms.database.JSONDatabase(work_dir=str(db), allow_missing=False).get_all_tuning_records()
    return [tvm_ffi.structural_hash(r.as_measure_candidate().sch.mod) for r in recs]


def test_killed_run_resumes_without_losing_or_remeasuring(tuned):
    after = (tuned.db / RECORDS).read_bytes()
    assert after.startswith(tuned.before), "a record written before the kill changed or vanished"
    killed_at = tuned.before.count(b"\n")
    assert f"({killed_at - 1} already in" in tuned.out  # the resumed run counted the searched ones
    recs = [json.loads(ln) for ln in after.splitlines()]
    searched = [r for r in recs if any(i[0] == "EnterPostproc" for i in r[1][0][0])]
    assert len(recs) == 4 and len(searched) == 3  # the budget, plus the default schedule once
    assert len({r[0] for r in recs}) == 1  # one workload: the selected task
    hashes = replayed_hashes(tuned.db)
    assert len(hashes) == 4 and len(set(hashes)) == 4, "a schedule was measured twice"
    secs = [sum(r[1][1]) / len(r[1][1]) for r in recs]
    assert all(0 < s for s in secs) and any(s < 1e-3 for s in secs)


def test_database_is_stock_metaschedule_and_compile_applies_it(tuned):
    import tvm
    from tvm.s_tir import meta_schedule as ms

    from accelc.compiler.frontend import import_onnx
    from accelc.targets import cpu

    db = ms.database.JSONDatabase(work_dir=str(tuned.db), allow_missing=False)
    assert len(db.get_all_tuning_records()) == 4
    res = subprocess.run(cli("compile", tuned.model, "--db", tuned.db, "-o", tuned.dir / "m.so", "--verify"),
                         env=ENV, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    assert "verify vs onnxruntime: OK" in res.stdout
    assert json.loads((tuned.dir / "m.json").read_text())["tuned"] is True
    # MetaScheduleApplyDatabase schedules the tuned task from its best record
    target = cpu.host_target()
    with target, db:
        applied = tvm.transform.Sequential(cpu.front_passes(target) + cpu.schedule_passes(db)[:1])(
            import_onnx(mlp_model(batch=8)).mod)
    scheduled = [gv.name_hint for gv, f in applied.functions_items()
                 if isinstance(f, tvm.tirx.PrimFunc) and f.attrs and "tirx.is_scheduled" in f.attrs]
    assert any(TASK in name for name in scheduled), scheduled


def test_reports(tuned):
    data = json.loads((tuned.db / "curve.json").read_text())
    assert data["trials"] == 3 and list(data["tasks"]) and all(TASK in k for k in data["tasks"])
    task = next(iter(data["tasks"].values()))
    assert task["trials"] == 3 and task["calls"] == 1 and task["before_us"] > 0 and task["default_in_db"]
    trials = [n for n, _ in task["curve"]]
    best = [v for _, v in task["curve"]]
    assert trials == [0, 1, 2, 3]  # default; the records before the kill (rebuilt one by one); the last batch
    assert best[0] == task["before_us"]
    assert all(a >= b for a, b in zip(best, best[1:])) and best[-1] <= task["before_us"]
    assert data["total"]["curve"][-1] == [3, best[-1]]  # the search's own timings
    # after the search, the default and the best records were timed side by side: the applied
    # record is the lowest median of that timing, and the speed-up is against the default's
    entry = json.loads((tuned.db / VERIFIED).read_text())["tasks"][0]
    ver = entry["records"]
    medians = {int(line): statistics.median(v) for line, v in ver.items()}
    assert 1 in medians and len(medians) == 4  # the default (line 1) and the 3 searched records
    # single calls after a cache flush (as in the model), 10 per round, 3 interleaved rounds
    assert entry["cache"] == "flushed" and all(len(v) == 30 for v in ver.values())
    assert task["verified"]["after_us"] == pytest.approx(min(medians.values()) * 1e6, abs=1e-4)
    assert task["verified"]["default_us"] == pytest.approx(medians[1] * 1e6, abs=1e-4)
    assert task["after_us"] == task["verified"]["after_us"] == data["total"]["best_us"]
    assert "verifying 1 task(s): 12 side-by-side runs" in tuned.out
    assert (tuned.db / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "before µs" in tuned.out and "after µs" in tuned.out
    assert f"apply it: accelc compile {tuned.model} -t cpu --db {tuned.db}" in tuned.out


def _target_of_line(text: str, n: int, **change) -> str:
    rows = text.splitlines(keepends=True)
    rec = json.loads(rows[n - 1])
    rec[1][2].update(change)
    rows[n - 1] = json.dumps(rec) + "\n"
    return "".join(rows)


def _tvm_version(text: str, version: str) -> str:
    rows = text.splitlines(keepends=True)
    shash, mod = json.loads(rows[0])
    raw = base64.b64decode(mod)
    graph = json.loads(raw[8:])
    graph["metadata"]["tvm_version"] = version
    body = json.dumps(graph).encode()
    rows[0] = json.dumps([shash, base64.b64encode(len(body).to_bytes(8, "little") + body).decode()]) + "\n"
    return "".join(rows)


CORRUPT = {  # name: (file, edit(text) -> text, line named in the error, words of the error)
    "garbage": (RECORDS, lambda t: t.replace("\n", "\nthis is not json\n", 1), 2, "not valid JSON"),
    "truncated": (RECORDS, lambda t: "".join(r[: len(r) // 2] + "\n" if i == 1 else r
                                             for i, r in enumerate(t.splitlines(keepends=True))), 2, "not valid JSON"),
    "no such workload": (RECORDS, lambda t: t.replace("[0,", "[7,", 1), 1, "refers to workload 7"),
    "another cpu": (RECORDS, lambda t: _target_of_line(t, 3, mcpu="skylake-avx512"), 3, "another target"),
    "another kind": (RECORDS, lambda t: _target_of_line(t, 2, kind="cuda"), 2, "another target"),
    "another tvm": (WORKLOADS, lambda t: _tvm_version(t, "0.19.0"), 1, "TVM 0.19.0"),
}


@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_corrupt_or_foreign_database_is_refused_untouched(tuned, tmp_path, capsys, case):
    name, edit, line, words = CORRUPT[case]
    db = tmp_path / "db"
    shutil.copytree(tuned.db, db)
    (db / name).write_text(edit((db / name).read_text()))
    snapshot = {f: (db / f).read_bytes() for f in (RECORDS, WORKLOADS)}
    rc, out, err = run_main(capsys, "tune", tuned.model, "--db", db, *SMALL)
    assert_one_line_error(rc, err, f"{db / name} line {line}", words)
    assert "tuning" not in out
    rc, _, err = run_main(capsys, "compile", tuned.model, "--db", db, "-o", tmp_path / "m.so")
    assert_one_line_error(rc, err, f"{db / name} line {line}", words)
    assert {f: (db / f).read_bytes() for f in snapshot} == snapshot
    assert not (tmp_path / "m.so").exists()


def _query(tdb, target):
    """The scheduled module of the record ``compile --db`` applies to the tuned task."""
    import tvm_ffi

    db = tdb.for_compile()
    rec = db.query_tuning_record(tdb.workloads[0].mod, target, "main")
    return tvm_ffi.structural_hash(rec.as_measure_candidate().sch.mod) if rec is not None else None


def _db_copy(tuned, tmp_path):
    """(copy of the tuned database, host target, the copy opened)."""
    from accelc.schedules.tuning import database, load_intrinsics
    from accelc.targets import cpu

    load_intrinsics("llvm")
    target = cpu.host_target()
    db = tmp_path / "db"
    shutil.copytree(tuned.db, db)
    return db, target, database.open_database(db, target)


def test_compile_applies_the_side_by_side_winner_not_the_fastest_stored_time(tuned, tmp_path):
    """A record whose search time was a lucky sample loses to the one that wins side by side."""
    import tvm_ffi
    from tvm.s_tir import meta_schedule as ms

    from accelc.schedules.tuning import database

    db, target, tdb = _db_copy(tuned, tmp_path)
    by_line = {r.line: tvm_ffi.structural_hash(r.tvm.as_measure_candidate().sch.mod) for r in tdb.records}
    stock = ms.database.JSONDatabase(work_dir=str(db), allow_missing=False)
    fastest_stored = min(tdb.records, key=lambda r: r.secs).line
    rec = stock.query_tuning_record(tdb.workloads[0].mod, target, "main")
    assert tvm_ffi.structural_hash(rec.as_measure_candidate().sch.mod) == by_line[fastest_stored]
    default = next(r.line for r in tdb.records if not r.searched)
    for winner in sorted(by_line):  # make each record in turn the side-by-side winner
        doc = json.loads((tuned.db / VERIFIED).read_text())
        doc["tasks"][0]["records"] = {str(n): [1e-6 if n == winner else 2e-6] * 3 for n in by_line}
        (db / VERIFIED).write_text(json.dumps(doc))
        # the default schedule winning means: no record, today's default rule schedules the task
        want = None if winner == default else by_line[winner]
        assert _query(database.open_database(db, target), target) == want
    (db / VERIFIED).unlink()  # without the file: the fastest stored time, as in stock TVM
    want = None if fastest_stored == default else by_line[fastest_stored]
    assert _query(database.open_database(db, target), target) == want
    # the stored default is no longer replayed: without any file, make it the fastest stored
    lines = (db / RECORDS).read_text().splitlines()
    recs = [json.loads(ln) for ln in lines]
    for i, r in enumerate(recs):
        r[1][1] = [1e-7] if i + 1 == default else [5e-3]
    (db / RECORDS).write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert _query(database.open_database(db, target), target) is None
    assert ms.database.JSONDatabase(work_dir=str(db), allow_missing=False).query_tuning_record(
        tdb.workloads[0].mod, target, "main") is not None  # stock TVM still replays it


def test_verification_with_one_surviving_candidate_saves_nothing(tuned, tmp_path):
    """When only one of a task's candidates builds, there is nothing to compare: no entry is
    written (it would make compile --db apply that record and hide the others)."""
    from tvm.s_tir import meta_schedule as ms

    from accelc.schedules.tuning import database, driver, load_intrinsics
    from accelc.targets import cpu

    load_intrinsics("llvm")
    target = cpu.host_target()
    db = tmp_path / "db"
    shutil.copytree(tuned.db, db)
    (db / VERIFIED).unlink()
    tdb = database.open_database(db, target)
    real = driver.components("cpu", target)

    class OneBuilds:
        def build(self, inputs):
            out = real["builder"].build(inputs[:1])
            return out + [ms.builder.BuilderResult(None, "refused by the test") for _ in inputs[1:]]

    task = driver.Task(name=TASK, mod=tdb.workloads[0].mod, weight=1, flops=1.0)
    comps = {**real, "builder": OneBuilds()}
    assert driver.verify_best([task], tdb, target, comps, log=lambda _: None, rounds=1) == []
    assert not (db / VERIFIED).exists() and not tdb.verified
    # with every candidate built, the entry is written
    entries = driver.verify_best([task], tdb, target, real, log=lambda _: None, rounds=1)
    assert len(entries) == 1 and len(entries[0].secs) == 4 and (db / VERIFIED).exists()


def test_a_default_older_than_todays_rules_is_measured_again_and_verified(tuned, tmp_path, capsys, monkeypatch):
    """When the rules change after tuning, the stored default is not what compile does without a
    record: re-running tune (no new trials) measures today's default, appends it, and verifies it
    side by side against the best searched records; nothing stored is lost."""
    import tvm_ffi

    from accelc.schedules.tuning import database, driver, load_intrinsics
    from accelc.targets import cpu

    load_intrinsics("llvm")
    db = tmp_path / "db"
    shutil.copytree(tuned.db, db)
    before = (db / RECORDS).read_bytes()
    old_default = next(r.line for r in database.open_database(db, cpu.host_target()).records if not r.searched)
    rules = driver._cpu_default_schedule

    def improved_rules(mod, target, replayable=False):  # "today's" rules: one more (harmless) loop
        sch = rules(mod, target, replayable)
        sch.add_unit_loop(sch.get_child_blocks(sch.get_sblock("root"))[0])
        return sch

    monkeypatch.setattr(driver, "_cpu_default_schedule", improved_rules)
    rc, out, err = run_main(capsys, "tune", tuned.model, "--db", db, *SMALL)
    assert rc == 0, err
    assert "1 task(s) were tuned against an older default schedule" in out and "measured 0 new" in out
    after = (db / RECORDS).read_bytes()
    assert after.startswith(before) and after.count(b"\n") == before.count(b"\n") + 1
    tdb = database.open_database(db, cpu.host_target())
    new = tdb.records[-1]
    assert not new.searched and math.isfinite(new.secs)
    wkl = tdb.workloads[0].mod
    want = driver.as_stored(improved_rules(wkl, cpu.host_target(), replayable=True), wkl, cpu.host_target())
    assert tvm_ffi.structural_equal(new.tvm.as_measure_candidate().sch.mod, want)
    ver = tdb.verified[0]
    assert new.line in ver.secs and old_default not in ver.secs and len(ver.secs) == 4
    # a second run finds nothing stale, measures and appends nothing
    rc, out, err = run_main(capsys, "tune", tuned.model, "--db", db, *SMALL)
    assert rc == 0, err
    assert "older default" not in out and (db / RECORDS).read_bytes() == after
    monkeypatch.setattr(driver, "_cpu_default_schedule", rules)  # and the old rules: stale again
    assert [t.name for t in driver.stale_defaults([driver.Task(TASK, tdb.workloads[0].mod, 1, 1.0)], tdb,
                                                  cpu.host_target(), {"default_schedule": rules})] == [TASK]
    assert driver.stale_defaults([driver.Task(TASK, tdb.workloads[0].mod, 1, 1.0)], tdb, cpu.host_target(),
                                 {"default_schedule": improved_rules}) == []


def test_padded_gemm_default_is_stored_replayable_and_verified_as_compiled(tmp_path):
    """A GEMM whose rows pad the register tile: the Matmul rule clamps the padding rows' loads
    after scheduling (not a schedule primitive), so the stored default is the schedule's trace
    (stock TVM replays it: the guarded load), while its time and its side-by-side verification
    are those of the real default, the one ``compile`` uses. Before, no default was stored for
    such tasks and ``compile --db`` applied the best searched record even when slower."""
    import tvm_ffi

    from accelc.compiler.frontend import import_onnx
    from accelc.schedules.tuning import database, driver, load_intrinsics
    from accelc.targets import cpu

    load_intrinsics("llvm")
    target = cpu.host_target()
    comps = driver.components("cpu", target)
    tasks = comps["tasks"](import_onnx(mlp_model(batch=37)).mod)
    task = next(t for t in tasks if "matmul_add_relu" in t.name)
    real = comps["default_schedule"](task.mod, target).mod
    rep = comps["replayable_default"](task.mod, target).mod
    assert not tvm_ffi.structural_equal(real, rep), "batch 37 should pad the Matmul rule's rows"
    assert "T.min(" in real.script() and "T.min(" not in rep.script()
    tdb = database.open_database(tmp_path / "db", target, create=True)
    try:
        driver.measure_defaults([task], tdb, target, comps)
        tdb.reload_records()
        assert task.has_default and len(tdb.records) == 1 and not tdb.records[0].searched
        stored = driver.as_stored(comps["replayable_default"](task.mod, target), task.mod, target)
        assert tvm_ffi.structural_equal(tdb.records[0].tvm.as_measure_candidate().sch.mod, stored)
        built = []

        class Spy:  # records what the verification builds, then builds it
            def build(self, inputs):
                built.extend(i.mod for i in inputs)
                return comps["builder"].build(inputs)

        from tvm.s_tir import meta_schedule as ms

        search = comps["replayable_default"](task.mod, target)  # a "searched" record: the guarded one
        search.enter_postproc()  # as MetaSchedule's search marks its traces

        args = ms.arg_info.ArgInfo.from_entry_func(search.mod, remove_preproc=True)
        tdb.db.commit_tuning_record(ms.database.TuningRecord(search.trace, tdb.db.commit_workload(task.mod),
                                                             [1.0], target, args))
        tdb.sync(1)
        entries = driver.verify_best([task], tdb, target, {**comps, "builder": Spy()}, log=lambda _: None, rounds=1)
        assert len(entries) == 1 and len(built) == 2
        # the default is timed as compile runs it (clamped), the searched record as stored
        assert tvm_ffi.structural_equal(built[0], real) and tvm_ffi.structural_equal(built[1], stored)
    finally:
        tdb.close()


def test_records_of_a_workload_the_search_committed_are_read_back(tuned, tmp_path):
    """A task without a stored default gets its workload from the search (MetaSchedule commits
    it); re-reading the records after the search must know that workload."""
    import tvm
    from tvm import te
    from tvm.s_tir import meta_schedule as ms

    from accelc.schedules.tuning import database, load_intrinsics
    from accelc.targets import cpu

    load_intrinsics("llvm")
    target = cpu.host_target()
    db = tmp_path / "db"
    shutil.copytree(tuned.db, db)
    tdb = database.open_database(db, target, create=True)
    try:
        a = te.placeholder((4, 4), name="a")
        mod = tvm.IRModule({"main": te.create_prim_func([a, te.compute((4, 4), lambda i, j: a[i, j] + 1.0)])})
        n = len(tdb.workloads)
        sch = tvm.s_tir.Schedule(mod)
        tdb.db.commit_tuning_record(ms.database.TuningRecord(
            sch.trace, tdb.db.commit_workload(mod), [1e-6], target, ms.arg_info.ArgInfo.from_prim_func(mod["main"])))
        tdb.sync(1)
        tdb.reload_records()
        assert len(tdb.workloads) == n + 1 and tdb.records[-1].workload == n
        assert tdb.workload_index(mod) == n
    finally:
        tdb.close()


def test_a_task_verified_warm_is_verified_again_flushed(tuned, tmp_path, capsys):
    """A verification written before the CPU's was cache-flushed (no "cache" field: the warm,
    back-to-back timing, whose winners made bert-encoder slower in the model) is read, applied,
    and replaced on the next ``accelc tune`` of the database, with no new trial; the runner that
    replaces it flushes the caches before each single timed call."""
    from accelc.schedules.tuning import database, driver
    from accelc.targets import cpu

    db = tmp_path / "db"
    shutil.copytree(tuned.db, db)
    doc = json.loads((db / VERIFIED).read_text())
    for t in doc["tasks"]:
        del t["cache"]
    (db / VERIFIED).write_text(json.dumps(doc))
    old = {int(k): v for k, v in doc["tasks"][0]["records"].items()}
    tdb = database.open_database(db, cpu.host_target())
    assert tdb.verified[0].cache == "warm" and tdb.verified[0].secs == old
    records = (db / RECORDS).read_bytes()
    rc, out, err = run_main(capsys, "tune", tuned.model, "--db", db, *SMALL)
    assert rc == 0, err
    assert "verifying 1 task(s): 12 side-by-side runs" in out and "measured 0 new" in out
    entry = json.loads((db / VERIFIED).read_text())["tasks"][0]
    assert entry["cache"] == "flushed" and {int(k) for k in entry["records"]} == set(old)
    assert all(len(v) == 30 for v in entry["records"].values())
    assert (db / RECORDS).read_bytes() == records
    rc, out, err = run_main(capsys, "tune", tuned.model, "--db", db, *SMALL)  # now current: kept
    assert rc == 0 and "verifying" not in out, err
    ev = driver.components("cpu", cpu.host_target())["verify_runner"]().evaluator_config
    assert (ev.number, ev.repeat, ev.enable_cpu_cache_flush) == (1, 10, True)
    doc["tasks"][0]["cache"] = "lukewarm"
    (db / VERIFIED).write_text(json.dumps(doc))
    with pytest.raises(Exception, match="unknown cache state 'lukewarm'"):
        database.open_database(db, cpu.host_target())


@pytest.mark.parametrize("case", ["not json", "unknown line", "other workload"])
def test_corrupt_verification_is_refused_untouched(tuned, tmp_path, capsys, case):
    db = tmp_path / "db"
    shutil.copytree(tuned.db, db)
    doc = json.loads((db / VERIFIED).read_text())
    if case == "not json":
        text = "{\"format\": "
    else:
        if case == "unknown line":
            doc["tasks"][0]["records"]["99"] = [1e-6]
        else:
            doc["tasks"][0]["workload_hash"] = "12345"
        text = json.dumps(doc)
    (db / VERIFIED).write_text(text)
    rc, _, err = run_main(capsys, "compile", tuned.model, "--db", db, "-o", tmp_path / "m.so")
    words = {"not json": "not valid JSON", "unknown line": "record line 99",
             "other workload": "not the one it was written for"}[case]
    assert_one_line_error(rc, err, str(db / VERIFIED), words)
    assert (db / VERIFIED).read_text() == text and not (tmp_path / "m.so").exists()


def test_interrupted_append_is_repaired_and_nothing_is_lost(tuned, tmp_path, capsys):
    from accelc.schedules.tuning import database
    from accelc.targets import cpu

    db = tmp_path / "db"
    shutil.copytree(tuned.db, db)
    good = (db / RECORDS).read_bytes()
    last = good.splitlines()[-1]
    (db / RECORDS).write_bytes(good + last[:100])  # a record cut short by a kill mid-write
    rc, _, err = run_main(capsys, "compile", tuned.model, "--db", db, "-o", tmp_path / "m.so")
    assert_one_line_error(rc, err, f"{db / RECORDS} line 5", "incomplete last line")
    assert (db / RECORDS).read_bytes() == good + last[:100]  # compile never writes
    rc, out, err = run_main(capsys, "tune", tuned.model, "--db", db, *SMALL)
    assert rc == 0, err
    assert f"note: {RECORDS} line 5: set aside an incomplete line" in out
    assert "(3 already in" in out and "measured 0 new" in out  # the budget was already reached
    assert (db / RECORDS).read_bytes() == good
    assert (db / (RECORDS + ".torn")).read_bytes() == last[:100] + b"\n"
    (db / RECORDS).write_bytes(good[:-1])  # a whole record whose newline was never written
    tdb = database.open_database(db, cpu.host_target(), create=True)
    assert tdb.repaired == [f"{RECORDS} line 4: restored the newline an interrupted write left out"]
    assert (db / RECORDS).read_bytes() == good and len(tdb.records) == 4


def test_search_skips_candidates_already_in_the_database():
    """EvolutionarySearch alone would propose them again; the wrapper drops them before building,
    and the hash it compares is the one a stored record replays to."""
    import tvm_ffi
    from tvm.s_tir import meta_schedule as ms

    from accelc.compiler.frontend import import_onnx
    from accelc.schedules.tuning import driver, load_intrinsics
    from accelc.targets import cpu

    load_intrinsics("llvm")
    target = cpu.host_target()
    task = next(t for t in driver.relax_tasks(import_onnx(mlp_model(batch=8)).mod, target,
                                              driver._cpu_front_passes(target), driver._not_a_named_kernel)
                if TASK in t.name)
    skip_measured, _ = driver._classes()

    def propose(known):
        stats = {"skipped": 0}
        strategy = skip_measured(4, 4, set(known), stats)
        ctx = ms.TuneContext(mod=task.mod, target=target, space_generator="post-order-apply",
                             search_strategy=strategy, rand_state=5, num_threads=1)
        db = ms.database.MemoryDatabase()
        strategy.pre_tuning(4, 4, ctx.space_generator.generate_design_space(task.mod), db,
                            ms.cost_model.RandomModel(seed=1))
        return strategy.generate_measure_candidates(), stats, db

    first, stats, db = propose(set())
    hashes = [tvm_ffi.structural_hash(c.sch.mod) for c in first]
    assert len(first) == 4 and len(set(hashes)) == 4 and stats["skipped"] == 0
    wkl = db.commit_workload(task.mod)
    for c, h in zip(first, hashes):
        rec = ms.database.TuningRecord(c.sch.trace, wkl, [1e-6], target, c.args_info)
        assert tvm_ffi.structural_hash(rec.as_measure_candidate().sch.mod) == h
    again, stats, _ = propose(hashes[:2])  # same seed: the same proposals, two of them known
    assert stats["skipped"] == 2
    assert [tvm_ffi.structural_hash(c.sch.mod) for c in again] == hashes[2:]


def test_plan_splits_trials_by_calls_times_default_latency():
    from accelc.schedules.tuning.driver import Task, plan_trials

    tasks = [Task("a", None, 1, 1e6, before=6e-6), Task("b", None, 2, 1e6, before=1e-6),
             Task("c", None, 1, 1e3, before=1e-6)]
    plan_trials(tasks, 10)
    assert [t.planned for t in tasks] == [7, 2, 1]  # shares 6.67, 2.22, 1.11
    tasks[0].flops, tasks[1].flops, tasks[2].before = 6e6, 4e6, None  # 1 and 4 TFLOP/s; c unmeasured:
    plan_trials(tasks, 100)  # its 1e3 FLOP at the median 2.5 TFLOP/s take 0.4 ns
    assert [t.planned for t in tasks] == [75, 25, 0]  # shares 74.996, 24.999, 0.005
    for t in tasks:
        t.before = None  # nothing measured: by calls × FLOPs
    plan_trials(tasks, 30)
    assert [t.planned for t in tasks] == [13, 17, 0]  # 6e6 : 8e6 : 1e3


def test_usage_and_target_errors(tuned, tmp_path, capsys):
    from accelc.schedules.tuning import database
    from accelc.targets import cpu

    with pytest.raises(SystemExit) as done:
        run_main(capsys, "tune", "--help")
    assert done.value.code == 0
    usage = capsys.readouterr().out
    assert all(opt in usage for opt in ("--trials", "--db", "--cost-model", "--rpc", "--tasks"))
    rc, _, err = run_main(capsys, "tune", tuned.model, "-t", "tpu", "--db", tmp_path / "x")
    assert_one_line_error(rc, err, "unknown target 'tpu'")
    from accelc.targets import cuda

    if cuda.local_arch() is None:  # CUDA tuning measures on a GPU: here only through --rpc
        rc, _, err = run_main(capsys, "tune", tuned.model, "-t", "cuda", "--db", tmp_path / "x")
        assert_one_line_error(rc, err, "no CUDA device found: pass --arch")
        rc, _, err = run_main(capsys, "tune", tuned.model, "-t", "cuda", "--arch", "sm_90", "--db", tmp_path / "x")
        assert_one_line_error(rc, err, "give --rpc TRACKER:PORT:KEY")
    rc, _, err = run_main(capsys, "tune", tuned.model, "--db", tmp_path / "no" / "db")
    assert_one_line_error(rc, err, "does not exist")
    rc, _, err = run_main(capsys, "tune", tuned.model, "--rpc", "localhost:x", "--db", tmp_path / "x")
    assert_one_line_error(rc, err, "HOST:PORT:KEY")
    rc, _, err = run_main(capsys, "tune", tuned.model, "--cost-model", "random", "--cost-model-warm-start",
                          tuned.model, "--db", tmp_path / "x")
    assert_one_line_error(rc, err, "needs --cost-model xgb")
    rc, _, err = run_main(capsys, "tune", tuned.model, "-t", "sim", "--cost-model-warm-start", "bundled",
                          "--db", tmp_path / "x")
    assert_one_line_error(rc, err, "it needs -t cpu and --cost-model xgb")
    rc, _, err = run_main(capsys, "tune", tuned.model, "--tasks", "no_such_task", "--db", tmp_path / "x")
    assert_one_line_error(rc, err, "no tunable tasks matching --tasks no_such_task")
    assert not (tmp_path / "x").exists()
    busy = database.open_database(tmp_path / "busy", cpu.host_target(), create=True)  # holds the lock
    rc, _, err = run_main(capsys, "tune", tuned.model, "--db", tmp_path / "busy", *SMALL)
    assert_one_line_error(rc, err, "is being tuned by another process")
    busy.close()


@pytest.fixture()
def rpc_tracker():
    """A TVM RPC tracker and one server registered under a key, on loopback."""
    pytest.importorskip("tornado")  # the tracker needs it
    from tvm.rpc.server import Server
    from tvm.rpc.tracker import Tracker

    base = random.randint(20000, 40000)
    tracker = Tracker("127.0.0.1", port=base, port_end=base + 200, silent=True)
    server = Server("127.0.0.1", port=base + 300, port_end=base + 500, tracker_addr=("127.0.0.1", tracker.port),
                    key="accelc-test", silent=True)
    time.sleep(1.0)  # the server registers with the tracker
    yield f"127.0.0.1:{tracker.port}"
    server.terminate()
    tracker.terminate()


def test_rpc_runner_measures_a_task_on_loopback(rpc_tracker, tmp_path):
    from tvm.s_tir import meta_schedule as ms

    from accelc.compiler.frontend import import_onnx
    from accelc.errors import TargetError
    from accelc.schedules.tuning import database, driver, load_intrinsics
    from accelc.targets import cpu

    load_intrinsics("llvm")
    target = cpu.host_target()
    comps = driver.components("cpu", target, rpc=f"{rpc_tracker}:accelc-test")
    assert isinstance(comps["runner"], ms.runner.RPCRunner)
    tasks = [t for t in comps["tasks"](import_onnx(mlp_model(batch=8)).mod) if TASK in t.name]
    tdb = database.open_database(tmp_path / "db", target, create=True)
    driver.measure_defaults(tasks, tdb, target, comps)  # built here, run by the RPC server
    assert 0 < tasks[0].before < 1e-2 and tasks[0].has_default
    assert [r.secs for r in tdb.records] == [tasks[0].before]
    with pytest.raises(TargetError, match="no RPC server with key 'nokey'"):
        driver.components("cpu", target, rpc=f"{rpc_tracker}:nokey")


@pytest.mark.slow
def test_tune_over_rpc(rpc_tracker, tuned, tmp_path, capsys):
    rc, out, err = run_main(capsys, "tune", tuned.model, "--db", tmp_path / "db", "--trials", "2", "--batch", "2",
                            "--tasks", TASK, "--cost-model", "random", "--no-progress",
                            "--rpc", f"{rpc_tracker}:accelc-test")
    assert rc == 0, err
    recs = [json.loads(ln) for ln in lines(tmp_path / "db" / RECORDS)]
    assert len(recs) == 3
    assert all(math.isfinite(s) and 0 < s < 1e-2 for r in recs for s in r[1][1])


def test_sim_target_tunes_the_accelerator_layers(tuned, tmp_path, capsys):
    pytest.importorskip("accelc.targets.sim.tuning")
    rc, _, err = run_main(capsys, "tune", tuned.model, "-t", "sim", "--db", tmp_path / "x")
    assert_one_line_error(rc, err, "no tunable tasks for sim")
    rc, out, err = run_main(capsys, "tune", tuned.model, "-t", "sim", "--passes", "int8", "--trials", "2",
                            "--batch", "2", "--tasks", "gemm_8x16x32", "--db", tmp_path / "db", "--no-progress",
                            "--cost-model", "random")
    assert rc == 0, err
    recs = [json.loads(ln) for ln in lines(tmp_path / "db" / RECORDS)]
    assert len(recs) == 3 and all(r[1][2]["keys"][0] == "accel-sim" for r in recs)
    assert all(0 < s < 1 for r in recs for s in r[1][1])  # simulated seconds: cycles / clock
    assert "sim_gemm_8x16x32" in out
    rc, out, err = run_main(capsys, "compile", tuned.model, "-t", "sim", "--passes", "int8", "--db", tmp_path / "db",
                            "-o", tmp_path / "m.so")
    assert rc == 0, err


@pytest.mark.slow
def test_cost_model_is_saved_and_the_next_run_warm_starts(tuned, tmp_path, capsys):
    """The xgb model trained during a run is saved in the database directory; the next run on it
    starts from it and adds its own measurements (sim target: cheap to measure)."""
    pytest.importorskip("accelc.targets.sim.tuning")
    from accelc.schedules.tuning.cost_model import AccelcXGBModel

    args = ["tune", tuned.model, "-t", "sim", "--passes", "int8", "--tasks", "gemm_8x16x32", "--batch", "2",
            "--db", tmp_path / "db", "--no-progress"]
    saved = tmp_path / "db" / "cost_model-xgb.json"
    for trials, n in ((2, 2), (4, 4)):
        rc, _, err = run_main(capsys, *args, "--trials", trials)
        assert rc == 0, err
        model = AccelcXGBModel("sim")
        model.load(str(saved))
        assert model.n_records == n


def test_bundled_warm_start_trains_once_on_the_bundled_records(tmp_path, monkeypatch):
    """``--cost-model-warm-start bundled``: a model of every bundled task's records (here the
    test data's three tasks), trained once and then read from the cache."""
    from pathlib import Path

    from tvm.s_tir.meta_schedule.utils import shash2hex

    from accelc.schedules.tuning import dataset
    from accelc.schedules.tuning.cost_model import AccelcXGBModel

    data = Path(__file__).parent / "data" / "costmodel"
    monkeypatch.setattr(dataset, "BUNDLED", (data,))
    monkeypatch.setattr(dataset, "CACHE", tmp_path / "cache")
    said = []
    path = dataset.bundled_warm_start(said.append)
    assert path.parent == tmp_path / "cache" and path.is_file() and len(said) == 1
    model = AccelcXGBModel("llvm", warm_start=str(path))
    tasks = dataset.load_with_features(data)
    assert set(model.groups) == {shash2hex(t.context.mod) for t in tasks}
    assert model.n_records == sum(len(t.latency) for t in tasks)
    stamp = path.stat().st_mtime_ns
    assert dataset.bundled_warm_start(said.append) == path and len(said) == 1  # cached: not trained again
    assert path.stat().st_mtime_ns == stamp


def test_bundled_warm_start_is_not_trained_for_a_database_that_cannot_be(tuned, tmp_path, capsys, monkeypatch):
    """The bundled model takes about a minute to train on first use: a bad ``--db`` is reported
    before that, not after."""
    from accelc.schedules.tuning import dataset

    monkeypatch.setattr(dataset, "bundled_warm_start", lambda *a: pytest.fail("trained before the --db check"))
    rc, _, err = run_main(capsys, "tune", tuned.model, "--cost-model-warm-start", "bundled",
                          "--db", tmp_path / "no" / "db")
    assert_one_line_error(rc, err, "does not exist")


def test_written_out_kernels_are_no_tuning_tasks():
    """The fused attention and the softmax rows are written-out kernels (``tirx.is_scheduled``):
    their search space is the kernel itself, so ``accelc tune`` must not spend trials on them.
    (The filter once read the IRModule's attributes instead of the function's: BERT's fused
    attention drew 57 of 256 trials and measured nothing.)"""
    from accelc.compiler.frontend import import_onnx
    from accelc.schedules.tuning import driver
    from accelc.targets import cpu
    from accelc.tests.util import attention_model

    target = cpu.host_target()
    mod = import_onnx(attention_model(n=20, d_model=32, heads=2, mask="key")).mod
    names = [t.name for t in driver.relax_tasks(mod, target, driver._cpu_front_passes(target),
                                                driver._not_a_named_kernel)]
    assert names and not any(n.startswith(("attention_fused", "softmax_rows")) for n in names), names
    assert any("matmul" in n for n in names), names  # the projections still are
    unfused = [t.name for t in driver.relax_tasks(mod, target, driver._cpu_front_passes(target, fast_math=False),
                                                  driver._not_a_named_kernel)]
    assert any("softmax" in n for n in unfused), unfused  # exact math: attention stays searchable


class _FakeModel:
    """A compiled model whose latency is given (``model_check``'s timing, made deterministic)."""

    def __init__(self, ms):
        self.ms = ms

    def benchmark(self, repeat=3, warmup=1):
        from types import SimpleNamespace

        return SimpleNamespace(median_ms=self.ms)


def _with_searched_winner(tuned, tmp_path):
    """A copy of the tuned database whose verification makes a searched record the winner."""
    db, target, tdb = _db_copy(tuned, tmp_path)
    winner = next(r.line for r in tdb.records if r.searched)
    doc = json.loads((db / VERIFIED).read_text())
    doc["tasks"][0]["records"] = {str(r.line): [1e-6 if r.line == winner else 2e-6] * 3 for r in tdb.records}
    (db / VERIFIED).write_text(json.dumps(doc))
    return db, target, winner


@pytest.mark.parametrize("model_ms, kept", [(0.9, True), (0.998, False), (1.2, False)])
def test_model_check_keeps_a_searched_winner_only_if_the_model_gets_faster(tuned, tmp_path, model_ms, kept):
    """The winner is timed inside the model against the model without it; dropped (the task
    left to the default rules by ``compile --db``) unless the model is faster by more than
    0.5%, and the verdict is stored for the winner it judged, so the next run does not redo
    it and a later re-verification with another winner does not inherit it."""
    from accelc.schedules.tuning import database, driver

    db, target, winner = _with_searched_winner(tuned, tmp_path)
    tdb = database.open_database(db, target)
    assert tdb.searched_winners() == [0] and _query(tdb, target) is not None
    task = driver.Task(TASK, tdb.workloads[0].mod, 1, 1.0)
    built = []

    def build(without):
        built.append(set(without))
        return _FakeModel(1.0 if 0 in without else model_ms)

    (verdict,) = driver.model_check([task], tdb, build, log=lambda *_: None)
    assert built == [{0}, set()]  # the model without the winner, then with it
    assert verdict["record"] == winner and verdict["kept"] is kept and verdict["ratio"] == pytest.approx(model_ms)
    again = database.open_database(db, target)  # persisted, and honoured by compile --db
    assert again.verified[0].in_model == {"record": winner, "ratio": pytest.approx(model_ms), "kept": kept}
    assert (_query(again, target) is not None) is kept
    assert driver.model_check([task], again, build, log=lambda *_: None) == []  # judged already
    doc = json.loads((db / VERIFIED).read_text())  # re-verified: the default wins now
    default = next(r.line for r in again.records if not r.searched)
    doc["tasks"][0]["records"] = {str(n): [1e-6 if int(n) == default else 2e-6] * 3 for n in doc["tasks"][0]["records"]}
    (db / VERIFIED).write_text(json.dumps(doc))
    assert _query(database.open_database(db, target), target) is None


def test_model_check_builds_the_real_model_and_a_bad_verdict_is_refused(tuned, tmp_path, capsys):
    """With the real builder (the model as ``compile --db`` makes it, minus some workloads) the
    check runs end to end; a verification file whose verdict names no timed record is corrupt."""
    from accelc.compiler.frontend import import_model
    from accelc.schedules.tuning.database import DatabaseError
    from accelc.schedules.tuning import database, driver

    db, target, winner = _with_searched_winner(tuned, tmp_path)
    tdb = database.open_database(db, target)
    imported = import_model(str(tuned.model))
    build = driver._model_builder(imported, imported.mod, tdb, True, None)
    (verdict,) = driver.model_check([driver.Task(TASK, tdb.workloads[0].mod, 1, 1.0)], tdb, build,
                                    log=lambda *_: None, rounds=3)
    assert verdict["record"] == winner and verdict["ratio"] > 0
    doc = json.loads((db / VERIFIED).read_text())
    doc["tasks"][0]["in_model"]["record"] = 10_000
    (db / VERIFIED).write_text(json.dumps(doc))
    with pytest.raises(DatabaseError, match="malformed in-model check"):
        database.open_database(db, target)
    rc, _, err = run_main(capsys, "compile", tuned.model, "--db", db, "-o", tmp_path / "m.so")
    assert_one_line_error(rc, err, f"{db / VERIFIED}", "malformed in-model check")
    assert not (tmp_path / "m.so").exists()


def test_xgb_asm_reranks_by_assembly_and_saves_its_model(tuned, tmp_path, capsys):
    """``--cost-model xgb-asm``: once the model has trained on the first batch, every batch is
    the best of four batches' proposals by their assembly; its model (with the assembly group)
    is saved beside the database, and it is a CPU model only."""
    from accelc.schedules.tuning.cost_model import AccelcXGBModel

    db = tmp_path / "db"
    args = ["tune", tuned.model, "--db", db, "--trials", "6", "--batch", "2", "--tasks", TASK,
            "--cost-model", "xgb-asm", "--no-progress", "--no-model-check"]
    rc, out, err = run_main(capsys, *args)
    assert rc == 0, err
    assert "by their assembly" in out, out  # batches 2 and 3: up to 8 proposals each
    assert len(lines(db / RECORDS)) == 7  # the default schedule + 6 searched
    model = AccelcXGBModel(asm=True)
    model.load(str(db / "cost_model-xgb-asm.json"))
    assert model.n_records == 6 and model.booster is not None
    rc, _, err = run_main(capsys, "tune", tuned.model, "-t", "sim", "--passes", "int8", "--db", tmp_path / "sim",
                          "--cost-model", "xgb-asm", "--trials", "2")
    assert_one_line_error(rc, err, "xgb-asm", "-t cpu")


def test_cached_features_and_bundled_model_are_per_host_caches(tmp_path, monkeypatch):
    """The cache-traffic features are sized by the host's caches: features and a bundled model
    cached on one machine are not handed back on another (a shared home, a copied image); nor a
    bundled model trained with other parameters."""
    from pathlib import Path

    import numpy as np

    from accelc.schedules.tuning import cost_model, dataset, features

    data = Path(__file__).parent / "data" / "costmodel"
    monkeypatch.setattr(dataset, "BUNDLED", (data,))
    monkeypatch.setattr(dataset, "CACHE", tmp_path / "cache")
    said = []
    monkeypatch.setattr(features, "host_caches", lambda: (48 << 10, 2 << 20, 32 << 20))
    first = dataset.bundled_warm_start(said.append)
    x_first = [t.x for t in dataset.load_with_features(data)]
    monkeypatch.setattr(features, "host_caches", lambda: (16 << 10, 128 << 10, 1 << 20))
    other = dataset.bundled_warm_start(said.append)
    x_other = [t.x for t in dataset.load_with_features(data)]
    assert other != first and len(said) == 2 and first.is_file()  # trained again, the first kept
    assert len(list((tmp_path / "cache" / "features").iterdir())) == 2 * len(x_first)
    assert any(not np.array_equal(a, b) for a, b in zip(x_first, x_other))  # recomputed, not reused
    monkeypatch.setattr(cost_model, "DEFAULT_ROUNDS", 50)  # other training parameters: trained again
    assert dataset.bundled_warm_start(said.append) not in (first, other) and len(said) == 3
