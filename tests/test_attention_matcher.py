"""The attention matcher shared by polarize and linearize, and the calibration that feeds them."""

from __future__ import annotations

import numpy as np
import pytest

from accelc.compiler import calibrate
from accelc.compiler.frontend import import_model
from accelc.errors import InputError, PassError
from accelc.passes.attention import find_sites, select_sites
from accelc.passes.naming import module_weight_names
from accelc.tests.util import attention_model


def _sites(model):
    im = import_model(model)
    return im, find_sites(im.mod["main"], module_weight_names(im.mod))


@pytest.mark.parametrize("mask, causal, key_bias", [("none", False, False), ("key", False, True),
                                                     ("causal", True, False)])
@pytest.mark.parametrize("scale_op", ["Div", "Mul"])
def test_matches_exported_attention(mask, causal, key_bias, scale_op):
    _, sites = _sites(attention_model(n=16, d_model=32, heads=2, mask=mask, scale_op=scale_op))
    assert len(sites) == 1 and sites[0].matched, sites[0].skip
    s = sites[0]
    assert s.shape == (1, 2, 16, 16) and s.name == "/attn"
    assert s.scale == pytest.approx(0.25) and s.causal is causal and (s.key_bias is not None) is key_bias


@pytest.mark.parametrize("kw, why", [(dict(mask="other"), "neither all-true nor causal"),
                                     (dict(probs_output=True), "used outside P·V")])
def test_refuses_what_it_cannot_prove(kw, why):
    _, sites = _sites(attention_model(**kw))
    assert len(sites) == 1 and not sites[0].matched and why in sites[0].skip


@pytest.mark.parametrize("name, count, shape, causal, key_bias, prefix", [
    ("deit-tiny", 12, (1, 3, 197, 64), False, False, "/blocks/blocks.0/attn"),
    ("bert-encoder", 6, (1, 12, 128, 32), False, True, "/encoder/layer.0/attention/self"),
    ("gpt2-like", 4, (1, 6, 64, 64), True, False, "/transformer/h.0/attn"),
])
def test_matches_every_zoo_attention(name, count, shape, causal, key_bias, prefix):
    from accelc import models

    _, sites = _sites(models.build(name))
    assert len(sites) == count and all(s.matched for s in sites)
    assert {s.shape for s in sites} == {shape}
    assert all(s.causal is causal and (s.key_bias is not None) is key_bias for s in sites)
    assert sites[0].name == prefix and len({s.name for s in sites}) == count


def test_site_selection_knobs():
    from accelc import models

    _, sites = _sites(models.build("gpt2-like"))
    assert [s.name for s in select_sites(sites, keep_last=1)] == [s.name for s in sites[:3]]
    picked = select_sites(sites, layers=("*/h.1/*",))
    assert [s.name for s in picked] == ["/transformer/h.1/attn"]
    assert len(select_sites(sites, exclude=("*/h.[01]/*",))) == 2
    with pytest.raises(PassError, match="layers pattern 'nope' matches no attention site"):
        select_sites(sites, layers=("nope",))


def test_attention_maps_are_the_mean_softmax():
    """The calibration taps the compiled model's softmax: equal to NumPy's, rows sum to 1."""
    model = attention_model(n=8, d_model=16, heads=2, mask="causal")
    im = import_model(model)
    rng = np.random.default_rng(0)
    feeds = [{"x": rng.standard_normal((1, 8, 16)).astype(np.float32)} for _ in range(3)]
    maps = calibrate.attention_maps(im, feeds)
    assert list(maps) == ["/attn"]
    w = {t.name: np.frombuffer(t.raw_data, np.float32).reshape(16, 16) for t in model.graph.initializer
         if t.name in ("wq", "wk")}
    want = np.zeros((2, 8, 8))
    for f in feeds:
        q = (f["x"][0] @ w["wq"]).reshape(8, 2, 8).transpose(1, 0, 2)
        k = (f["x"][0] @ w["wk"]).reshape(8, 2, 8).transpose(1, 0, 2)
        s = q @ k.transpose(0, 2, 1) / np.sqrt(8) + np.where(np.tril(np.ones((8, 8))), 0, -np.inf)
        p = np.exp(s - s.max(-1, keepdims=True))
        want += p / p.sum(-1, keepdims=True) / len(feeds)
    np.testing.assert_allclose(maps["/attn"], want, rtol=1e-4, atol=1e-6)


def test_calibration_file_errors(tmp_path):
    from accelc.compiler.frontend import TensorSpec

    specs = [TensorSpec("x", (1, 4), "float32")]
    np.savez(tmp_path / "ok.npz", x=np.zeros((3, 1, 4), np.float32))
    assert len(calibrate.load_calibration(tmp_path / "ok.npz", specs)) == 3
    np.savez(tmp_path / "one.npz", x=np.zeros((1, 4), np.float32))
    assert len(calibrate.load_calibration(tmp_path / "one.npz", specs)) == 1
    np.savez(tmp_path / "bad.npz", x=np.zeros((2, 5), np.float32))
    with pytest.raises(InputError, match=r"'x' has shape \[2, 5\]; expected \[1, 4\]"):
        calibrate.load_calibration(tmp_path / "bad.npz", specs)
    np.savez(tmp_path / "other.npz", y=np.zeros((1, 4), np.float32))
    with pytest.raises(InputError, match="lacks input"):
        calibrate.load_calibration(tmp_path / "other.npz", specs)
    with pytest.raises(InputError, match="no such calibration file"):
        calibrate.load_calibration(tmp_path / "missing.npz", specs)
