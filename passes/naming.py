"""Names for the constants a graph pass rewrites (Relax constants carry none).

The frontend stores ``accelc.weight_names`` (content fingerprint → ONNX node name) on the
module; passes look constants up there, falling back to ``<op>_<index>``.
"""

from __future__ import annotations

import fnmatch
import hashlib

import numpy as np


def fingerprint(array) -> str:
    arr = np.ascontiguousarray(array)
    digest = hashlib.blake2b(arr.tobytes(), digest_size=12)
    digest.update(f"{arr.dtype.str}{arr.shape}".encode())
    return digest.hexdigest()


def module_weight_names(mod) -> dict[str, str]:
    attrs = getattr(mod, "attrs", None)
    if attrs is None or "accelc.weight_names" not in attrs:
        return {}
    return {str(k): str(v) for k, v in attrs["accelc.weight_names"].items()}


def matches(name: str, patterns) -> bool:
    """fnmatch-style: ``*`` spans ``/`` too, so ``*fc1*`` finds ``/layer.0/fc1/MatMul``."""
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)
