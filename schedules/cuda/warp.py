"""The thread layout of accelc's hand-written CUDA twins and its CPU emulation.

A twin is written once, as TVMScript, for blocks of ``32 × W`` threads: warp ``ty`` (threadIdx.y)
and lane ``tx`` (threadIdx.x). Every per-lane step sits in a ``for li in lanes()`` loop over
the lanes one program holds, and its registers are indexed ``[li, …]``:

- on the GPU a program is one thread: ``lanes()`` is one iteration (``li = 0``), the lane is
  ``tx``, a warp-wide sum (or max) is a ``__shfl_xor_sync`` butterfly and reading another
  lane's register a ``__shfl_sync``;
- emulated (``emulate=True``, for the CPU tests: there is no GPU in CI) a program is a whole
  warp: ``lanes()`` runs the 32 lanes in turn (``li`` is the lane), blocks and warps are
  serial loops, the warp-wide sum (or max) combines the 32 lanes' registers and another lane's
  register is read at its index.

So the emulated program is the CUDA one with its thread bindings as loops and its shuffles as
sums and reads; the CPU tests check it against the NumPy references.
"""

from __future__ import annotations

from tvm.script import tirx as T

WARP = 32


class WarpLayout:
    """Loops and the warp-wide sum of a twin, bound to CUDA threads or (``emulate``) serial."""

    def __init__(self, emulate: bool):
        self.emulate = emulate
        #: Lanes one program holds: the leading extent of every per-lane register buffer.
        self.held = WARP if emulate else 1

    def blocks(self, extent):
        return T.serial(extent) if self.emulate else T.thread_binding(extent, thread="blockIdx.x")

    def warps(self, extent):
        return T.serial(extent) if self.emulate else T.thread_binding(extent, thread="threadIdx.y")

    def lane_threads(self):
        """threadIdx.x on the GPU; one pass emulated (its lanes are ``lanes()``)."""
        return T.serial(1) if self.emulate else T.thread_binding(WARP, thread="threadIdx.x")

    def lanes(self):
        """The lanes one program holds: all 32 in turn when emulated, its own one on the GPU."""
        return T.serial(WARP) if self.emulate else T.unroll(1)

    def lane(self, li, tx):
        return li if self.emulate else tx

    def sum_macro(self):
        """A macro ``warp_sum(part)``: ``part[0]`` becomes the sum of ``part[li]`` over the
        warp's lanes, in every lane (a 5-step butterfly on the GPU; the warp must not diverge)."""
        return self._butterfly(lambda x, y: x + y)

    def max_macro(self):
        """A macro ``warp_max(part)``: as ``sum_macro`` with the maximum."""
        return self._butterfly(T.max)

    def _butterfly(self, combine):
        full = T.uint32(0xFFFFFFFF)

        if self.emulate:
            @T.macro
            def reduce(part):
                for other in range(1, WARP):
                    part[0] = combine(part[0], part[other])
        else:
            @T.macro
            def reduce(part):
                for o in T.unroll(5):
                    part[0] = combine(part[0], T.tvm_warp_shuffle_xor(full, part[0], T.shift_left(1, 4 - o), WARP,
                                                                      WARP))
        return reduce

    def broadcast(self, reg, src):
        """Lane ``src``'s ``reg`` in every lane (``__shfl_sync`` on the GPU; the warp must not
        diverge). Emulated, ``reg[src]``: ``reg`` must be complete for every lane by then."""
        if self.emulate:
            return reg[src]
        return T.tvm_warp_shuffle(T.uint32(0xFFFFFFFF), reg[0], src, WARP, WARP)

    def barrier_macro(self):
        """A macro ``barrier()``: ``__syncthreads()`` on the GPU (nothing emulated, where the
        phases run one after the other). Put first in each phase that reads what another
        thread wrote in the one before: TVM's own sync planner, seeing each phase's thread
        loops as other threads, adds barriers inside the phases instead."""
        if self.emulate:
            @T.macro
            def barrier():
                T.evaluate(0)
        else:
            @T.macro
            def barrier():
                T.evaluate(T.tvm_storage_sync("shared"))
        return barrier


__all__ = ["WARP", "WarpLayout"]
