"""The simulated accelerator's machine config (accelc.targets.sim.config)."""

from __future__ import annotations

import dataclasses
import json
import tomllib

import pytest

from accelc.errors import AccelcError, TargetError
from accelc.targets.sim.config import (
    ArrayConfig,
    DramConfig,
    MachineConfig,
    ScratchpadConfig,
    default_config_toml,
    load_config,
)


def test_defaults_valid_and_documented():
    cfg = MachineConfig()
    assert cfg.validate() is cfg
    assert (cfg.rows, cfg.cols, cfg.dataflow, cfg.pe_type) == (32, 32, "os", "mac")
    e = cfg.energy  # seed-algorithms.md section 7, 45 nm
    assert (e.int8_mult, e.int8_add, e.int32_add, e.int8_shift) == (0.2, 0.03, 0.1, 0.024)
    assert (e.fp32_mult, e.fp32_add) == (3.7, 0.9)
    assert e.sram_read_per_byte == pytest.approx(10 / 8)  # ~10 pJ per 64-bit read of 8 KB SRAM
    assert e.dram_per_byte == pytest.approx(200 / 2)  # 200 pJ per 16-bit access
    assert e.shift_add < e.mac
    text = default_config_toml()
    assert tomllib.loads(text) == cfg.to_dict()
    # every field has a comment line above it
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if " = " in line and not line.startswith("#"):
            assert lines[i - 1].startswith("# "), line
    hash(cfg)  # frozen, usable as a cache key


def test_toml_round_trip(tmp_path):
    cfg = dataclasses.replace(
        MachineConfig(),
        clock_mhz=800.0,
        array=ArrayConfig(rows=16, cols=8, pe_type="both", dataflow="ws"),
        scratchpad=ScratchpadConfig(ifmap_bytes=4096, filter_bytes=8192, ofmap_bytes=65536,
                                    double_buffered=False),
        dram=DramConfig(bandwidth_bytes_per_cycle=12.5, latency_cycles=0),
    )
    p = tmp_path / "cfg.toml"
    p.write_text(cfg.to_toml())
    assert load_config(p) == cfg
    # the default file a user writes out and edits
    d = tmp_path / "default.toml"
    d.write_text(default_config_toml().replace("rows = 32", "rows = 8"))
    assert load_config(d).rows == 8 and load_config(d).cols == 32


def test_json_round_trip_and_partial(tmp_path):
    cfg = dataclasses.replace(MachineConfig(), array=ArrayConfig(pe_type="shift-add", dataflow="is"))
    p = tmp_path / "cfg.json"
    p.write_text(cfg.to_json())
    assert load_config(p) == cfg
    p.write_text(json.dumps({"array": {"rows": 4, "cols": 4}}))
    got = load_config(p)
    assert (got.rows, got.cols) == (4, 4) and got.dram == MachineConfig().dram
    assert load_config(None) == MachineConfig()


BAD = [
    ("[array]\nrows = 0\n", "array.rows"),
    ("[array]\ncols = -3\n", "array.cols"),
    ("[dram]\nbandwidth_bytes_per_cycle = -1.0\n", "dram.bandwidth_bytes_per_cycle"),
    ("[dram]\nlatency_cycles = -5\n", "dram.latency_cycles"),
    ("[scratchpad]\nfilter_bytes = 1000\n", "scratchpad.filter_bytes"),  # < 2 x 32x32 int8
    ("[scratchpad]\nifmap_bytes = 512\n", "scratchpad.ifmap_bytes"),
    ("[scratchpad]\nofmap_bytes = 4096\n", "scratchpad.ofmap_bytes"),  # < 2 x 32x32 int32
    ('[array]\ndataflow = "rs"\n', "array.dataflow"),
    ('[array]\npe_type = "lut"\n', "array.pe_type"),
    ("[array]\nrowz = 32\n", "array.rowz"),
    ("frequency = 3\n", "frequency"),
    ("clock_mhz = 0\n", "clock_mhz"),
    ("[energy]\ndram_per_byte = -1\n", "energy.dram_per_byte"),
    ("[vector]\nexp_cycles = 0\n", "vector.exp_cycles"),
    ('array = 3\n', "array"),
]


@pytest.mark.parametrize("text,field", BAD, ids=[f for _, f in BAD])
def test_bad_config_one_line_naming_field(tmp_path, text, field):
    p = tmp_path / "cfg.toml"
    p.write_text(text)
    with pytest.raises(TargetError) as ei:
        load_config(p)
    msg = str(ei.value)
    assert "\n" not in msg
    assert f"'{field}'" in msg or f" {field} " in msg, msg
    assert str(p) in msg
    assert isinstance(ei.value, AccelcError)


def test_scratchpad_minimum_is_one_tile():
    # exactly one rows x cols tile per buffer (x2 when double buffered) is accepted
    ok = MachineConfig(array=ArrayConfig(rows=8, cols=4),
                       scratchpad=ScratchpadConfig(ifmap_bytes=32, filter_bytes=32, ofmap_bytes=128,
                                                   double_buffered=False))
    ok.validate()
    doubled = ScratchpadConfig(ifmap_bytes=64, filter_bytes=64, ofmap_bytes=128, double_buffered=True)
    with pytest.raises(TargetError, match=r"scratchpad.ofmap_bytes is smaller than one tile: needs >= 256 "
                                          r"bytes \(one 8x4 int32 tile in each half, double buffered\)"):
        dataclasses.replace(ok, scratchpad=doubled).validate()
    dataclasses.replace(ok, scratchpad=dataclasses.replace(doubled, ofmap_bytes=256)).validate()
    with pytest.raises(TargetError, match=r"scratchpad.filter_bytes .*8x4 int8 tile"):
        dataclasses.replace(ok, scratchpad=dataclasses.replace(ok.scratchpad, filter_bytes=31)).validate()


def test_unknown_file_type_and_syntax(tmp_path):
    p = tmp_path / "cfg.yaml"
    p.write_text("rows: 3")
    with pytest.raises(TargetError, match="toml or .json"):
        load_config(p)
    q = tmp_path / "cfg.toml"
    q.write_text("[array\n")
    with pytest.raises(TargetError, match="invalid TOML"):
        load_config(q)
    with pytest.raises(TargetError, match="not found"):
        load_config(tmp_path / "missing.toml")
