"""The simulated accelerator's machine description: one TOML (or JSON) file, with documented
defaults, dumped into every report.

Sections (every key optional; a missing key keeps its default; an unknown key is an error)::

    name, clock_mhz                     top level
    [array]       rows, cols, pe_type, dataflow
    [scratchpad]  ifmap_bytes, filter_bytes, ofmap_bytes, double_buffered
    [dram]        bandwidth_bytes_per_cycle, latency_cycles
    [vector]      lanes, <op>_cycles for add, mul, max, cmp, shift, cast, exp, div, rsqrt, reduce
    [energy]      per-action energies in pJ (45 nm; seed-algorithms.md section 7)

``default_config_toml()`` is the default file with every field commented; a user writes it out,
edits it and passes it with ``--sim-config``. ``load_config(path)`` reads it back and validates it;
``MachineConfig.validate()`` raises :class:`accelc.errors.TargetError` with one line naming the
field for a bad value.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ...errors import TargetError

PE_TYPES = ("mac", "shift-add", "both")
DATAFLOWS = ("os", "ws", "is")
VECTOR_OPS = ("add", "mul", "max", "cmp", "shift", "cast", "exp", "div", "rsqrt", "reduce")

# Element sizes the array works with: int8 operands (ifmap, filter; a shift-add weight is a
# sign + exponent code stored in one byte) and int32 accumulators (ofmap).
OPERAND_BYTES = 1
ACC_BYTES = 4


def _f(default, doc: str):
    return field(default=default, metadata={"doc": doc})


@dataclass(frozen=True)
class ArrayConfig:
    rows: int = _f(32, "PE array rows (R); a positive integer")
    cols: int = _f(32, "PE array columns (C); a positive integer")
    pe_type: str = _f(
        "mac",
        'PE kind: "mac" (int8 x int8 -> int32 multiply-accumulate), "shift-add" (weights are '
        'sign + exponent codes: shift the activation, add into int32), or "both" (each PE can do '
        "either; a shift GEMM uses shift-add, any other GEMM mac)",
    )
    dataflow: str = _f(
        "os",
        'systolic dataflow: "os" output-stationary, "ws" weight-stationary, "is" '
        "input-stationary (SCALE-Sim's mapping of a GEMM; see cycles.py)",
    )


@dataclass(frozen=True)
class ScratchpadConfig:
    ifmap_bytes: int = _f(256 * 1024, "input (activation) scratchpad, bytes of int8")
    filter_bytes: int = _f(256 * 1024, "weight scratchpad, bytes of int8 (or shift codes)")
    ofmap_bytes: int = _f(256 * 1024, "accumulator (output) scratchpad, bytes of int32 partial sums")
    double_buffered: bool = _f(
        True,
        "split every scratchpad in two halves: the DMA fills one while the array computes on the "
        "other (each half must hold a tile)",
    )


@dataclass(frozen=True)
class DramConfig:
    bandwidth_bytes_per_cycle: float = _f(
        32.0, "DRAM <-> scratchpad bandwidth, bytes per array clock cycle (32 B at 500 MHz = 16 GB/s)"
    )
    latency_cycles: int = _f(100, "fixed latency paid by every DMA transfer, cycles")


@dataclass(frozen=True)
class VectorConfig:
    lanes: int = _f(32, "vector/ALU unit lanes (elements per cycle at 1 cycle/op); fp32 datapath")
    add_cycles: int = _f(1, "cycles per vector op: add / sub")
    mul_cycles: int = _f(1, "cycles per vector op: mul")
    max_cycles: int = _f(1, "cycles per vector op: max / min / relu")
    cmp_cycles: int = _f(1, "cycles per vector op: compare / select")
    shift_cycles: int = _f(1, "cycles per vector op: arithmetic shift")
    cast_cycles: int = _f(1, "cycles per vector op: int <-> float conversion, requantize")
    exp_cycles: int = _f(4, "cycles per vector op: exp (softmax, GELU)")
    div_cycles: int = _f(4, "cycles per vector op: divide / reciprocal")
    rsqrt_cycles: int = _f(4, "cycles per vector op: reciprocal square root (layer norm)")
    reduce_cycles: int = _f(1, "cycles per vector op: one step of a tree reduction (sum, max)")

    def cycles_for(self, op: str) -> int:
        if op not in VECTOR_OPS:
            raise TargetError(f"unknown vector op '{op}'; known: {', '.join(VECTOR_OPS)}")
        return getattr(self, f"{op}_cycles")


@dataclass(frozen=True)
class EnergyConfig:
    """pJ per action, 45 nm (Horowitz ISSCC'14; ShiftAddViT/ShiftAddLLM hw_utils.py)."""

    int8_mult: float = _f(0.2, "int8 multiply (the mac PE's multiplier), pJ")
    int8_add: float = _f(0.03, "int8 add, pJ")
    int32_add: float = _f(0.1, "int32 add: the accumulate of every PE action (mac and shift-add), pJ")
    int8_shift: float = _f(0.024, "shift of an int8 activation by a weight exponent (shift-add PE), pJ")
    fp32_add: float = _f(0.9, "fp32 add on the vector unit, pJ")
    fp32_mult: float = _f(3.7, "fp32 multiply on the vector unit, pJ")
    fp32_special: float = _f(
        18.4,
        "fp32 exp / div / rsqrt on the vector unit, pJ (assumed 4 fused mult+add steps: "
        "4 x (3.7 + 0.9))",
    )
    sram_read_per_byte: float = _f(1.25, "scratchpad read, pJ per byte (8 KB SRAM: ~10 pJ per 64-bit read)")
    sram_write_per_byte: float = _f(1.25, "scratchpad write, pJ per byte (taken equal to a read)")
    dram_per_byte: float = _f(100.0, "DRAM access, pJ per byte (200 pJ per 16-bit access)")

    @property
    def mac(self) -> float:
        """One mac PE action: int8 multiply + int32 accumulate."""
        return self.int8_mult + self.int32_add

    @property
    def shift_add(self) -> float:
        """One shift-add PE action: shift + int32 (sign-conditional) accumulate."""
        return self.int8_shift + self.int32_add


_SECTIONS = {
    "array": ArrayConfig,
    "scratchpad": ScratchpadConfig,
    "dram": DramConfig,
    "vector": VectorConfig,
    "energy": EnergyConfig,
}
_TOP_DOCS = {
    "name": "a label for reports",
    "clock_mhz": "array clock, MHz (cycles -> seconds in reports)",
}


@dataclass(frozen=True)
class MachineConfig:
    """A simulated accelerator. Frozen (hashable, so cost-model caches can key on it)."""

    name: str = "accel-32x32"
    clock_mhz: float = 500.0
    array: ArrayConfig = field(default_factory=ArrayConfig)
    scratchpad: ScratchpadConfig = field(default_factory=ScratchpadConfig)
    dram: DramConfig = field(default_factory=DramConfig)
    vector: VectorConfig = field(default_factory=VectorConfig)
    energy: EnergyConfig = field(default_factory=EnergyConfig)

    # -- shorthands used by the cycle model
    @property
    def rows(self) -> int:
        return self.array.rows

    @property
    def cols(self) -> int:
        return self.array.cols

    @property
    def dataflow(self) -> str:
        return self.array.dataflow

    @property
    def pe_type(self) -> str:
        return self.array.pe_type

    def min_scratchpad_bytes(self) -> dict[str, int]:
        """What ``validate`` requires of each scratchpad: one rows x cols tile of its element type
        (int8 for ifmap and filter, int32 for ofmap), in each half when double buffered."""
        tile = self.array.rows * self.array.cols
        halves = 2 if self.scratchpad.double_buffered else 1
        return {
            "ifmap_bytes": halves * tile * OPERAND_BYTES,
            "filter_bytes": halves * tile * OPERAND_BYTES,
            "ofmap_bytes": halves * tile * ACC_BYTES,
        }

    def validate(self) -> "MachineConfig":
        """Raise TargetError (one line, naming the field) on the first bad value; return self."""

        def bad(key: str, why: str, value: Any):
            raise TargetError(f"sim config: {key} {why}, got {value!r}")

        def is_int(v):
            return isinstance(v, int) and not isinstance(v, bool)

        def is_num(v):
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        if not isinstance(self.name, str):
            bad("name", "must be a string", self.name)
        if not is_num(self.clock_mhz) or self.clock_mhz <= 0:
            bad("clock_mhz", "must be a positive number", self.clock_mhz)
        a = self.array
        for key in ("rows", "cols"):
            v = getattr(a, key)
            if not is_int(v) or v <= 0:
                bad(f"array.{key}", "must be a positive integer", v)
        if a.pe_type not in PE_TYPES:
            bad("array.pe_type", f"must be one of {', '.join(PE_TYPES)}", a.pe_type)
        if a.dataflow not in DATAFLOWS:
            bad("array.dataflow", f"must be one of {', '.join(DATAFLOWS)}", a.dataflow)
        s = self.scratchpad
        if not isinstance(s.double_buffered, bool):
            bad("scratchpad.double_buffered", "must be true or false", s.double_buffered)
        mins = self.min_scratchpad_bytes()
        for key in ("ifmap_bytes", "filter_bytes", "ofmap_bytes"):
            v = getattr(s, key)
            if not is_int(v) or v <= 0:
                bad(f"scratchpad.{key}", "must be a positive integer", v)
            if v < mins[key]:
                elem = "int32" if key == "ofmap_bytes" else "int8"
                what = f"one {a.rows}x{a.cols} {elem} tile"
                if s.double_buffered:
                    what += " in each half, double buffered"
                bad(f"scratchpad.{key}", f"is smaller than one tile: needs >= {mins[key]} bytes ({what})", v)
        d = self.dram
        if not is_num(d.bandwidth_bytes_per_cycle) or d.bandwidth_bytes_per_cycle <= 0:
            bad("dram.bandwidth_bytes_per_cycle", "must be a positive number", d.bandwidth_bytes_per_cycle)
        if not is_int(d.latency_cycles) or d.latency_cycles < 0:
            bad("dram.latency_cycles", "must be a non-negative integer", d.latency_cycles)
        v = self.vector
        if not is_int(v.lanes) or v.lanes <= 0:
            bad("vector.lanes", "must be a positive integer", v.lanes)
        for op in VECTOR_OPS:
            c = getattr(v, f"{op}_cycles")
            if not is_int(c) or c <= 0:
                bad(f"vector.{op}_cycles", "must be a positive integer", c)
        for f in fields(EnergyConfig):
            e = getattr(self.energy, f.name)
            if not is_num(e) or e < 0:
                bad(f"energy.{f.name}", "must be a non-negative number (pJ)", e)
        return self

    # -- (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "sim config") -> "MachineConfig":
        """Build from a (possibly partial) nested dict; unknown keys and wrong nesting are errors.
        Validates the result."""
        if not isinstance(data, dict):
            raise TargetError(f"{source}: expected a table of settings, got {type(data).__name__}")
        top: dict[str, Any] = {}
        for key, value in data.items():
            if key in _SECTIONS:
                sec_cls = _SECTIONS[key]
                if not isinstance(value, dict):
                    raise TargetError(f"{source}: '{key}' must be a table/section, got {value!r}")
                known = [f.name for f in fields(sec_cls)]
                for sub in value:
                    if sub not in known:
                        raise TargetError(
                            f"{source}: unknown key '{key}.{sub}'; known keys in [{key}]: {', '.join(known)}"
                        )
                top[key] = sec_cls(**value)
            elif key in _TOP_DOCS:
                top[key] = value
            else:
                known = list(_TOP_DOCS) + [f"[{s}]" for s in _SECTIONS]
                raise TargetError(f"{source}: unknown key '{key}'; known: {', '.join(known)}")
        cfg = cls(**top)
        try:
            return cfg.validate()
        except TargetError as e:
            if source != "sim config":
                raise TargetError(str(e).replace("sim config:", f"{source}:", 1)) from None
            raise

    def to_toml(self, comments: bool = True) -> str:
        """TOML text of this config, every field documented (``default_config_toml`` for defaults)."""
        lines = [
            "# accelc simulated-accelerator machine config (accelc compile -t sim --sim-config FILE).",
            "# Every key is optional (a missing key keeps the default shown); unknown keys are errors.",
            "",
        ]
        for key, doc in _TOP_DOCS.items():
            if comments:
                lines.append(f"# {doc}")
            lines.append(f"{key} = {_toml_value(getattr(self, key))}")
        for sec, sec_cls in _SECTIONS.items():
            lines.append("")
            if comments and sec_cls.__doc__ and sec == "energy":
                lines.append(f"# {sec_cls.__doc__.strip()}")
            lines.append(f"[{sec}]")
            obj = getattr(self, sec)
            for f in fields(sec_cls):
                if comments:
                    lines.append(f"# {f.metadata['doc']}")
                lines.append(f"{f.name} = {_toml_value(getattr(obj, f.name))}")
        return "\n".join(lines) + "\n"

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a valid TOML basic string
    raise TypeError(f"cannot write {v!r} as TOML")


def default_config_toml() -> str:
    """The default config as documented TOML (write it out, edit it, pass it with --sim-config)."""
    return MachineConfig().to_toml()


def load_config(path: str | Path | None) -> MachineConfig:
    """Read a TOML (``.toml``) or JSON (``.json``) machine config; ``None`` gives the defaults.
    Raises TargetError naming the file and the field for anything wrong."""
    if path is None:
        return MachineConfig().validate()
    p = Path(path)
    if not p.is_file():
        raise TargetError(f"sim config file '{p}' not found")
    text = p.read_text()
    suffix = p.suffix.lower()
    try:
        if suffix == ".json":
            data = json.loads(text)
        elif suffix == ".toml":
            data = tomllib.loads(text)
        else:
            raise TargetError(f"sim config '{p}': expected a .toml or .json file")
    except tomllib.TOMLDecodeError as e:
        raise TargetError(f"sim config '{p}': invalid TOML: {e}") from None
    except json.JSONDecodeError as e:
        raise TargetError(f"sim config '{p}': invalid JSON: {e}") from None
    return MachineConfig.from_dict(data, source=f"sim config '{p}'")
