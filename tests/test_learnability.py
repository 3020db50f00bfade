"""What makes the dense network learn at CPU scale, and the check that says whether it did: AdaIN's shallow content
taps, the cosine schedule and the reconstruction PSNR the evaluation reports."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxtickets import config as config_lib
from jaxtickets.core import evaluate
from jaxtickets.run import train
from jaxtickets.errors import UserError
from jaxtickets.models import adain
from jaxtickets.models.vgg import VGGEncoder

W = 1 / 16


def _model(**kw):
  base = dict(name="adain", width=W, train_encoder=False, dtype="float32")
  return adain.AdaIN(ml_collections.ConfigDict({**base, **kw}))


def _np_adain(c, s):
  """AdaIN in numpy float64: content's channels with the style's mean and (unbiased + 1e-5) std."""
  c, s = np.asarray(c, np.float64), np.asarray(s, np.float64)
  mc, ms = c.mean(axis=(1, 2), keepdims=True), s.mean(axis=(1, 2), keepdims=True)
  sc = np.sqrt(c.var(axis=(1, 2), ddof=1, keepdims=True) + 1e-5)
  ss = np.sqrt(s.var(axis=(1, 2), ddof=1, keepdims=True) + 1e-5)
  return ss * (c - mc) / sc + ms


def test_shallow_content_taps_add_their_own_adain_targets():
  reference, shallow = _model(), _model(content_taps="r11,r21,r41")
  vgg = reference.init_vgg(jax.random.key(0))
  params = reference.init(jax.random.key(1), vgg)
  images = jax.random.uniform(jax.random.key(2), (4, 32, 32, 3))
  content, style = images[:2], images[2:]
  _, m_ref = jax.jit(reference.loss)(params, vgg, content, style, None)
  _, m_shallow = jax.jit(shallow.loss)(params, vgg, content, style, None)
  # By hand: the output's loss-VGG taps against AdaIN(content tap, style tap) at r11 and r21, added to r41's term.
  enc = jax.jit(VGGEncoder("r41", width=W).apply)
  vc, vs = enc({"params": vgg}, content), enc({"params": vgg}, style)
  out = reference.stylize(params, vgg, content, style)
  g = enc({"params": vgg}, out)
  extra = sum(np.mean((np.asarray(g[t], np.float64) - _np_adain(vc[t], vs[t])) ** 2) for t in ("r11", "r21"))
  np.testing.assert_allclose(m_shallow["content"], m_ref["content"] + extra, rtol=1e-4)
  assert extra > 1e-2 * float(m_ref["content"])  # the shallow taps change the loss measurably
  np.testing.assert_allclose(m_shallow["style"], m_ref["style"], rtol=1e-5)


@pytest.mark.parametrize("taps", ["r11,r99", ",", "relu1_1"])
def test_unknown_content_taps_are_one_sentence(taps):
  with pytest.raises(UserError, match="content_taps"):
    _model(content_taps=taps)


def test_cosine_schedule_matches_the_formula_and_anneals_to_zero():
  c = ml_collections.ConfigDict(dict(schedule="cosine", lr=1e-3, steps=100, warmup_steps=10))
  for i in (0, 5, 10, 30, 55, 99, 100):
    want = 1e-3 * i / 10 if i < 10 else 0.5e-3 * (1 + math.cos(math.pi * (i - 10) / 90))
    assert float(train.learning_rate(c, jnp.float32(i))) == pytest.approx(want, rel=1e-4, abs=1e-9), i
  assert float(train.learning_rate(c, jnp.float32(100))) == pytest.approx(0.0, abs=1e-12)


def test_cosine_schedule_compiles_per_round_length_only_when_chosen():
  cosine = ml_collections.ConfigDict(dict(config_lib.default_config().train.to_dict(), schedule="cosine"))
  inverse = config_lib.default_config().train
  longer = lambda c: ml_collections.ConfigDict(dict(c.to_dict(), steps=c.steps * 2))
  assert train.step_settings(cosine) != train.step_settings(longer(cosine))
  assert train.step_settings(inverse) == train.step_settings(longer(inverse))


def test_warmup_longer_than_the_round_is_refused():
  c = config_lib.default_config()
  c.train.schedule, c.train.steps, c.train.warmup_steps = "cosine", 100, 100
  with pytest.raises(UserError, match="train.warmup_steps"):
    config_lib.validate(c)


def test_psnr_by_hand():
  ref = jnp.full((8, 8, 3), 0.5)
  assert float(evaluate.psnr(ref + 0.1, ref)) == pytest.approx(20.0, abs=1e-4)  # mse 0.01
  assert float(evaluate.psnr(ref, ref)) == pytest.approx(100.0, abs=1e-3)  # capped, not infinite


def test_evaluation_reports_the_reconstruction_and_flat_psnr_per_pair():
  model = _model()
  vgg = model.init_vgg(jax.random.key(0))
  params = model.init(jax.random.key(1), vgg)
  rng = np.random.default_rng(0)
  pairs = {"content": rng.random((3, 32, 32, 3), np.float32), "style": rng.random((3, 32, 32, 3), np.float32),
           "names": ["a__x", "b__y", "a__y"]}
  masks = jax.tree.map(lambda p: np.ones(p.shape, bool), params)
  out = evaluate.evaluate(evaluate.make_eval_fn(model), params, masks, vgg, pairs, batch_size=2)
  assert out["pair_names"] == pairs["names"]
  for j, c in enumerate(pairs["content"]):
    flat = np.broadcast_to(c.mean(axis=(0, 1)), c.shape)
    want_flat = 10 * np.log10(1 / np.mean((flat - c) ** 2))
    recon = np.clip(np.asarray(model.stylize(params, vgg, c[None], c[None]))[0], 0, 1)
    want_recon = 10 * np.log10(1 / np.mean((recon - c) ** 2))
    assert out["per_pair"][evaluate.FLAT_PSNR][j] == pytest.approx(want_flat, abs=1e-3)
    assert out["per_pair"][evaluate.RECON_PSNR][j] == pytest.approx(want_recon, abs=1e-3)
  assert out[evaluate.RECON_PSNR] == pytest.approx(np.mean(out["per_pair"][evaluate.RECON_PSNR]))


def test_evaluation_flags_a_network_whose_output_is_constant():
  """All-zero decoder weights give the same (black) image whatever the input: OUTPUT_STD is 0 on every pair and the
  ticket counts as collapsed. At this width with a random VGG a fresh decoder's output is about 1e-4 everywhere,
  black too; with its first layer scaled up the output varies, and the flag goes."""
  model = _model()
  vgg = model.init_vgg(jax.random.key(0))
  params = model.init(jax.random.key(1), vgg)
  params["decoder"]["conv4_1"] = jax.tree.map(lambda x: 3000.0 * x, params["decoder"]["conv4_1"])
  rng = np.random.default_rng(1)
  pairs = {"content": rng.random((2, 32, 32, 3), np.float32), "style": rng.random((2, 32, 32, 3), np.float32)}
  masks = jax.tree.map(lambda p: np.ones(p.shape, bool), params)
  eval_fn = evaluate.make_eval_fn(model)
  alive = evaluate.evaluate(eval_fn, params, masks, vgg, pairs, batch_size=2)
  dead = evaluate.evaluate(eval_fn, jax.tree.map(jnp.zeros_like, params), masks, vgg, pairs, batch_size=2)
  assert min(alive["per_pair"][evaluate.OUTPUT_STD]) > 10 * evaluate.CONSTANT_OUTPUT_STD
  assert max(dead["per_pair"][evaluate.OUTPUT_STD]) < evaluate.CONSTANT_OUTPUT_STD
  dead.update(terms=list(model.terms))
  assert evaluate.collapse_reason(dead) == evaluate.CONSTANT_OUTPUT
  # Not constant, but no better than a flat image at giving its content back: an untrained network counts as dead.
  alive.update(terms=list(model.terms))
  assert alive[evaluate.RECON_PSNR] < alive[evaluate.FLAT_PSNR]
  assert evaluate.collapse_reason(alive) == evaluate.BELOW_FLAT


def _metrics(**kw):
  """Hand-made evaluation metrics of a healthy network over three pairs."""
  m = {"terms": ["content", "style"], "total": 1.5, "content": 1.0, "style": 0.5, "recon_psnr": 20.0,
       "flat_psnr": 14.0, "output_std": 0.2,
       "per_pair": {"total": [1.4, 1.5, 1.6], "content": [1.0, 1.0, 1.0], "style": [0.4, 0.5, 0.6],
                    "output_std": [0.1, 0.2, 0.3]}}
  per_pair = kw.pop("per_pair", {})
  m.update(kw)
  m["per_pair"] = {**m["per_pair"], **per_pair}
  return m


def test_collapse_reasons():
  assert evaluate.collapse_reason(_metrics()) is None
  assert evaluate.collapse_reason(_metrics(total=math.nan)) == "NaN loss"
  assert evaluate.collapse_reason(_metrics(per_pair={"style": [0.4, math.inf, 0.6]})) == "NaN loss"
  assert evaluate.collapse_reason(_metrics(per_pair={"content": [1.0, None, 1.0]})) == "NaN loss"  # NaN as JSON null
  assert evaluate.collapse_reason(_metrics(recon_psnr=13.9)) == "reconstruction below a flat image"
  assert evaluate.collapse_reason(_metrics(recon_psnr=math.nan)) == "reconstruction below a flat image"
  assert evaluate.collapse_reason(_metrics(recon_psnr=14.0)) is None  # not below
  assert evaluate.collapse_reason(_metrics(per_pair={"output_std": [0.0, 1e-4, 5e-4]})) == "constant output"
  assert evaluate.collapse_reason(_metrics(per_pair={"output_std": [0.0, 1e-4, 0.05]})) is None  # one pair varies
  # Tickets evaluated before the output's spread (or the learnability check) was recorded.
  old = _metrics()
  del old["output_std"], old["per_pair"]["output_std"], old["recon_psnr"], old["flat_psnr"]
  assert evaluate.collapse_reason(old) is None
  assert evaluate.collapse_reason({"total": 1.0}) is None
