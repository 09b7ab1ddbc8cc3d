"""``accelc.polarize``: ViTCoD sparsity polarization of softmax attention.

Pattern: the softmax-attention sites of ``passes.attention``.

Rewrite, per site (all heads), from calibrated average attention maps (``maps``: the driver's
``compiler.calibrate.attention_maps`` over ``--calib`` samples):
1. a fixed mask per head: per query row the top entries up to ``info_cut`` of the attention
   mass, or the top ``1 − sparsity`` of the row; the diagonal and (``keep_cls``) the CLS row
   and column always kept; causal sites never keep future keys;
2. polarization: key columns kept by more than ``tau``·N rows are global (dense) tokens, moved
   first by a per-head permutation of K/V;
3. ``call_tir(polarized_attention, q, k, v[, key_bias], perm, gcount, indptr, indices)``: the
   dense part (all rows × global keys, a GEMM) and the sparse part (SDDMM + SpMM over CSR)
   joined by one row softmax (shared max and sum) — equal to ``masked_fill(−inf)`` softmax
   attention on the effective mask.

Masks, the dense/sparse split and the achieved sparsity are stored in the module's
``accelc.rewrites`` record (and so in the artifact's report).

Validate: ``accelc report MODEL --passes polarize:sparsity=0.9`` (end-to-end cosine, retained
attention mass, |global| per head, MACs); the kernel equals the masked dense reference in the
tests. ViTCoD fine-tunes with the fixed mask; post-training the report gives the measured loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import append_record, check_knobs, register
from .attention import pass_record, plan, require_maps, rewrite_sites, site_inputs, site_record


@dataclass(frozen=True)
class PolarizeOptions:
    sparsity: float = 0.9  # fraction of attention entries pruned per head (ignored with info_cut)
    info_cut: float = 0.0  # > 0: keep per row the top entries holding this attention mass instead
    tau: float = 0.25  # global-token threshold: kept by more than tau·N query rows
    keep_cls: bool = True  # always keep token 0's row and column (CLS; the attention sink)
    layers: tuple = ()  # allow patterns over attention site names; empty = every site
    exclude: tuple = ()  # deny patterns
    keep_last: int = 0  # the last N matched sites stay dense softmax

    def __post_init__(self):
        from .shift_add import _patterns

        checks = [
            ("sparsity", 0.0 <= self.sparsity < 1.0, "in [0, 1)"),
            ("info_cut", 0.0 <= self.info_cut <= 1.0, "in (0, 1] (0 = use sparsity)"),
            ("tau", 0.0 <= self.tau <= 1.0, "in [0, 1] (a fraction of the tokens)"),
            ("keep_last", self.keep_last >= 0, "≥ 0"),
        ]
        check_knobs(self, checks)
        object.__setattr__(self, "layers", _patterns(self.layers))
        object.__setattr__(self, "exclude", _patterns(self.exclude))

    def describe(self) -> str:
        how = f"info_cut={self.info_cut}" if self.info_cut else f"sparsity={self.sparsity}"
        return f"{how} tau={self.tau}"


def pattern_summary(pat) -> dict:
    """What the report and the artifact keep of a site's pattern: the split, per head."""
    return {"sparsity": round(pat.achieved_sparsity, 5),
            "sparsity_per_head": [round(float(x), 5) for x in pat.sparsity],
            "global_tokens": [int(g) for g in pat.global_tokens],
            "global_token_ids": [[int(t) for t in pat.perm[hd, :g]] for hd, g in enumerate(pat.gcount)],
            "nnz_sparse": [int(x) for x in pat.nnz_sparse],
            "retained_mass": round(float(np.mean(pat.retained_mass)), 5),
            "retained_mass_per_head": [round(float(x), 5) for x in pat.retained_mass],
            "dense_ratio": [round(float(x), 4) for x in pat.dense_ratio]}


@register("polarize", PolarizeOptions, calibration=lambda _opts: "maps")
def polarize(options: PolarizeOptions | None = None, maps: dict | None = None):
    """ViTCoD: attention → fixed dense (global tokens) + sparse (CSR) parts, one joint softmax."""
    from . import module_pass

    opts = options or PolarizeOptions()

    @module_pass("accelc.polarize")
    def transform(mod, _ctx):
        return run(mod, opts, maps)

    return transform


def run(mod, opts: PolarizeOptions, maps: dict | None = None):
    from tvm import relax

    from ..schedules import attention_sparse as kernels
    from . import polarize_math as pm

    sites, chosen = plan(mod, "polarize", opts)
    if not chosen:
        return mod
    require_maps("polarize", chosen, maps)
    infos = {}

    def emit(bb, site):
        b, h, n, d = site.shape
        pat = pm.pattern_from_maps(np.asarray(maps[site.name]),
                                   info_cut=opts.info_cut or None,
                                   sparsity=None if opts.info_cut else opts.sparsity,
                                   tau=opts.tau * n, keep_cls=opts.keep_cls, causal=site.causal)
        kargs = pat.kernel_args()
        func = kernels.polarized_attention(b, h, n, d, int(kargs[3].shape[0]), site.scale,
                                           causal=site.causal, key_bias=site.key_bias is not None)
        gv = bb.add_func(func.without_attr("global_symbol"), "polarized_attention")
        args = site_inputs(bb, site) + [relax.const(np.ascontiguousarray(a, dtype=np.int32)) for a in kargs]
        rec = site_record(site)
        rec.update({"kernel": "polarized_attention", **pattern_summary(pat),
                    "macs_before": int(pm.dense_attention_macs(n, d, h, b)),
                    "macs_after": int(pm.polarized_macs(pat, d, b))})
        infos[site.name] = rec
        return relax.call_tir(gv, args, relax.TensorType([b, h, n, d], "float32"))

    new = rewrite_sites(mod, chosen, emit)
    return append_record(mod, new, pass_record("polarize", opts, sites, [infos[s.name] for s in chosen]))


__all__ = ["PolarizeOptions", "polarize", "run"]
