"""The simulated accelerator end to end: a whole zoo model compiled for ``-t sim`` and run,
every offloaded layer executed by the functional simulator and timed by the cycle model.

    python -m accelc.benchmarks.bench_sim [--models deit-tiny] [--passes int8 shift-add:terms=2]
                                          [--sim-config CFG.toml] [--rounds 3] [--json out.json]

Prints, per model and rewrite: layers offloaded, the share of GEMM MACs offloaded, simulated
cycles and latency at the machine's clock, energy, and the simulator's own wall time per
inference (median over rounds; issue 5's bar: a DeiT-like model in < 60 s on 2 cores). The
host build of the same rewrite runs beside it as a check that the outputs are equal.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time


def measure(name: str, spec: str, sim_config: str | None, rounds: int) -> dict:
    import numpy as np

    import accelc
    from accelc import models
    from accelc.targets.sim import offload

    onnx_model = models.build(name)
    feeds = models.example_inputs(name)
    opts = {"sim_config": sim_config} if sim_config else {}
    t0 = time.perf_counter()
    sim = accelc.compile(onnx_model, target="sim", passes=[spec], target_options=opts)
    compile_s = time.perf_counter() - t0
    acc = sim.meta.accelerator
    cpu_out = accelc.compile(onnx_model, passes=[spec]).run(feeds)
    walls = []
    for _ in range(rounds):
        offload.reset_log()
        t0 = time.perf_counter()
        out = sim.run(feeds)
        walls.append(time.perf_counter() - t0)
    equal = all(np.array_equal(out[k], v) for k, v in cpu_out.items())
    cycles = sum(r["total_cycles"] for r in offload.RUN_LOG)
    return {"model": name, "passes": spec, "layers": len(offload.RUN_LOG),
            "offloaded_fraction": acc["offloaded_fraction"], "cycles": cycles,
            "latency_ms": cycles / acc["config"]["clock_mhz"] / 1e3, "energy_uj": acc["energy_uj"],
            "stall_fraction": 1 - acc["compute_cycles"] / max(acc["total_cycles"], 1),
            "sim_wall_s": statistics.median(walls), "sim_wall_all_s": walls, "compile_s": compile_s,
            "equal_to_cpu_build": equal, "estimate_matches_run": cycles == acc["total_cycles"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="deit-tiny", help="comma-separated zoo models (default deit-tiny)")
    ap.add_argument("--passes", nargs="+", default=["int8", "shift-add:terms=2"], help="one rewrite per row")
    ap.add_argument("--sim-config", help="machine config (default: the sim target's default machine)")
    ap.add_argument("--rounds", type=int, default=3, help="timed inferences per row (median)")
    ap.add_argument("--json", help="also write the rows as JSON")
    args = ap.parse_args(argv)
    rows = [measure(m, p, args.sim_config, args.rounds) for m in args.models.split(",") for p in args.passes]
    print(f"{'model':<14}{'passes':<20}{'layers':>7}{'MACs off':>9}{'cycles':>11}{'sim ms':>8}{'µJ':>9}"
          f"{'stall':>7}{'wall s':>8}{'= cpu':>7}")
    for r in rows:
        print(f"{r['model']:<14}{r['passes']:<20}{r['layers']:>7}{r['offloaded_fraction'] * 100:>8.1f}%"
              f"{r['cycles']:>11}{r['latency_ms']:>8.2f}{r['energy_uj']:>9.1f}{r['stall_fraction'] * 100:>6.1f}%"
              f"{r['sim_wall_s']:>8.1f}{'yes' if r['equal_to_cpu_build'] else 'NO':>7}")
    print("(wall s: the simulator's own time per inference, median; sim ms: simulated latency at the clock)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0 if all(r["equal_to_cpu_build"] and r["estimate_matches_run"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
