"""ONNX node conformance through accelc: every case of the onnx package, counted.

The floor is the pass count this suite reached when it was recorded (README, "ONNX
conformance"); a change that makes fewer cases pass fails here. Raise the floor when a change
makes more pass. (Stock TVM 0.27, ``from_onnx`` + ``tvm.compile``: 765 of 1884 with onnx 1.23.)
"""

from __future__ import annotations

import os

import pytest

from accelc.benchmarks import onnx_conformance as oc

FLOOR = 1220  # recorded 2026-11-23 with onnx 1.23.2 (README); raise it, never lower it


@pytest.fixture(scope="module")
def results():
    cases = oc.collect_cases()
    return cases, oc.run_all(cases, "accelc", jobs=max(2, len(os.sched_getaffinity(0))), timeout=120)


def test_every_case_has_an_outcome(results):
    cases, res = results
    assert len(res) == len(cases) >= 1800
    assert {r.outcome for r in res} <= set(oc.OUTCOMES)


def test_no_case_crashes_or_hangs(results):
    _, res = results
    bad = [(r.name, r.outcome, r.detail) for r in res if r.outcome in ("crash", "timeout")]
    assert not bad, bad[:10]


def test_pass_count_floor(results):
    _, res = results
    summary = oc.summarize(res)
    print("conformance:", summary)
    assert summary["pass"] >= FLOOR, summary
