"""Tuning reports: best latency vs trials (per task and for the whole model) and before/after.

The curve is rebuilt from the database's search records in the order they were appended, then
extended batch by batch while tuning, so a resumed run continues the same curve. A task's latency
is what ``accelc compile --db`` will apply: its best record, where the task's default schedule
("before") is a record too when it could be stored, else its best searched record, else (no
record) its default schedule. The model's estimate is Σ over tasks of calls × that latency.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from ...fileio import atomic_write

CURVE_JSON, CURVE_PNG = "curve.json", "curve.png"


@dataclass
class TaskCurve:
    name: str
    key: str  # the workload's structural hash: identifies the task across runs
    weight: int  # calls per model run
    flops: float
    before: float | None  # seconds, default schedule; None if it could not be measured
    default_in_db: bool = False  # the default schedule is a record: compile never does worse
    trials: int = 0
    best: float = math.inf  # seconds, best valid record
    points: list = field(default_factory=list)  # [task trials, latency µs]: the default, then per batch
    verified_default: float | None = None  # seconds: the default and the applied record timed side by
    verified_after: float | None = None  # side after the search (``driver.verify_best``)


class Curve:
    def __init__(self, tasks: list[TaskCurve], model: str = "", target: str = ""):
        self.tasks = {t.name: t for t in tasks}
        for t in tasks:  # each task's curve starts from its default schedule
            if t.before is not None and not t.points:
                t.points.append([0, _us(t.before)])
        self.model, self.target = model, target
        self.trials = 0
        self.total = [[0, _us(self.estimate())]]  # [total trials, model estimate µs]

    def add(self, name: str, secs: list[float]) -> None:
        """One measured batch of task ``name`` (seconds per candidate; inf = failed)."""
        t = self.tasks[name]
        t.trials += len(secs)
        t.best = min([t.best, *secs])
        self.trials += len(secs)
        t.points.append([t.trials, _us(self.current(t))])
        self.total.append([self.trials, _us(self.estimate())])

    def verified(self, name: str, default: float | None, after: float) -> None:
        """The task's default (if stored) and the winning record, timed side by side."""
        t = self.tasks[name]
        t.verified_default, t.verified_after = default, after

    def current(self, t: TaskCurve) -> float | None:
        """The task's latency under what ``compile --db`` applies (seconds; None: unknown)."""
        if t.verified_after is not None:
            return t.verified_after
        if t.default_in_db and t.before is not None:
            return min(t.best, t.before)
        return t.best if math.isfinite(t.best) else t.before

    @staticmethod
    def baseline(t: TaskCurve) -> float | None:
        """The default schedule's latency: from the side-by-side timing if there is one."""
        return t.verified_default if t.verified_default is not None else t.before

    def estimate(self, before: bool = False) -> float | None:
        """Σ calls × latency over tasks whose latency is known (seconds); None if none is."""
        vals = [t.weight * v for t in self.tasks.values()
                if (v := (self.baseline(t) if before else self.current(t))) is not None]
        return sum(vals) if vals else None

    def to_json(self) -> dict:
        return {
            "model": self.model, "target": self.target, "unit": "us",
            "trials": self.trials,
            "total": {"before_us": _us(self.estimate(before=True)), "best_us": _us(self.estimate()),
                      "curve": self.total},
            "tasks": {t.name: {"key": t.key, "calls": t.weight, "flops": t.flops, "before_us": _us(t.before),
                               "best_searched_us": _us(t.best), "after_us": _us(self.current(t)),
                               "default_in_db": t.default_in_db, "trials": t.trials, "curve": t.points,
                               "verified": None if t.verified_after is None else
                               {"default_us": _us(t.verified_default), "after_us": _us(t.verified_after)}}
                      for t in self.tasks.values()},
        }

    def write(self, folder) -> Path:
        out = Path(folder) / CURVE_JSON
        text = json.dumps(self.to_json(), indent=1)
        atomic_write(out, lambda tmp: Path(tmp).write_text(text))
        return out

    def plot(self, folder) -> Path:
        """``curve.png``: the model's estimated latency vs trials, and each task's best."""
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot as plt

        fig, (ax_total, ax_task) = plt.subplots(1, 2, figsize=(11, 4.2))
        pts = [(n, v) for n, v in self.total if v is not None]
        if pts:
            ax_total.step(*zip(*pts), where="post", color="black")
        before = _us(self.estimate(before=True))
        if before is not None:
            ax_total.axhline(before, ls="--", color="grey", label="default schedules")
            ax_total.legend()
        ax_total.set(title=f"{self.model} on {self.target}: estimated latency", xlabel="trials (all tasks)",
                     ylabel="Σ calls × latency (µs)")
        for t in self.tasks.values():
            tp = [(n, v) for n, v in t.points if v is not None]
            if tp:
                ax_task.step(*zip(*tp), where="post", label=t.name)
        ax_task.set(title="best latency per task", xlabel="trials of the task", ylabel="µs", yscale="log")
        if any(t.points for t in self.tasks.values()):
            ax_task.legend(fontsize="x-small")
        fig.tight_layout()
        out = Path(folder) / CURVE_PNG
        atomic_write(out, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
        plt.close(fig)
        return out

    def table(self) -> str:
        """Per-task latency before (default schedule) and after (what ``compile --db`` applies);
        side-by-side re-timings where the task was verified."""
        width = max([len("task"), *(len(n) for n in self.tasks)])
        rows = [f"{'task':<{width}} {'calls':>5} {'trials':>6} {'before µs':>11} {'after µs':>10} {'speedup':>8}"]
        for t in self.tasks.values():
            b = self.baseline(t)
            rows.append(f"{t.name:<{width}} {t.weight:>5} {t.trials:>6} {_fmt(b):>11} "
                        f"{_fmt(self.current(t)):>10} {_speedup(b, self.current(t)):>8}")
        b, a = self.estimate(before=True), self.estimate()
        rows.append(f"{'model (Σ calls × latency)':<{width + 13}} {_fmt(b):>11} {_fmt(a):>10} {_speedup(b, a):>8}")
        return "\n".join(rows)


def load_before(folder) -> dict[str, float]:
    """Default-schedule latencies (seconds) of an earlier run, by task key; {} if none."""
    try:
        data = json.loads((Path(folder) / CURVE_JSON).read_text())
        return {v["key"]: v["before_us"] * 1e-6 for v in data["tasks"].values()
                if isinstance(v.get("before_us"), (int, float))}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def _us(secs):
    return None if secs is None or not math.isfinite(secs) else round(secs * 1e6, 4)


def _fmt(secs) -> str:
    return "n/a" if secs is None or not math.isfinite(secs) else f"{secs * 1e6:.2f}"


def _speedup(before, after) -> str:
    if before is None or after is None or not math.isfinite(after) or after <= 0:
        return "n/a"
    return f"{before / after:.2f}x"
