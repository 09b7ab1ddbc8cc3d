"""Atomic file writes: a temp file in the destination folder, renamed into place on success.

An interrupted write never leaves a partial file and never clobbers a good one."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Callable


def atomic_write(dest: Path, write: Callable[[str], object], executable: bool = False) -> None:
    """Call ``write(tmp_path)``, then rename the temp file onto ``dest`` (mode as umask allows)."""
    dest = Path(dest)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=dest.suffix, dir=dest.parent)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, (0o777 if executable else 0o666) & ~umask)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextlib.contextmanager
def native_stderr_silenced():
    """Silence C/C++ writes to fd 2 (TVM's LOG(WARNING) chatter) unless ``ACCELC_DEBUG`` is set.

    Python-level errors are unaffected: they travel as exceptions, not through fd 2.
    """
    if os.environ.get("ACCELC_DEBUG"):
        yield
        return
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def read_npz(path, what: str = "inputs") -> dict:
    """The arrays of an ``.npz`` by name; a missing or unreadable file is one ``InputError``
    line naming it (``what``: the file's role in the message)."""
    import numpy as np

    from .errors import InputError

    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such {what} file")
    try:
        with np.load(p, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except Exception as err:  # noqa: BLE001 - numpy raises several types for bad archives
        raise InputError(f"{p}: not a NumPy .npz archive ({err})") from None
