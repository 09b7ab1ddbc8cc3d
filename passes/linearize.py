"""``accelc.linearize``: softmax attention → linear attention, O(N·d²) instead of O(N²·d).

Pattern: the softmax-attention sites of ``passes.attention`` (scaled Q·Kᵀ, optional key-bias
padding mask or causal mask, softmax, ·V), per site all heads at once.

Rewrite: ``call_tir(linear_attention, q, k, v[, key_bias][, gate])`` replacing ``P·V``:
- ``variant=angular`` (default; Castling-ViT's angular kernel ``0.5 + q̂·k̂/π`` with the kernel
  sum as normalizer, the post-training-sane form): ``o = (0.5·Σv + q̂(k̂ᵀV)/π) / (0.5·N + q̂·Σk̂/π)``;
  causal sites take the chunked form (Linearized-LLM: the exact causal chunk plus the running
  ``k̂ᵀV`` state of the previous chunks);
- ``variant=castling``: the paper's form ``o = 0.5·V + q̂(k̂ᵀV)/π`` then ``o/‖o‖`` (its DWConv
  branch is zero post-training); non-causal sites only.
- ``local=softmax`` (the calibration knob): exact softmax inside each query's chunk, the
  linear kernel for the far keys, mixed per head and query row by the calibrated softmax mass
  inside the chunk (a part whose keys are all masked drops out).

A key-bias mask ``b_j`` weights key ``j`` by ``exp(b_j)`` in the linear forms (exact for 0/−∞
padding masks). Knobs: the options below; ``layers``/``exclude`` patterns over site names
(``/encoder/layer.3/attention/self``); the last ``keep_last`` sites stay softmax (the papers
keep the last ViT stage as MSA).

Validate: ``accelc report MODEL --passes linearize`` (end-to-end and per-site cosine, MACs);
the kernels equal their explicit O(N²) forms in the tests. Post-training linearization loses
fidelity (the papers fine-tune): the report gives the measured number.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import append_record, check_knobs, register
from .attention import pass_record, plan, require_maps, rewrite_sites, site_inputs, site_record

VARIANTS = ("angular", "castling")
LOCALS = ("none", "softmax")


@dataclass(frozen=True)
class LinearizeOptions:
    variant: str = "angular"  # angular (kernel-normalized) | castling (paper form, non-causal)
    chunk: int = 64  # tokens per chunk: causal chunked form, and local=softmax's window
    local: str = "none"  # none | softmax (exact softmax inside the chunk; calibrated gate)
    layers: tuple = ()  # allow patterns over attention site names; empty = every site
    exclude: tuple = ()  # deny patterns
    keep_last: int = 1  # the last N matched sites stay softmax

    def __post_init__(self):
        from .shift_add import _patterns

        checks = [
            ("variant", self.variant in VARIANTS, f"one of {', '.join(VARIANTS)}"),
            ("chunk", self.chunk >= 1, "≥ 1"),
            ("local", self.local in LOCALS, f"one of {', '.join(LOCALS)}"),
            ("keep_last", self.keep_last >= 0, "≥ 0"),
        ]
        check_knobs(self, checks)
        if self.variant == "castling" and self.local != "none":
            raise ValueError("local must be none with variant=castling (the paper form has no local part)")
        object.__setattr__(self, "layers", _patterns(self.layers))
        object.__setattr__(self, "exclude", _patterns(self.exclude))

    def describe(self) -> str:
        return f"{self.variant}" + (f" local-softmax c={self.chunk}" if self.local == "softmax" else f" c={self.chunk}")


def local_gates(avg_map: np.ndarray, chunk: int, causal: bool) -> np.ndarray:
    """``[H, N]``: each head's and query row's calibrated softmax mass inside the row's local
    chunk — the gate mixing exact local softmax with the linear far part.

    Per row, not per head: the local mass depends strongly on the position (the CLS row, rows
    next to padding, the first causal chunk), and a per-head mean over rows mixes them.
    """
    h, n, _ = avg_map.shape
    gates = np.ones((h, n), np.float32)
    for i in range(n):
        c0 = (i // chunk) * chunk
        local = slice(c0, i + 1) if causal else slice(c0, min(c0 + chunk, n))
        gates[:, i] = avg_map[:, i, local].sum(axis=-1)
    return np.clip(gates, 0.0, 1.0)


@register("linearize", LinearizeOptions,
          calibration=lambda opts: "maps" if opts.local == "softmax" else None)
def linearize(options: LinearizeOptions | None = None, maps: dict | None = None):
    """Softmax attention → linear attention (angular / Castling / chunked causal), O(N·d²)."""
    from . import module_pass

    opts = options or LinearizeOptions()

    @module_pass("accelc.linearize")
    def transform(mod, _ctx):
        return run(mod, opts, maps)

    return transform


def run(mod, opts: LinearizeOptions, maps: dict | None = None):
    from tvm import relax

    from ..schedules import attention_linear as kernels
    from . import linear_attention_math as lam

    def refuse(site):
        if site.causal and opts.variant == "castling":
            return "causal attention: the castling form is non-causal (use variant=angular)"
        return ""

    sites, chosen = plan(mod, "linearize", opts, refuse)
    if not chosen:
        return mod
    if opts.local == "softmax":
        require_maps("linearize", chosen, maps, "local=softmax ")
    infos = {}

    def emit(bb, site):
        b, h, n, d = site.shape
        gate = None
        if opts.local == "softmax":
            gate = local_gates(np.asarray(maps[site.name]), opts.chunk, site.causal)
        func = kernels.linear_attention(b, h, n, d, variant=opts.variant, causal=site.causal,
                                        chunk=opts.chunk, local=opts.local == "softmax", scale=site.scale,
                                        key_bias=site.key_bias is not None)
        gv = bb.add_func(func.without_attr("global_symbol"), "linear_attention")
        args = site_inputs(bb, site)
        if gate is not None:
            args.append(relax.const(gate))
        rec = site_record(site)
        rec.update({"kernel": "linear_attention", "variant": opts.variant, "chunk": opts.chunk,
                    "local": opts.local,
                    "gate_mean": None if gate is None else [round(float(g), 4) for g in gate.mean(axis=1)],
                    "macs_before": int(b * h * lam.softmax_attention_macs(n, d)),
                    "macs_after": int(b * h * lam.linear_attention_macs(
                        n, d, opts.variant, site.causal, opts.chunk, opts.local == "softmax"))})
        infos[site.name] = rec
        return relax.call_tir(gv, args, relax.TensorType([b, h, n, d], "float32"))

    new = rewrite_sites(mod, chosen, emit)
    return append_record(mod, new, pass_record("linearize", opts, sites, [infos[s.name] for s in chosen]))


__all__ = ["LinearizeOptions", "linearize", "local_gates", "run"]
