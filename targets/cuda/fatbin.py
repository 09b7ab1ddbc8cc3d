"""Ship CUDA kernels as a fatbin inside the exported library, not as CUDA source.

Upstream symptom (TVM 0.27 wheel): without ``libcuda`` at compile time, ``target.build.cuda``
returns a ``CUDAFallbackModule`` holding the raw ``.cu`` source (``fmt="cuda"``), and
``export_library`` embeds that source. A GPU host would then need NVRTC or nvcc to JIT it at
load time. We compile the source with nvcc ourselves and rewrite the packed import blob so the
``cuda`` module carries ``fmt="fatbin"`` and the binary; TVM's CUDA runtime loads that with
``cuModuleLoadData``, no compiler needed.

The blob format is tvm-ffi's ``__tvm_ffi__library_bin`` (``src/ffi/extra/library_module.cc``):
``<nbytes u64> <indptr vec<u64>> <children vec<u64>>`` then per module ``<kind str>`` and,
unless the kind is ``_lib``, ``<payload bytes>``. A ``cuda`` payload is
``<fmt str> <fmap> <code bytes>`` (``CUDAModuleNode::SaveToBytes``).
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass

from ...errors import CompileError

FATBIN_MAGIC = 0xBA55ED50  # first word of a fatbin container (host-endian)
BLOB_SYMBOL = "__tvm_ffi__library_bin"


def _u64(buf: bytes, pos: int) -> tuple[int, int]:
    return struct.unpack_from("<Q", buf, pos)[0], pos + 8


def _str(buf: bytes, pos: int) -> tuple[bytes, int]:
    n, pos = _u64(buf, pos)
    return buf[pos:pos + n], pos + n


def _vec_u64(buf: bytes, pos: int) -> tuple[list[int], int]:
    n, pos = _u64(buf, pos)
    return list(struct.unpack_from(f"<{n}Q", buf, pos)), pos + 8 * n


def _pack_str(data: bytes) -> bytes:
    return struct.pack("<Q", len(data)) + data


@dataclass
class Blob:
    """A parsed import blob: the import tree (kept verbatim) and ``(kind, payload)`` entries."""

    tree: bytes
    entries: list[tuple[bytes, bytes | None]]

    @classmethod
    def parse(cls, data: bytes) -> "Blob":
        nbytes, pos = _u64(data, 0)
        if nbytes + 8 != len(data):
            raise ValueError(f"import blob says {nbytes} bytes, holds {len(data) - 8}")
        start = pos
        indptr, pos = _vec_u64(data, pos)
        _, pos = _vec_u64(data, pos)
        tree = data[start:pos]
        entries = []
        for _ in range(len(indptr) - 1):
            kind, pos = _str(data, pos)
            payload = None
            if kind != b"_lib":
                payload, pos = _str(data, pos)
            entries.append((kind, payload))
        if pos != len(data):
            raise ValueError(f"import blob has {len(data) - pos} trailing bytes")
        return cls(tree, entries)

    def serialize(self) -> bytes:
        body = self.tree + b"".join(_pack_str(k) + (b"" if p is None else _pack_str(p))
                                    for k, p in self.entries)
        return struct.pack("<Q", len(body)) + body


def split_cuda_payload(payload: bytes, source: bytes) -> tuple[bytes, bytes]:
    """``(fmt, fmap bytes)`` of a ``cuda`` payload whose code is ``source``."""
    fmt, pos = _str(payload, 0)
    tail = _pack_str(source)
    if not payload.endswith(tail):
        raise ValueError("cuda module payload does not end with its source")
    return fmt, payload[pos:len(payload) - len(tail)]


def nvcc_gencode(arch: str) -> list[str]:
    """SASS for ``arch`` plus its PTX (so newer GPUs can JIT it): ``sm_90`` → two -gencode."""
    m = re.fullmatch(r"sm_(\d+[a-z]?)", arch)
    if not m:
        raise CompileError(f"CUDA arch must look like sm_80 or sm_90a, got '{arch}'")
    cc = m.group(1)
    return ["-gencode", f"arch=compute_{cc},code=sm_{cc}", "-gencode", f"arch=compute_{cc},code=compute_{cc}"]


def nvcc_path() -> str:
    path = shutil.which("nvcc") or next((p for p in ("/usr/local/cuda/bin/nvcc",) if os.path.exists(p)), None)
    if path is None:
        raise CompileError("compiling for CUDA needs nvcc (the CUDA toolkit) on PATH; none found")
    return path


def compile_fatbin(source: str, arch: str) -> bytes:
    """nvcc ``source`` → fatbin bytes (SASS for ``arch`` + PTX); one clear error line on failure."""
    with tempfile.TemporaryDirectory(prefix="accelc-nvcc-") as tmp:
        cu, out = os.path.join(tmp, "kernels.cu"), os.path.join(tmp, "kernels.fatbin")
        with open(cu, "w") as f:
            f.write(source)
        cmd = [nvcc_path(), "--fatbin", "-O3", *nvcc_gencode(arch), "--use_fast_math",
               "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
               "-U__CUDA_NO_BFLOAT16_OPERATORS__", "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
               "--expt-relaxed-constexpr", "-o", out, cu]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            first = next((ln for ln in proc.stderr.splitlines() if "error" in ln), proc.stderr.strip()[:300])
            raise CompileError(f"nvcc failed for {arch}: {first.strip()}")
        with open(out, "rb") as f:
            return f.read()


def cuda_modules(mod) -> list:
    """The ``cuda`` modules in ``mod``'s import tree, in the packer's (depth-first) order."""
    found, stack, seen = [], [mod], set()
    while stack:
        m = stack.pop(0)
        for imp in m.imports:
            if id(imp) in seen:
                continue
            seen.add(id(imp))
            if imp.kind == "cuda":
                found.append(imp)
            stack.append(imp)
    return found


def fatbin_blob(executable_mod, arch: str) -> bytes:
    """The packed import blob of ``executable_mod`` with every CUDA source module as a fatbin."""
    import tvm.runtime._ffi_api as rapi

    text = rapi.ModulePackImportsToC(executable_mod, False, "")
    hexes = text[text.index("] = {") + 5:text.rindex("};")]
    data = bytes(int(h, 16) for h in re.findall(r"0x([0-9a-f]{2})", hexes))
    blob = Blob.parse(data)
    sources = [m.inspect_source("cuda").encode() for m in cuda_modules(executable_mod)]
    cuda_entries = [i for i, (k, _) in enumerate(blob.entries) if k == b"cuda"]
    if len(cuda_entries) != len(sources):
        raise CompileError(f"found {len(cuda_entries)} CUDA modules in the blob, {len(sources)} in the tree")
    for i, src in zip(cuda_entries, sources):
        fmt, fmap = split_cuda_payload(blob.entries[i][1], src)
        if fmt != b"cuda":  # a real CUDA runtime already compiled it
            continue
        binary = compile_fatbin(src.decode(), arch)
        blob.entries[i] = (b"cuda", _pack_str(b"fatbin") + fmap + _pack_str(binary))
    return blob.serialize()


def write_blob_asm(blob: bytes, folder: str) -> str:
    """An assembler file defining ``__tvm_ffi__library_bin`` as ``blob`` (via ``.incbin``:
    a C array of a multi-megabyte fatbin takes g++ minutes, this takes milliseconds)."""
    bin_path = os.path.join(folder, "devc.bin")
    with open(bin_path, "wb") as f:
        f.write(blob)
    asm = os.path.join(folder, "devc.S")
    with open(asm, "w") as f:
        f.write(f"""    .section .rodata
    .globl {BLOB_SYMBOL}
    .type {BLOB_SYMBOL}, @object
    .p2align 4
{BLOB_SYMBOL}:
    .incbin "{bin_path}"
    .size {BLOB_SYMBOL}, {len(blob)}
    .section .note.GNU-stack,"",@progbits
""")
    return asm


def export_library(executable, path: str, arch: str) -> None:
    """``executable.export_library(path)`` with the CUDA kernels as an embedded fatbin."""

    def pack(mod, is_system_lib, prefix, workspace):
        if is_system_lib or prefix:
            raise CompileError("system-lib CUDA artifacts are not supported")
        return write_blob_asm(fatbin_blob(mod, arch), workspace)

    executable.export_library(path, fpack_imports=pack)


def artifact_fatbins(lib_path: str) -> list[bytes]:
    """The fatbins embedded in an exported library (read back from its blob symbol)."""
    data = open(lib_path, "rb").read()
    out, pos = [], 0
    magic = struct.pack("<I", FATBIN_MAGIC)
    while (pos := data.find(magic, pos)) >= 0:
        out.append(data[pos:pos + 16])
        pos += 4
    return out
