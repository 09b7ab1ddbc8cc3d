"""Run the CUDA C that TVM generates for a kernel on the CPU, one OS thread per GPU thread.

CI has no GPU. For kernels built from plain CUDA C — shared memory, ``__syncthreads``,
``__dp4a``, int4/char4 vectors — the source TVM hands to nvcc is compiled here by the host C++
compiler with a small prelude: ``threadIdx``/``blockIdx`` are thread-locals, ``__shared__``
arrays are function statics (shared by the threads of the block running), ``__syncthreads`` is
a ``std::barrier`` over the block's threads, warp shuffles exchange through per-warp slots
between two warp barriers (so every lane of a warp must reach them, as on the GPU), ``__dp4a``
is the four signed byte products and the fast-math intrinsics are the exact functions. Blocks
run one after the other, their threads concurrently. What it checks is the generated program
itself (indexing, padding, predicates, the packing of bytes into words), against NumPy; what it
cannot check is anything only the GPU does (memory alignment faults, warp intrinsics, timing).
"""

from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

PRELUDE = r"""
#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <deque>
#include <thread>
#include <vector>
using std::max;
using std::min;
#define uint unsigned int
#define uchar unsigned char
#define ushort unsigned short
#define __global__
#define __shared__ static
#define __launch_bounds__(n)
#define __restrict__ __restrict
struct emu_dim { int x = 0, y = 0, z = 0; };
static thread_local emu_dim threadIdx, blockIdx;
static thread_local int emu_tid;  // linear thread index in the block
static std::barrier<>* emu_barrier = nullptr;
static inline void __syncthreads() { emu_barrier->arrive_and_wait(); }
// warp shuffles: each lane posts its value in its warp's slots, the warp meets, reads, meets again
struct emu_warp { std::barrier<>* bar; uint64_t slot[32]; };
static emu_warp* emu_warps = nullptr;
template <class T> static T emu_shfl(T v, int src) {
  static_assert(sizeof(T) <= 8, "shuffle of a value wider than 64 bits");
  emu_warp& w = emu_warps[emu_tid / 32];
  std::memcpy(&w.slot[emu_tid % 32], &v, sizeof(T));
  w.bar->arrive_and_wait();
  T out;
  std::memcpy(&out, &w.slot[src], sizeof(T));
  w.bar->arrive_and_wait();
  return out;
}
template <class T> static T __shfl_xor_sync(unsigned, T v, int lane_mask, int width = 32) {
  int lane = emu_tid % 32, src = lane ^ lane_mask;
  return emu_shfl(v, (src & ~(width - 1)) == (lane & ~(width - 1)) ? src : lane);
}
template <class T> static T __shfl_sync(unsigned, T v, int src_lane, int width = 32) {
  int lane = emu_tid % 32;
  return emu_shfl(v, (lane & ~(width - 1)) + (src_lane & (width - 1)));
}
template <class T> static T __shfl_down_sync(unsigned, T v, unsigned delta, int width = 32) {
  int lane = emu_tid % 32, src = lane + int(delta);
  return emu_shfl(v, (src & ~(width - 1)) == (lane & ~(width - 1)) ? src : lane);
}
// __expf, __logf: glibc declares them (its expf, logf)
static inline float __fdividef(float a, float b) { return a / b; }
struct alignas(16) int4 { int x, y, z, w; };
struct alignas(4) char4 { signed char x, y, z, w; };
static inline int4 make_int4(int x, int y, int z, int w) { return {x, y, z, w}; }
static inline char4 make_char4(signed char x, signed char y, signed char z, signed char w) { return {x, y, z, w}; }
static inline int __dp4a(int a, int b, int c) {
  for (int i = 0; i < 4; ++i)
    c += int(static_cast<signed char>(a >> (8 * i))) * int(static_cast<signed char>(b >> (8 * i)));
  return c;
}
"""

_SIGNATURE = re.compile(r'extern "C" __global__ void (?:__launch_bounds__\(\d+\) )?(\w+)\(([^)]*)\)\s*\{')


def launch_dims(script: str) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """Grid and block extents from a scheduled PrimFunc's TVMScript (its thread bindings)."""
    ext = {}
    pattern = r'T\.thread_binding\((?:T\.int(?:32|64)\()?(\d+)\)?, thread="((?:blockIdx|threadIdx)\.[xyz])"'
    for n, tag in re.findall(pattern, script):
        ext[tag] = max(ext.get(tag, 1), int(n))
    dims = [tuple(ext.get(f"{kind}.{a}", 1) for a in "xyz") for kind in ("blockIdx", "threadIdx")]
    return dims[0], dims[1]


def _kernel(source: str) -> tuple[str, str, list[tuple[str, str]]]:
    """(kernel name, source from its definition on, its parameters' (C type, name))."""
    found = list(_SIGNATURE.finditer(source))
    if len(found) != 1:
        raise ValueError(f"expected one __global__ kernel definition, found {len(found)}")
    m = found[0]
    types = []
    for p in m.group(2).split(","):
        p = p.replace("__restrict__", "").strip()
        if "*" not in p:
            raise ValueError(f"kernel parameter '{p}' is not a pointer (dynamic shapes are not emulated)")
        types.append((p[:p.rindex("*") + 1], p[p.rindex("*") + 1:].strip()))
    return m.group(1), source[m.start():], types


def run(source: str, grid, block, buffers: dict[str, np.ndarray], extra: str = "") -> None:
    """Run the one kernel of ``source`` over ``grid`` × ``block`` on ``buffers`` (by the PrimFunc's
    buffer names, TVM's ``<name>_ptr`` parameters; outputs are written in place). ``extra``:
    C++ placed between the prelude and the kernel."""
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        raise RuntimeError("no host C++ compiler (g++) to emulate the kernel with")
    name, body, types = _kernel(source)
    body = re.sub(r"__shared__\s+alignas\((\d+)\)", r"alignas(\1) static", body)  # C++ wants it first
    names = [n[:-4] if n.endswith("_ptr") else n for _, n in types]
    if set(names) != set(buffers):
        raise ValueError(f"kernel {name} takes {sorted(names)}, got {sorted(buffers)}")
    args = [buffers[n] for n in names]
    call = ", ".join(f"({t})a[{i}]" for i, (t, _) in enumerate(types))
    n_threads = block[0] * block[1] * block[2]
    n_warps = -(-n_threads // 32)
    launcher = f"""
extern "C" void emu_launch(void** a) {{
  for (int bz = 0; bz < {grid[2]}; ++bz)
  for (int by = 0; by < {grid[1]}; ++by)
  for (int bx = 0; bx < {grid[0]}; ++bx) {{
    std::barrier<> bar({n_threads});
    emu_barrier = &bar;
    std::vector<std::thread> ts;
    std::deque<std::barrier<>> bars;  // not movable: a deque never moves its elements
    std::vector<emu_warp> warps({n_warps});
    for (int i = 0; i < {n_warps}; ++i) {{
      bars.emplace_back(std::min(32, {n_threads} - 32 * i));
      warps[i].bar = &bars[i];
    }}
    emu_warps = warps.data();
    for (int tz = 0; tz < {block[2]}; ++tz)
    for (int ty = 0; ty < {block[1]}; ++ty)
    for (int tx = 0; tx < {block[0]}; ++tx)
      ts.emplace_back([=] {{
        blockIdx = {{bx, by, bz}}; threadIdx = {{tx, ty, tz}};
        emu_tid = tx + {block[0]} * (ty + {block[1]} * tz);
        {name}({call});
      }});
    for (auto& t : ts) t.join();
  }}
}}
"""
    with tempfile.TemporaryDirectory(prefix="accelc-cuda-emu-") as d:
        src, lib = Path(d) / "kernel.cc", Path(d) / "kernel.so"
        src.write_text(PRELUDE + extra + body + launcher)
        out = subprocess.run([cxx, "-std=c++20", "-O1", "-shared", "-fPIC", "-pthread", "-w", str(src), "-o", str(lib)],
                             capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"host compile of the CUDA kernel failed:\n{out.stderr[-3000:]}")
        so = ctypes.CDLL(str(lib))
        ptrs = (ctypes.c_void_p * len(args))(*[a.ctypes.data for a in args])
        for a in args:
            assert a.flags.c_contiguous
        so.emu_launch(ptrs)


# -- kernels to run: the CUDA C of a PrimFunc, emulated here or loaded on a GPU ----------------
def kernel(func, arch: str = "sm_90") -> tuple[str, tuple, tuple]:
    """The CUDA C that TVM generates for ``func`` (scheduled, one kernel) and its grid and block."""
    import tvm

    from accelc.targets import cuda
    from accelc.targets.cuda import fatbin

    target = cuda.target(arch)
    mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    grid, block = launch_dims(mod.script())
    with target:
        lib = tvm.tirx.build(mod, target=target)
    (dev,) = [m for m in fatbin.cuda_modules(lib) if m.kind == "cuda"]
    return dev.inspect_source("cuda"), grid, block


class Emulated:
    """``func``'s CUDA C for sm_90, run here by ``run``; called like a built module
    (``lib["main"](*tensors)``, outputs written back into their tensors)."""

    def __init__(self, func):
        self.source, self.grid, self.block = kernel(func)
        self.names = [p.name for p in func.params]

    def __getitem__(self, _name):
        return self._call

    def _call(self, *tensors):
        arrays = [t.numpy() for t in tensors]
        run(self.source, self.grid, self.block, dict(zip(self.names, arrays)))
        for t, a in zip(tensors, arrays):
            t.copyfrom(a)


def on_gpu(func, tmp_path, monkeypatch):
    """``func`` built for the local GPU, exported with its fatbin and loaded back."""
    import tvm

    from accelc.targets import cuda
    from accelc.targets.cuda import fatbin

    monkeypatch.setenv("TVM_CUDA_COMPILE_MODE", "nvcc")  # NVRTC needs cuda-bindings
    target = cuda.target()
    with target:
        lib = tvm.tirx.build(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=target)
    path = tmp_path / "kernel.so"
    fatbin.export_library(lib, str(path), cuda.arch_of(target))
    return tvm.runtime.load_module(str(path))
