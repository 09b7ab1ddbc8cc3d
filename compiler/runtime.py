"""``CompiledModel``: run, benchmark and export a compiled model; feeds by ONNX input name."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from ..errors import InputError
from . import artifact
from .artifact import ArtifactMeta
from .frontend import TensorSpec, random_feeds


@dataclass(frozen=True)
class BenchStats:
    """Latency of repeated runs, in milliseconds (each sample averages ``number`` calls)."""

    median_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    repeat: int
    number: int
    threads: int

    def __str__(self) -> str:
        return (f"median {self.median_ms:.3f} ms (mean {self.mean_ms:.3f} ± {self.std_ms:.3f}, "
                f"min {self.min_ms:.3f}, {self.repeat}×{self.number} runs, {self.threads} threads)")


def num_threads() -> int:
    import tvm

    return int(tvm.get_global_func("runtime.NumThreads")())


def set_num_threads(n: int) -> None:
    """Resize TVM's CPU thread pool (affinity mode 'big', i.e. no pinning preference)."""
    import tvm

    tvm.get_global_func("runtime.config_threadpool")(1, int(n))


def _to_numpy(value, spec: TensorSpec) -> np.ndarray:
    """A VM result as NumPy: tensors directly; shape values (ONNX ``Shape``) and scalars too."""
    if hasattr(value, "numpy"):
        return value.numpy()
    if isinstance(value, tuple):  # tvm.runtime.ShapeTuple is a tuple of ints
        return np.array([int(v) for v in value], dtype=spec.dtype).reshape(spec.shape)
    return np.array(getattr(value, "value", value), dtype=spec.dtype).reshape(spec.shape)


class CompiledModel:
    """A compiled model on its device. ``run`` mirrors ``onnxruntime.InferenceSession.run``."""

    def __init__(self, module, meta: ArtifactMeta, device=None, executable=None):
        from .. import targets

        self.meta = meta
        self._module = module
        self._device = device
        self._executable = executable  # kept for export() when compiled in-process
        self._vm_instance = None
        if executable is None or targets.get(meta.target_name).runnable_here(meta):
            self._vm_instance = self._make_vm()  # else (cross-compiled): made on first run

    def _make_vm(self):
        from tvm import relax

        from .. import targets

        targets.get(self.meta.target_name).check_runnable(self.meta.target, self.meta.isa_features)
        return relax.VirtualMachine(self._module, self.device)

    @property
    def device(self):
        if self._device is None:
            from .. import targets

            self._device = targets.get(self.meta.target_name).device()
        return self._device

    @property
    def _vm(self):
        """The VM, made when first needed: a model cross-compiled for a GPU this machine lacks
        can still be exported; running it says why it cannot run here."""
        if self._vm_instance is None:
            self._vm_instance = self._make_vm()
        return self._vm_instance

    # -- contract --------------------------------------------------------------------------
    @property
    def inputs(self) -> list[TensorSpec]:
        return list(self.meta.inputs)

    @property
    def outputs(self) -> list[TensorSpec]:
        return list(self.meta.outputs)

    @property
    def target(self) -> dict:
        return dict(self.meta.target)

    def __repr__(self) -> str:
        ins = ", ".join(map(str, self.inputs))
        outs = ", ".join(map(str, self.outputs))
        return f"CompiledModel({self.meta.name!r}, target={self.meta.target_name!r}, inputs=[{ins}], outputs=[{outs}])"

    # -- running ---------------------------------------------------------------------------
    def _args(self, feeds: Mapping[str, np.ndarray]):
        import tvm

        self._vm  # noqa: B018 - a model that cannot run here says so before any device copy
        if not isinstance(feeds, Mapping):
            raise InputError("feeds must be a mapping from input name to array")
        names = [s.name for s in self.meta.inputs]
        unknown = sorted(set(feeds) - set(names))
        if unknown:
            raise InputError(f"unknown input(s) {', '.join(unknown)}; the model's inputs are {', '.join(names)}")
        missing = [n for n in names if n not in feeds]
        if missing:
            raise InputError(f"missing input(s) {', '.join(missing)}; expected "
                             + ", ".join(str(s) for s in self.meta.inputs))
        args = []
        for spec in self.meta.inputs:
            arr = np.asarray(feeds[spec.name])
            if arr.dtype != np.dtype(spec.dtype):
                raise InputError(f"input '{spec.name}' must be {spec.dtype}, got {arr.dtype}")
            if tuple(arr.shape) != spec.shape:
                raise InputError(f"input '{spec.name}' must have shape {list(spec.shape)}, got {list(arr.shape)}")
            bound = self.meta.index_bounds.get(spec.name)
            if bound is not None and arr.size and (arr.min() < -bound or arr.max() >= bound):
                raise InputError(f"input '{spec.name}' indexes a table of {bound} rows: values must be in "
                                 f"[{-bound}, {bound}), got [{arr.min()}, {arr.max()}]")
            # np.ascontiguousarray would turn a 0-d scalar into shape (1,)
            args.append(tvm.runtime.tensor(np.array(arr, order="C", copy=not arr.flags.c_contiguous), self.device))
        return args

    def _invoke(self, args):
        import tvm

        out = self._vm["main"](*args)
        # A tuple of outputs comes back as an FFI Array; ShapeTuple is a tuple but one value.
        if isinstance(out, (tvm.runtime.Tensor, tvm.runtime.ShapeTuple)) or not hasattr(out, "__len__"):
            return [out]
        return list(out)

    def run(self, feeds: Mapping[str, np.ndarray], output_names: Sequence[str] | None = None
            ) -> dict[str, np.ndarray]:
        """Run once; returns ``{output name: array}`` (only ``output_names`` if given)."""
        args = self._args(feeds)
        if self.meta.accelerator and self.meta.accelerator.get("layers"):
            from ..targets.sim import offload

            with offload.progress(len(self.meta.accelerator["layers"]), self.meta.name):
                outs = self._invoke(args)
        else:
            outs = self._invoke(args)
        result = {spec.name: _to_numpy(o, spec) for spec, o in zip(self.meta.outputs, outs)}
        if output_names is None:
            return result
        bad = [n for n in output_names if n not in result]
        if bad:
            raise InputError(f"unknown output(s) {', '.join(bad)}; the model's outputs are {', '.join(result)}")
        return {n: result[n] for n in output_names}

    def example_feeds(self, seed: int = 0) -> dict[str, np.ndarray]:
        """Deterministic random feeds matching the model's inputs (ids kept in range)."""
        return random_feeds(self.meta.inputs, seed, self.meta.index_bounds)

    def benchmark(self, feeds: Mapping[str, np.ndarray] | None = None, repeat: int = 10,
                  number: int | None = None, warmup: int = 2, threads: int | None = None
                  ) -> BenchStats:
        """Median latency over ``repeat`` samples of ``number`` calls each (auto-sized to ≥50 ms)."""
        if threads is not None:
            set_num_threads(threads)
        args = self._args(feeds if feeds is not None else self.example_feeds())
        for _ in range(max(warmup, 1)):
            self._invoke(args)
        if number is None:
            t0 = time.perf_counter()
            self._invoke(args)
            one = max(time.perf_counter() - t0, 1e-6)
            number = max(1, min(1000, int(0.05 / one)))
        samples = []
        for _ in range(max(repeat, 1)):
            t0 = time.perf_counter()
            for _ in range(number):
                self._invoke(args)
            samples.append((time.perf_counter() - t0) / number * 1e3)
        return BenchStats(statistics.median(samples), statistics.fmean(samples),
                          statistics.pstdev(samples), min(samples), max(samples), len(samples),
                          number, num_threads())

    # -- persistence -----------------------------------------------------------------------
    def export(self, path) -> "artifact.Path":
        """Write ``path`` (.so) and its ``.json`` sidecar atomically; returns the library path."""
        if self._executable is None:
            raise InputError("this model was loaded from an artifact; copy its files instead of re-exporting")
        return artifact.export(self._executable, self.meta, path)
