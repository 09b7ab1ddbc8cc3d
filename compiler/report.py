"""Fidelity report: what a graph pass costs in accuracy and buys in ops, bytes and energy.

``fidelity_report(model, passes)`` compiles the model with and without the passes, runs both
on the same inputs and compares every output (cosine, relative L2, top-1 agreement for
logits), then adds the passes' own per-layer records (``accelc.rewrites`` on the module:
weight error, output cosine on N(0,1) probe inputs, op counts, packed bytes) and an energy
estimate from the 45 nm table (Horowitz ISSCC'14; ShiftAddNet/ShiftAddLLM's unit costs).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Mapping, Sequence

import numpy as np

#: pJ per operation, 45 nm (reference/seed-algorithms.md §7): compute only.
ENERGY_PJ = {
    "fp32": {"mult": 3.7, "add": 0.9, "shift": 0.13, "lut": 0.37},
    "int32": {"mult": 3.1, "add": 0.1, "shift": 0.13, "lut": 0.37},
    "int8": {"mult": 0.2, "add": 0.1, "shift": 0.024, "lut": 0.37},  # int8 multiplies, int32 accumulation
}
#: pJ per weight byte read from DRAM (200 pJ per 16-bit access, Eyeriss-style model).
DRAM_PJ_PER_BYTE = 100.0


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    den = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / den) if den > 0 else float(np.array_equal(a, b))


def compare_outputs(ref: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray]) -> list[dict]:
    """Per output: cosine (whole tensor, and the worst leading-axis row), relative L2, and
    top-1 agreement over the last axis when the output looks like logits."""
    rows = []
    for name, want in ref.items():
        have = np.asarray(got[name])
        want = np.asarray(want)
        entry = {"output": name, "shape": list(want.shape)}
        if want.dtype.kind != "f":
            entry["exact"] = bool(np.array_equal(want, have))
            rows.append(entry)
            continue
        entry["cosine"] = _cos(want, have)
        entry["min_row_cosine"] = min(_cos(w, h) for w, h in zip(want.reshape(want.shape[0], -1),
                                                                    have.reshape(have.shape[0], -1))) \
            if want.ndim >= 1 and want.shape[0] > 0 else entry["cosine"]
        entry["rel_l2"] = float(np.linalg.norm(have.astype(np.float64) - want) / max(np.linalg.norm(want), 1e-30))
        if want.ndim >= 2 and want.shape[-1] > 1:
            entry["top1_agreement"] = float(np.mean(want.argmax(-1) == have.argmax(-1)))
        rows.append(entry)
    return rows


def energy_pj(ops: Mapping[str, float]) -> float:
    table = ENERGY_PJ[ops.get("datapath", "fp32")]
    return float(sum(ops.get(k, 0) * table[k] for k in ("mult", "add", "shift", "lut")))


def dense_ops(rows: int, k: int, n: int) -> dict:
    return {"mult": rows * k * n, "add": rows * k * n, "shift": 0, "lut": 0, "datapath": "fp32"}


def summarize(records: Sequence[dict]) -> dict:
    """Totals over the rewritten layers: ops, weight bytes and energy, before → after."""
    before = {"mult": 0, "add": 0, "shift": 0, "lut": 0}
    after = dict(before)
    e_before = e_after = 0.0
    b_before = b_after = 0
    for rec in records:
        for layer in rec.get("layers", []):
            dense = dense_ops(layer["rows"], layer["k"], layer["n"])
            for key in before:
                before[key] += dense[key]
                after[key] += layer["ops"].get(key, 0)
            e_before += energy_pj(dense) + layer["bytes_before"] * DRAM_PJ_PER_BYTE
            e_after += energy_pj(layer["ops"]) + layer["bytes_after"] * DRAM_PJ_PER_BYTE
            b_before += layer["bytes_before"]
            b_after += layer["bytes_after"]
    return {"ops_before": before, "ops_after": after, "weight_bytes_before": b_before,
            "weight_bytes_after": b_after, "energy_uj_before": e_before * 1e-6, "energy_uj_after": e_after * 1e-6}


def fidelity_report(model, passes: Sequence, input_shapes=None, feeds: Mapping | None = None,
                    target: str = "cpu", timing_repeat: int = 5, calibration=None,
                    calib_samples: int = 4, target_options: Mapping | None = None) -> dict:
    """Compile ``model`` with and without ``passes``, run both on ``feeds`` (default: the zoo's
    example inputs or seeded random ones) and report fidelity, ops, bytes and energy.

    ``calibration``: samples (feed dicts or an ``.npz`` path) for passes that calibrate; default
    ``calib_samples`` seeded random samples (seeds 1..N, never the compared seed 0)."""
    from . import pipeline
    from .api import _samples
    from .frontend import import_model
    from .runtime import CompiledModel

    pipeline.check_passes(passes)  # a bad spec fails before the compiles below
    imported = import_model(model, input_shapes)
    base_ex, base_meta = pipeline.build(imported, "cpu")  # the original, as the reference
    base = CompiledModel(base_ex, base_meta, executable=base_ex)
    samples = _samples(calibration, imported)
    if samples is None:
        samples = [base.example_feeds(seed) for seed in range(1, calib_samples + 1)]
    mod, names = pipeline.apply_passes(imported, passes, samples)
    records = json.loads(str(mod.attrs["accelc.rewrites"])) if mod.attrs and "accelc.rewrites" in mod.attrs else []
    new_ex, new_meta = pipeline.build(dataclasses.replace(imported, mod=mod), target,
                                      target_options=dict(target_options or {}))
    new_meta.passes = list(names)
    new = CompiledModel(new_ex, new_meta, executable=new_ex)
    if feeds is None:
        feeds = base.example_feeds(0)
    ref = base.run(feeds)
    if target == "sim":
        from ..targets.sim import offload

        offload.reset_log()
    got = new.run(feeds)
    report = {
        "model": imported.name,
        "passes": list(names),
        "target": target,
        "outputs": compare_outputs(ref, got),
        "rewrites": records,
        "totals": summarize(records),
    }
    if target == "sim":
        report["accelerator"] = accelerator_summary(records, list(offload.RUN_LOG), offload.current_config())
    if any("sites" in r for r in records):
        site_output_cosines(imported, mod, feeds, records)
    if timing_repeat and target != "sim":  # a simulated run's wall time measures the simulator
        report["latency_ms"] = {"original": base.benchmark(feeds, repeat=timing_repeat).median_ms,
                                "rewritten": new.benchmark(feeds, repeat=timing_repeat).median_ms}
    return report


def accelerator_summary(records, log: list, cfg) -> dict:
    """The sim target's per-layer table: each offloaded layer's cycles (compute vs stall),
    utilisation, mapping efficiency, bytes, energy and roofline point, plus the share of the
    model's constant-weight GEMM MACs offloaded. ``log``: the run's ``offload.RUN_LOG``, or
    ``offload.estimate`` of each layer of ``offload.PLAN`` at compile time."""
    layers = [r for rec in records for r in rec.get("layers", [])]
    dense = [d for rec in records for d in rec.get("dense", [])]
    total = sum(r["rows"] * r["k"] * r["n"] for r in layers + dense)
    rows, pending = [], iter(layers)
    for entry in log:  # layers the machine could not take stay on the host: skip them by shape
        layer = next((la for la in pending if (la["rows"], la["k"], la["n"]) == (entry["m"], entry["k"], entry["n"])),
                     None)
        rows.append({"name": layer["name"] if layer else entry["op"],
                     **{k: entry[k] for k in ("op", "m", "k", "n", "terms", "total_cycles", "compute_cycles",
                                              "stall_cycles", "utilisation", "mapping_efficiency", "dram_bytes",
                                              "sram_bytes", "roofline")},
                     "energy_uj": entry["energy_pj"]["total"] * 1e-6})
    offloaded = sum(r["m"] * r["k"] * r["n"] for r in rows)
    cycles = sum(r["total_cycles"] for r in rows)
    return {"config": cfg.to_dict(), "layers": rows, "offloaded_macs": offloaded, "gemm_macs": total,
            "offloaded_fraction": offloaded / total if total else 0.0,
            "total_cycles": cycles, "compute_cycles": sum(r["compute_cycles"] for r in rows),
            "dram_bytes": sum(r["dram_bytes"] for r in rows), "energy_uj": sum(r["energy_uj"] for r in rows),
            "latency_us": cycles / cfg.clock_mhz}


def format_accelerator(acc: dict) -> list[str]:
    """The per-layer accelerator table (``accelc compile -t sim`` and ``accelc report -t sim``)."""
    arr = acc["config"]["array"]
    out = [f"\nsimulated accelerator ({arr['rows']}×{arr['cols']} {arr['pe_type']} PEs, {arr['dataflow']} "
           f"dataflow, {acc['config']['clock_mhz']} MHz): {len(acc['layers'])} layers offloaded, "
           f"{acc['offloaded_fraction'] * 100:.1f}% of the constant-weight GEMM MACs",
           f"  {'layer':<36}{'op':>11}{'M×K×N':>16}{'cycles':>10}{'stall':>9}{'util':>6}{'map':>6}"
           f"{'DRAM':>8}{'SRAM':>8}{'µJ':>8}{'MAC/B':>7}{'MAC/cyc':>9}{'roof':>7}"]
    for r in acc["layers"]:
        name = r["name"] if len(r["name"]) <= 35 else "…" + r["name"][-34:]
        op = r["op"] + (f"×{r['terms']}" if r["op"] == "shift_gemm" else "")
        roof = r["roofline"]
        mkn = f"{r['m']}×{r['k']}×{r['n']}"
        out.append(f"  {name:<36}{op:>11}{mkn:>16}{r['total_cycles']:>10}"
                   f"{r['stall_cycles']:>9}{r['utilisation']:>6.2f}{r['mapping_efficiency']:>6.2f}"
                   f"{_fmt_count(r['dram_bytes']):>8}{_fmt_count(r['sram_bytes']):>8}{r['energy_uj']:>8.2f}"
                   f"{roof['intensity']:>7.1f}{roof['attained']:>9.1f}{roof['roof']:>7.0f}")
    stall = acc["total_cycles"] - acc["compute_cycles"]
    out.append(f"  total: {acc['total_cycles']} cycles = {acc['latency_us']:.1f} µs on the accelerator "
               f"({stall} stall), {_fmt_count(acc['dram_bytes'])}B DRAM traffic, {acc['energy_uj']:.2f} µJ")
    out.append("  (util: PE actions / (cycles·R·C); map: SCALE-Sim mapping efficiency over the tiles; "
               "roofline: PE actions per DRAM byte, attained and bound actions per cycle)")
    return out


_ATTENTION_KERNELS = ("linear_attention", "polarized_attention")


def site_output_cosines(imported, mod, feeds, records) -> None:
    """Adds ``output_cos`` to every rewritten attention site: the cosine between the site's
    output (``P·V``, [B, H, N, d]) in the rewritten model and in the original, on ``feeds``
    (errors of earlier rewritten sites included: what the layer really sees)."""
    from tvm import relax

    from ..passes.attention import find_sites
    from ..passes.naming import module_weight_names
    from .calibrate import run_tapped

    sites = [s for r in records for s in r.get("sites", [])]
    if not sites:
        return
    wanted = [s["name"] for s in sites]
    original = {s.name: s.output[0] for s in find_sites(imported.mod["main"], module_weight_names(imported.mod))
                if s.matched}
    calls = []
    for block in mod["main"].body.blocks:
        for b in block.bindings:
            v = b.value
            if isinstance(v, relax.Call) and getattr(v.op, "name", "") == "relax.call_tir":
                callee = mod[v.args[0]] if v.args[0] in mod.get_global_vars() else None
                kernel = callee.attrs.get("accelc.kernel") if callee is not None and callee.attrs else None
                if kernel is not None and str(kernel) in _ATTENTION_KERNELS:
                    calls.append(b.var)
    if len(calls) != len(wanted) or any(n not in original for n in wanted):
        return  # several attention passes stacked: the mapping is not one to one
    got: dict = {}
    want: dict = {}
    run_tapped(imported, [original[n] for n in wanted], [feeds], lambda i, x: want.__setitem__(i, x))
    run_tapped(dataclasses.replace(imported, mod=mod), calls, [feeds], lambda i, x: got.__setitem__(i, x))
    for i, site in enumerate(sites):
        site["output_cos"] = round(_cos(want[i], got[i]), 6)


def _fmt_count(v: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= div:
            return f"{v / div:.2f}{unit}"
    return f"{v:.0f}"


def _format_attention(rec: dict) -> list[str]:
    """The attention passes' per-site table (polarize: sparsity, global tokens, retained mass)."""
    sites = rec["sites"]
    out = [f"\n{rec['pass']} ({rec.get('describe', '')}): {len(sites)} attention sites rewritten, "
           f"{len(rec.get('kept', []))} left as softmax"
           + (f" ({', '.join(sorted({k['why'] for k in rec['kept']}))})" if rec.get("kept") else "")]
    polar = rec["pass"] == "polarize"
    head = f"  {'site':<40}{'H×N×d':>13}{'MACs':>19}{'out cos':>9}"
    head += f"{'sparsity':>10}{'|G| per head':>16}{'mass kept':>11}" if polar else f"{'form':>22}"
    out.append(head)
    for s in sites:
        name = s["name"] if len(s["name"]) <= 39 else "…" + s["name"][-38:]
        shape = f"{s['heads']}×{s['tokens']}×{s['head_dim']}"
        macs = f"{_fmt_count(s['macs_before'])}→{_fmt_count(s['macs_after'])}"
        cos = f"{s['output_cos']:.4f}" if "output_cos" in s else "-"
        line = f"  {name:<40}{shape:>13}{macs:>19}{cos:>9}"
        if polar:
            g = s.get("global_tokens", [])
            gtxt = ",".join(map(str, g[:4])) + ("…" if len(g) > 4 else "")
            line += f"{s.get('sparsity', 0) * 100:>9.1f}%{gtxt:>16}{s.get('retained_mass', 0):>11.3f}"
        else:
            form = ("causal chunked" if s["causal"] else s["variant"]) + (" +local" if s.get("local") == "softmax" else "")
            line += f"{form:>22}"
        out.append(line)
    return out


def format_report(report: dict) -> str:
    out = [f"{report['model']}: {' + '.join(report['passes']) or 'no passes'} on {report['target']}"]
    for rec in report["rewrites"]:
        if "sites" in rec:
            out.extend(_format_attention(rec))
            continue
        out.append(f"\n{rec['pass']} ({rec.get('describe', '')}): {len(rec['layers'])} layers rewritten, "
                   f"{len(rec.get('dense', []))} left dense"
                   + (f" ({', '.join(sorted({d['why'] for d in rec['dense']}))})" if rec.get("dense") else ""))
        out.append(f"  {'layer':<44}{'K×N':>11}{'kernel':>16}{'w relL2':>9}{'probe cos':>10}{'bytes':>17}")
        for layer in rec["layers"]:
            name = layer["name"] if len(layer["name"]) <= 43 else "…" + layer["name"][-42:]
            out.append(f"  {name:<44}{layer['k']:>5}×{layer['n']:<5}{layer['kernel']:>16}"
                       f"{layer['weight_rel_l2']:>9.4f}{layer['probe_cos']:>10.5f}"
                       f"{_fmt_count(layer['bytes_before']):>9}→{_fmt_count(layer['bytes_after']):<8}")
    out.append("\nend to end (rewritten vs original, same inputs)")
    out.append(f"  {'output':<28}{'cosine':>10}{'min row':>10}{'rel L2':>10}{'top-1':>8}")
    for o in report["outputs"]:
        if "cosine" not in o:
            out.append(f"  {o['output']:<28}{'exact' if o['exact'] else 'differs':>10}")
            continue
        top1 = f"{o['top1_agreement'] * 100:.1f}%" if "top1_agreement" in o else "-"
        out.append(f"  {o['output']:<28}{o['cosine']:>10.5f}{o['min_row_cosine']:>10.5f}{o['rel_l2']:>10.4f}{top1:>8}")
    t = report["totals"]
    if t["weight_bytes_before"]:
        ob, oa = t["ops_before"], t["ops_after"]
        out.append("\nrewritten layers, per inference      before        after")
        for key in ("mult", "add", "shift", "lut"):
            out.append(f"  {key + ' ops':<32}{_fmt_count(ob[key]):>10}{_fmt_count(oa[key]):>13}")
        out.append(f"  {'weight bytes':<32}{_fmt_count(t['weight_bytes_before']):>10}{_fmt_count(t['weight_bytes_after']):>13}"
                   f"   ({t['weight_bytes_before'] / max(t['weight_bytes_after'], 1):.1f}x smaller)")
        out.append(f"  {'energy, 45 nm (µJ)':<32}{t['energy_uj_before']:>10.2f}{t['energy_uj_after']:>13.2f}"
                   f"   (compute + weight DRAM reads)")
    if "accelerator" in report:
        out.extend(format_accelerator(report["accelerator"]))
    if "latency_ms" in report:
        lat = report["latency_ms"]
        out.append(f"\nlatency on {report['target']}: {lat['original']:.3f} ms → {lat['rewritten']:.3f} ms "
                   f"({lat['rewritten'] / lat['original']:.2f}x)")
    return "\n".join(out)
