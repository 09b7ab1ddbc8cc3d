"""Tuning databases: a stock MetaSchedule ``JSONDatabase`` directory, checked before it is trusted.

``accelc tune`` writes, and ``accelc compile --db`` reads, the two JSON-lines files stock TVM
uses (``database_workload.json``, ``database_tuning_record.json``), so ``JSONDatabase(work_dir=…)``
reads them too. TVM's own loader trusts whatever it finds: a garbled line aborts with an IR dump,
and records tuned for another CPU are applied silently. ``open_database`` first reads every line
itself and refuses, with one line naming the file and line, a database that is

- corrupt: a line that is not JSON, not a MetaSchedule workload or record, or whose trace TVM
  cannot replay; a record pointing at a workload that is not there;
- foreign: records tuned for another target kind, or for this target (same keys) on another
  machine (CPU, features, cores, model), or written by another TVM release (its major.minor,
  from the ``tvm_version`` each workload carries).

A refused database is never modified. Workloads of other models are welcome, and so are records
of another target of the same kind with other keys (the sim accelerator's workloads next to the
CPU's, for ``-t sim``): one database may serve many models, as in TVM. That is safe because TVM
applies a record to a workload only, and each target family's workloads are its own.

Beside the two files, ``accelc tune`` writes ``accelc_verified.json``: for each task, its
default schedule and best searched records timed again, side by side in one runner call, after
the search (a record's time from the search was taken once, maybe while the machine was busy, and
a lucky or unlucky sample misranks records). ``compile --db`` applies, for such a task, the
fastest record of that side-by-side timing (on the CPU each timed call follows a flush of its
weights and outputs from the caches, as inside a model: ``"cache": "flushed"``; files without
the field were timed warm, and ``accelc tune`` verifies such tasks again); stock TVM ignores the
file and takes the fastest stored time. A verification naming records that are not there is corrupt, and refused.

One case is repaired instead: a last line without its newline is what an interrupted append leaves
(TVM writes a record, then the newline). When opened for tuning, a complete last record gets its
newline back; an incomplete one (never a measured record) is moved to ``FILE.torn`` and cut off.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import AccelcError, UsageError

WORKLOADS, RECORDS = "database_workload.json", "database_tuning_record.json"
VERIFIED = "accelc_verified.json"  # side-by-side re-timings of each task's best records
LOCK = ".accelc-tune.lock"  # held (flock) by the one process tuning into the directory
#: Target fields that must agree, between records and the target of this run with the same keys.
TARGET_FIELDS = ("kind", "mcpu", "mattr", "num-cores", "keys", "arch", "model")
FAILED_SECS = 1e9  # MetaSchedule stores failed candidates with run_secs 1e10


#: Run on each record's trace (its JSON) before TVM replays it: a target whose schedules
#: tensorize onto intrinsics it registers lazily registers them here (see ``register_trace_hook``).
_TRACE_HOOKS: list = []


def register_trace_hook(hook) -> None:
    """Have ``hook(trace_json)`` run before every record's trace is replayed (idempotent)."""
    if hook not in _TRACE_HOOKS:
        _TRACE_HOOKS.append(hook)


class DatabaseError(AccelcError):
    """A tuning database that is corrupt, or belongs to another target or TVM release."""


@dataclass
class Record:
    """One line of the record file: which workload, mean measured seconds (inf: failed), and
    whether a search produced it (its trace passed MetaSchedule's postprocessors) or it is a
    task's default schedule that ``accelc tune`` measured and stored."""

    line: int
    workload: int
    secs: float
    searched: bool = True
    tvm: object = None  # ms.database.TuningRecord


@dataclass
class Verified:
    """One task's records timed again side by side: record line → all re-timed samples
    (seconds); the winner has the lowest median."""

    workload: int
    secs: dict  # {line: [seconds, ...]}
    cache: str = "warm"  # "flushed": each timed call after a flush of its non-first arguments
    #: the searched winner timed inside the whole model against the default (``accelc tune``'s
    #: model check): {"record": line, "ratio": model time with it / without, "kept": bool}
    in_model: dict | None = None

    def model_kept(self) -> bool | None:
        """The model check's verdict on the current winner: kept, dropped, or None when it was
        not judged (never, or a record that is no longer the winner)."""
        if self.in_model and self.in_model["record"] == self.winner:
            return self.in_model["kept"]
        return None

    def median(self, line: int) -> float:
        import statistics

        return statistics.median(self.secs[line])

    @property
    def winner(self) -> int:
        return min(self.secs, key=self.median)


@dataclass
class TuningDB:
    """An open, validated database: TVM's ``JSONDatabase`` plus the records in file order."""

    path: Path
    db: object  # ms.database.JSONDatabase
    workloads: list  # ms.database.Workload, by index
    records: list[Record] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)  # notes about interrupted appends fixed
    verified: dict = field(default_factory=dict)  # workload index → Verified
    want: dict = field(default_factory=dict)  # the target fields records must agree with
    _synced: int = 0  # bytes of the record file known to be complete and on disk
    _lock: int | None = None  # fd holding LOCK while tuning

    def close(self) -> None:
        """Release the tuning lock (the kernel releases it too if the process dies)."""
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    @property
    def record_file(self) -> Path:
        return self.path / RECORDS

    def workload_index(self, mod) -> int | None:
        """Index of the workload structurally equal to ``mod`` (None if never tuned)."""
        import tvm_ffi

        for i, wkl in enumerate(self.workloads):
            if tvm_ffi.structural_equal(wkl.mod, mod):
                return i
        return None

    def records_of(self, mod) -> list[Record]:
        idx = self.workload_index(mod)
        return [r for r in self.records if r.workload == idx] if idx is not None else []

    def measured_hashes(self, mod) -> set[int]:
        """Structural hashes of the scheduled modules already measured for workload ``mod``."""
        import tvm_ffi

        return {tvm_ffi.structural_hash(rec.as_measure_candidate().sch.mod)
                for rec in self.db.get_all_tuning_records() if tvm_ffi.structural_equal(rec.workload.mod, mod)}

    def commit_default(self, mod, sch, secs: list[float], target) -> None:
        """Store ``sch``, the default schedule of workload ``mod`` measured at ``secs``, as a
        tuning record: ``compile --db`` then never applies a tuned record slower than it."""
        from tvm.s_tir import meta_schedule as ms

        wkl = self.db.commit_workload(mod)
        if self.workload_index(mod) is None:
            self.workloads.append(wkl)
        args = ms.arg_info.ArgInfo.from_entry_func(sch.mod, remove_preproc=True)
        self.db.commit_tuning_record(ms.database.TuningRecord(sch.trace, wkl, secs, target, args))
        self.sync(1)
        self.records.append(Record(len(self.records) + 1, self.workload_index(mod), sum(secs) / len(secs),
                                   searched=False))

    def reload_records(self) -> None:
        """Re-read the record file (records appended by the search since it was opened), and the
        workloads the search committed for tasks that had none yet."""
        for n, obj in _read_lines(self.path / WORKLOADS, False, [], _workload_ok)[len(self.workloads):]:
            self.workloads.append(_parse_workload(self.path / WORKLOADS, n, obj))
        lines = _read_lines(self.record_file, False, [], lambda o: True)
        self.records = [_parse_record(self.record_file, n, obj, self.workloads, self.want) for n, obj in lines]

    def save_verified(self, entries: list[Verified]) -> None:
        """Replace the verification of these entries' workloads (atomically; others are kept)."""
        from ...fileio import atomic_write

        for e in entries:
            self.verified[e.workload] = e
        doc = {"format": "accelc-verified/1", "tasks": [
            {"workload": e.workload, "workload_hash": _workload_hash(self.workloads[e.workload]),
             "cache": e.cache, "records": {str(line): secs for line, secs in e.secs.items()},
             **({"in_model": e.in_model} if e.in_model else {})}
            for e in sorted(self.verified.values(), key=lambda e: e.workload)]}
        text = json.dumps(doc, indent=1)
        atomic_write(self.path / VERIFIED, lambda tmp: Path(tmp).write_text(text))

    def searched_winners(self) -> list[int]:
        """Workloads whose verified winner is a searched record (what ``for_compile`` applies
        beyond the default rules)."""
        return [w for w in sorted(self.verified) if not self._default_wins(w)]

    def for_compile(self, without=()):
        """The database ``compile --db`` applies, a copy in memory: a verified task has only
        its re-timed records, at their re-timed medians, so the side-by-side winner is the one
        applied; a task whose winner is the default schedule (stored when it was tuned) has no
        record at all, so today's default rules schedule it — replaying the stored one would
        pin the default of the accelc that tuned it (a database from before a better rule
        would lose to the new default). ``without``: workloads left to the default rules too."""
        from tvm.s_tir import meta_schedule as ms

        mem = ms.database.MemoryDatabase()
        wkls = [mem.commit_workload(w.mod) for w in self.workloads]
        default_wins = {w for w in range(len(self.workloads)) if self._default_wins(w)} | set(without)
        for r in self.records:
            ver = self.verified.get(r.workload)
            if r.tvm is None or r.workload in default_wins or (ver is not None and r.line not in ver.secs):
                continue
            secs = [ver.median(r.line)] if ver is not None else list(r.tvm.run_secs or [])
            if not secs:
                continue
            mem.commit_tuning_record(ms.database.TuningRecord(r.tvm.trace, wkls[r.workload], secs,
                                                              r.tvm.target, r.tvm.args_info))
        return mem

    def _default_wins(self, workload: int) -> bool:
        """Whether the record compile would apply for ``workload`` is its default schedule:
        the side-by-side winner when verified, else the fastest stored time (stock TVM's pick)."""
        ver = self.verified.get(workload)
        recs = {r.line: r for r in self.records if r.workload == workload and r.tvm is not None}
        if ver is not None:
            if ver.model_kept() is False:
                return True  # the side-by-side winner made the whole model slower
            best = recs.get(ver.winner)
        else:
            finite = [r for r in recs.values() if math.isfinite(r.secs)]
            best = min(finite, key=lambda r: r.secs) if finite else None
        return best is not None and not best.searched

    def sync(self, expect_new: int) -> None:
        """fsync both files and check that exactly ``expect_new`` more complete record lines are
        on disk than at the last sync (a SIGKILL from here on loses nothing measured)."""
        for name in (WORKLOADS, RECORDS):
            fd = os.open(self.path / name, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        with open(self.record_file, "rb") as fh:
            fh.seek(self._synced)
            tail = fh.read()
        lines = tail.count(b"\n")
        if lines != expect_new or (tail and not tail.endswith(b"\n")):
            raise RuntimeError(f"{self.record_file}: expected {expect_new} new complete record line(s) "
                               f"on disk after the batch, found {lines}")
        self._synced += len(tail)


def open_database(path, target, create: bool = False) -> TuningDB:
    """Validate and open the database directory ``path`` for ``target`` (a ``tvm.target.Target``).

    ``create``: open it to tune into: make the directory if it is missing (its parent must
    exist), lock it against a second tuning process, and repair an interrupted last append;
    otherwise the directory must exist and nothing is written.
    """
    from tvm.s_tir import meta_schedule as ms

    path = Path(path)
    if not path.is_dir():
        if not create:
            raise UsageError(f"tuning database {path} does not exist")
        if not path.parent.is_dir():
            raise UsageError(f"cannot create tuning database {path}: {path.parent} does not exist")
        if path.exists():
            raise UsageError(f"tuning database {path} is not a directory")
        path.mkdir()
    if not create and not all((path / f).is_file() for f in (WORKLOADS, RECORDS)):
        raise DatabaseError(f"{path} is not a tuning database (it needs {WORKLOADS} and {RECORDS}; "
                            "`accelc tune` writes them)")
    lock = _lock(path) if create else None
    try:
        repaired: list[str] = []
        wl_lines = _read_lines(path / WORKLOADS, create, repaired, _workload_ok)
        workloads = [_parse_workload(path / WORKLOADS, n, obj) for n, obj in wl_lines]
        want = _target_fields(target)
        rec_lines = _read_lines(path / RECORDS, create, repaired, lambda o: _record_ok(o, len(workloads)))
        records = [_parse_record(path / RECORDS, n, obj, workloads, want) for n, obj in rec_lines]
        verified = _read_verified(path / VERIFIED, workloads, records)
        try:
            db = ms.database.JSONDatabase(work_dir=str(path), allow_missing=create)
        except Exception as err:  # noqa: BLE001 - everything was checked; keep TVM's first line
            raise DatabaseError(f"{path}: TVM cannot load this database: {_first_line(err)}") from None
    except BaseException:
        if lock is not None:
            os.close(lock)
        raise
    out = TuningDB(path, db, workloads, records, repaired, verified, want, _lock=lock)
    out._synced = (path / RECORDS).stat().st_size if (path / RECORDS).exists() else 0
    return out


def _lock(path: Path) -> int:
    import fcntl

    fd = os.open(path / LOCK, os.O_CREAT | os.O_RDWR, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DatabaseError(f"{path} is being tuned by another process right now; wait for it to finish "
                            "or tune into another --db") from None
    return fd


# -- line level ------------------------------------------------------------------------------
def _read_lines(file: Path, repair: bool, notes: list[str], complete) -> list[tuple[int, object]]:
    """``(line number, JSON value)`` for every line; bad JSON is a DatabaseError naming the line."""
    if not file.exists():
        return []
    data = file.read_bytes()
    lines = data.split(b"\n")
    torn = lines.pop()  # b"" when the file ends with a newline
    out = []
    for n, raw in enumerate(lines, 1):
        out.append((n, _loads(file, n, raw)))
    if torn:
        n = len(lines) + 1
        try:
            obj = json.loads(torn)
            whole = complete(obj)
        except ValueError:
            obj, whole = None, False
        if not repair:
            raise DatabaseError(f"{file} line {n}: incomplete last line (an interrupted write?); "
                                "re-run `accelc tune` on this database to repair it")
        if whole:
            with open(file, "ab") as fh:
                fh.write(b"\n")
            out.append((n, obj))
            notes.append(f"{file.name} line {n}: restored the newline an interrupted write left out")
        else:
            aside = file.with_name(file.name + ".torn")
            with open(aside, "ab") as fh:
                fh.write(torn + b"\n")
            os.truncate(file, len(data) - len(torn))
            notes.append(f"{file.name} line {n}: set aside an incomplete line ({len(torn)} bytes, an "
                         f"interrupted write) in {aside.name}")
    return out


def _loads(file: Path, n: int, raw: bytes):
    try:
        return json.loads(raw)
    except ValueError as err:
        raise DatabaseError(f"{file} line {n}: not valid JSON ({err.msg} at column {err.colno}); "
                            "the database is corrupt and was left untouched") from None


def _workload_ok(obj) -> bool:
    return isinstance(obj, list) and len(obj) == 2 and all(isinstance(x, str) for x in obj)


def _record_ok(obj, n_workloads: int) -> bool:
    return (isinstance(obj, list) and len(obj) == 2 and isinstance(obj[0], int)
            and 0 <= obj[0] < n_workloads and isinstance(obj[1], list) and len(obj[1]) == 4)


def _parse_workload(file: Path, n: int, obj):
    from tvm.s_tir import meta_schedule as ms

    if not _workload_ok(obj):
        raise DatabaseError(f"{file} line {n}: not a MetaSchedule workload ([hash, module]); "
                            "the database is corrupt and was left untouched")
    try:
        wkl = ms.database.Workload.from_json(obj)
    except Exception as err:  # noqa: BLE001
        raise DatabaseError(f"{file} line {n}: TVM cannot read this workload ({_first_line(err)}); "
                            "the database is corrupt or from another TVM release") from None
    _check_version(file, n, obj[1])
    return wkl


def _check_version(file: Path, n: int, mod_b64: str) -> None:
    """The workload's ``tvm_version`` must share this TVM's major.minor release."""
    import base64

    import tvm

    try:
        meta = json.loads(base64.b64decode(mod_b64)[8:]).get("metadata", {})
    except ValueError:
        return  # an encoding TVM itself just read: no version to compare
    theirs = str(meta.get("tvm_version", ""))
    if theirs and theirs.split(".")[:2] != tvm.__version__.split(".")[:2]:
        raise DatabaseError(f"{file} line {n}: written by TVM {theirs}, this is TVM {tvm.__version__}; "
                            "records from another TVM release are not trusted (tune into a new --db)")


def _parse_record(file: Path, n: int, obj, workloads: list, want: dict) -> Record:
    from tvm.s_tir import meta_schedule as ms

    if not isinstance(obj, list) or len(obj) != 2 or not isinstance(obj[0], int) or not isinstance(obj[1], list) \
            or len(obj[1]) != 4:
        raise DatabaseError(f"{file} line {n}: not a MetaSchedule tuning record ([workload, [trace, "
                            "run_secs, target, args]]); the database is corrupt and was left untouched")
    if not 0 <= obj[0] < len(workloads):
        raise DatabaseError(f"{file} line {n}: refers to workload {obj[0]}, but {WORKLOADS} has "
                            f"{len(workloads)}; the database is corrupt and was left untouched")
    tgt = obj[1][2]
    if not isinstance(tgt, dict) or "kind" not in tgt:
        raise DatabaseError(f"{file} line {n}: the record names no target; the database is corrupt and "
                            "was left untouched")
    got = {k: _norm(k, tgt[k]) for k in TARGET_FIELDS if k in tgt}
    got = {k: got.get(k) for k in TARGET_FIELDS if k in got or k in want}
    mine = {k: want.get(k) for k in got}
    if got["kind"] != mine["kind"] or (got.get("keys") == mine.get("keys") and got != mine):
        diff = ", ".join(f"{k} {got[k]!r} (here {mine[k]!r})" for k in got if got[k] != mine[k])
        raise DatabaseError(f"{file} line {n}: record tuned for another target: {diff}; records "
                            "from another machine or target are not trusted (tune into a new --db)")
    try:
        for hook in _TRACE_HOOKS:
            hook(obj[1][0])
        rec = ms.database.TuningRecord.from_json(obj[1], workloads[obj[0]])
    except Exception as err:  # noqa: BLE001
        raise DatabaseError(f"{file} line {n}: TVM cannot read this tuning record ({_first_line(err)}); "
                            "the database is corrupt or from another TVM release") from None
    secs = obj[1][1]
    ok = isinstance(secs, list) and secs and all(isinstance(s, (int, float)) for s in secs)
    mean = sum(secs) / len(secs) if ok else float("inf")
    return Record(n, obj[0], mean if mean < FAILED_SECS else float("inf"), _searched(obj[1][0]), rec)


def _workload_hash(wkl) -> str:
    return str(wkl.as_json()[0])


def _read_verified(file: Path, workloads: list, records: list[Record]) -> dict:
    """``accelc_verified.json``: {workload index: Verified}; every record it names must be a
    record of that workload, and the workload must be the one it was written for."""
    if not file.exists():
        return {}

    def bad(why: str):
        return DatabaseError(f"{file}: {why}; the database is corrupt and was left untouched "
                             f"(delete {file.name} to compile with the search's own timings)")

    try:
        doc = json.loads(file.read_text())
    except (OSError, ValueError) as err:
        raise bad(f"not valid JSON ({err})") from None
    if not isinstance(doc, dict) or doc.get("format") != "accelc-verified/1" or not isinstance(doc.get("tasks"), list):
        raise bad("not an accelc verification file (format accelc-verified/1)")
    by_line = {r.line: r for r in records}
    out = {}
    for i, entry in enumerate(doc["tasks"]):
        try:
            w, recs = int(entry["workload"]), entry["records"]
            secs = {int(line): [float(x) for x in v] for line, v in recs.items()}
            cache = entry.get("cache", "warm")  # files before 2026-12-07 have none: warm
        except (KeyError, TypeError, ValueError, AttributeError):
            raise bad(f"task {i} is malformed") from None
        if cache not in ("warm", "flushed"):
            raise bad(f"task {i} has an unknown cache state {cache!r}")
        in_model = entry.get("in_model")
        if in_model is not None and not (
                isinstance(in_model, dict) and isinstance(in_model.get("record"), int)
                and isinstance(in_model.get("kept"), bool) and isinstance(in_model.get("ratio"), (int, float))
                and in_model["record"] in secs):
            raise bad(f"task {i} has a malformed in-model check")
        if not 0 <= w < len(workloads) or entry.get("workload_hash") != _workload_hash(workloads[w]):
            raise bad(f"task {i} names workload {w}, which is not the one it was written for")
        for line, v in secs.items():
            if line not in by_line or by_line[line].workload != w or not v or not all(math.isfinite(x) for x in v):
                raise bad(f"task {i} names record line {line}, which is not a measured record of workload {w}")
        if secs:
            out[w] = Verified(w, secs, cache, in_model)
    return out


def _searched(trace_json) -> bool:
    """MetaSchedule's search runs every candidate through the postprocessors, which its trace
    records as ``EnterPostproc``; a default schedule from the dlight rules has none."""
    insts = trace_json[0] if isinstance(trace_json, (list, tuple)) and trace_json else []
    return any(isinstance(i, (list, tuple)) and i and i[0] == "EnterPostproc" for i in insts)


def _target_fields(target) -> dict:
    exported = dict(target.export())
    return {k: _norm(k, exported[k]) for k in TARGET_FIELDS if k in exported}


def _norm(key: str, value):
    if key in ("keys", "mattr"):
        return [str(x) for x in value] if isinstance(value, (list, tuple)) or hasattr(value, "__iter__") \
            and not isinstance(value, str) else [str(value)]
    return int(value) if key == "num-cores" and isinstance(value, (int, float)) else str(value)


def _first_line(err: Exception) -> str:
    for ln in str(err).splitlines():
        if ln.strip():
            return ln.strip()[:200]
    return type(err).__name__
