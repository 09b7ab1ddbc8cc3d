"""Shared fixtures (helpers live in ``accelc.tests.util``)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TVM_NUM_THREADS", str(len(os.sched_getaffinity(0))))


@pytest.fixture(scope="session")
def cpu_target():
    from accelc.targets.cpu import host_target

    return host_target()

