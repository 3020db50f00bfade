"""Tests for the model registry, StyleModel settings and the AdaIN model (stylize, loss, gradients)."""

import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxtickets import config as config_lib
from jaxtickets.errors import UserError
from jaxtickets.models import adain, get_model, model_names
from jaxtickets.models.decoder import Decoder
from jaxtickets.models.vgg import VGGEncoder

W = 1 / 16
ENC = VGGEncoder("r41", width=W)
DEC = Decoder(width=W)
enc_apply = jax.jit(ENC.apply)
dec_apply = jax.jit(DEC.apply)


def _config(**kw):
  base = dict(name="adain", width=W, train_encoder=False, dtype="float32", content_weight=None, style_weight=None)
  return ml_collections.ConfigDict({**base, **kw})


@pytest.fixture(scope="module")
def setup():
  """Both variants of the model, shared frozen VGG params, params from the same rng, and images."""
  frozen, trained = adain.AdaIN(_config()), adain.AdaIN(_config(train_encoder=True))
  vgg = frozen.init_vgg(jax.random.key(0))
  images = jax.random.uniform(jax.random.key(2), (4, 32, 32, 3))
  return dict(frozen=frozen, trained=trained, vgg=vgg, p_frozen=frozen.init(jax.random.key(1), vgg),
              p_trained=trained.init(jax.random.key(1), vgg), content=images[:2], style=images[2:],
              loss_frozen=jax.jit(frozen.loss),
              # One compile serves both the loss value and its gradient (compiles dominate these tests).
              value_and_grad_trained=jax.jit(jax.value_and_grad(trained.loss, has_aux=True)))


def _np_stats(x):
  x = np.asarray(x, np.float64)
  return x.mean(axis=(1, 2)), np.sqrt(x.var(axis=(1, 2), ddof=1) + 1e-5)


def _np_adain(c, s):
  (mc, sc), (ms, ss) = _np_stats(c), _np_stats(s)
  return (ss[:, None, None] * (np.asarray(c, np.float64) - mc[:, None, None]) / sc[:, None, None]
          + ms[:, None, None])


def _hand_loss(enc, dec, vgg, content, style, target_from_encoder=False):
  """The AdaIN loss written out with the modules' apply and numpy statistics."""
  vgg_s = enc_apply({"params": vgg}, style)
  t = _np_adain(enc_apply({"params": enc}, content)["r41"], enc_apply({"params": enc}, style)["r41"])
  if target_from_encoder:
    target = t
  else:
    target = _np_adain(enc_apply({"params": vgg}, content)["r41"], vgg_s["r41"])
  g = enc_apply({"params": vgg}, dec_apply({"params": dec}, jnp.asarray(t, jnp.float32)))
  content_loss = np.mean((np.asarray(g["r41"], np.float64) - target) ** 2)
  style_loss = 0.0
  for tap in ("r11", "r21", "r31", "r41"):
    (mg, sg), (ms, ss) = _np_stats(g[tap]), _np_stats(vgg_s[tap])
    style_loss += np.mean((mg - ms) ** 2) + np.mean((sg - ss) ** 2)
  return content_loss + 10.0 * style_loss, content_loss, style_loss


def test_registry():
  assert model_names() == ("adain", "sanet", "lst", "manet", "adaattn", "mccnet")
  assert get_model("adain") is adain.AdaIN is adain.Model
  with pytest.raises(UserError, match=re.escape("Unknown model 'foo': choose one of adain, sanet, lst,")):
    get_model("foo")


def test_settings_and_config_overrides():
  m = adain.AdaIN(_config())
  assert (m.name, m.divisor, m.encoder_depth, m.loss_depth) == ("adain", 8, "r41", "r41")
  assert m.groups == ("decoder",) and m.loss_weights == {"content": 1.0, "style": 10.0, "identity": 0.0}
  m = adain.AdaIN(_config(train_encoder=True, style_weight=3.0, dtype="bfloat16"))
  assert m.groups == ("encoder", "decoder") and m.loss_weights == {"content": 1.0, "style": 3.0, "identity": 0.0}
  assert m.dtype == jnp.bfloat16
  # Fields a config leaves out take config.default_config()'s values, the one source of defaults (width and dtype
  # values are checked by config.validate, tested in test_config).
  bare = adain.AdaIN(ml_collections.ConfigDict({"name": "adain"}))
  defaults = config_lib.default_config().model
  assert (bare.width, bare.train_encoder, bare.dtype) == (defaults.width, defaults.train_encoder, jnp.float32)
  assert bare.groups == ("encoder", "decoder")


def test_init_groups_and_encoder_copy(setup):
  vgg, p = setup["vgg"], setup["p_trained"]
  assert set(setup["p_frozen"]) == {"decoder"} and set(p) == {"encoder", "decoder"}
  assert jax.tree.structure(p["encoder"]) == jax.tree.structure(vgg)
  for a, b in zip(jax.tree.leaves(p["encoder"]), jax.tree.leaves(vgg)):
    np.testing.assert_array_equal(a, b)
    assert a.unsafe_buffer_pointer() != b.unsafe_buffer_pointer()  # donating params must not delete vgg
  for a, b in zip(jax.tree.leaves(p["decoder"]), jax.tree.leaves(setup["p_frozen"]["decoder"])):
    np.testing.assert_array_equal(a, b)


def test_loss_identical_for_frozen_and_trained_encoder_at_init(setup):
  s = setup
  lf, mf = s["loss_frozen"](s["p_frozen"], s["vgg"], s["content"], s["style"], jax.random.key(0))
  (lt, mt), _ = s["value_and_grad_trained"](s["p_trained"], s["vgg"], s["content"], s["style"], jax.random.key(0))
  assert set(mf) == {"content", "style", "total"} and mf["total"].dtype == jnp.float32
  np.testing.assert_allclose(lt, lf, rtol=1e-5)
  np.testing.assert_allclose(mt["content"], mf["content"], rtol=1e-5)
  expected, lc, ls = _hand_loss(s["vgg"], s["p_frozen"]["decoder"], s["vgg"], s["content"], s["style"])
  np.testing.assert_allclose(lf, expected, rtol=1e-4)
  np.testing.assert_allclose([mf["content"], mf["style"]], [lc, ls], rtol=1e-4)


def test_trained_encoder_loss_matches_hand_formulation_with_frozen_target(setup):
  s = setup
  noise = np.random.default_rng(0)
  enc = jax.tree.map(lambda a: a * (1 + 0.2 * noise.normal(size=a.shape)).astype(np.float32), s["vgg"])
  params = {"encoder": enc, "decoder": s["p_trained"]["decoder"]}
  (loss, _), _ = s["value_and_grad_trained"](params, s["vgg"], s["content"], s["style"], jax.random.key(0))
  expected = _hand_loss(enc, params["decoder"], s["vgg"], s["content"], s["style"])[0]
  np.testing.assert_allclose(loss, expected, rtol=1e-4)
  # A target taken from the trained encoder would be measurably different.
  wrong = _hand_loss(enc, params["decoder"], s["vgg"], s["content"], s["style"], target_from_encoder=True)[0]
  assert abs(wrong - expected) > 1e-2 * abs(expected)


def test_gradient_reaches_the_trained_encoder(setup):
  s = setup
  _, g = s["value_and_grad_trained"](s["p_trained"], s["vgg"], s["content"], s["style"], jax.random.key(0))
  assert set(g) == {"encoder", "decoder"}
  for name, layer in {**g["encoder"], **g["decoder"]}.items():
    assert float(jnp.abs(layer["kernel"]).max()) > 0, name


@pytest.mark.parametrize("which", ["frozen", "trained"])
def test_stylize_alpha(setup, which):
  s = setup
  m, p = s[which], s[f"p_{which}"]
  fc = enc_apply({"params": s["vgg"]}, s["content"])["r41"]
  fs = enc_apply({"params": s["vgg"]}, s["style"])["r41"]
  stylize = jax.jit(m.stylize)
  out0 = stylize(p, s["vgg"], s["content"], s["style"], jnp.float32(0.0))
  np.testing.assert_allclose(out0, dec_apply({"params": p["decoder"]}, fc), rtol=1e-5, atol=1e-6)
  out1 = stylize(p, s["vgg"], s["content"], s["style"], jnp.float32(1.0))
  expected = dec_apply({"params": p["decoder"]}, jnp.asarray(_np_adain(fc, fs), jnp.float32))
  assert out1.shape == (2, 32, 32, 3) and out1.dtype == jnp.float32
  np.testing.assert_allclose(out1, expected, rtol=1e-4, atol=1e-5)


def test_bfloat16_loss_is_float32_and_close(setup):
  s = setup
  m = adain.AdaIN(_config(dtype="bfloat16"))
  loss, metrics = jax.jit(m.loss)(s["p_frozen"], s["vgg"], s["content"], s["style"], jax.random.key(0))
  ref, _ = s["loss_frozen"](s["p_frozen"], s["vgg"], s["content"], s["style"], jax.random.key(0))
  assert loss.dtype == metrics["style"].dtype == jnp.float32
  np.testing.assert_allclose(loss, ref, rtol=0.1)


def test_random_reinit_redraws_every_layer_from_its_theta_0_distribution():
  # theta_0's encoder is a copy of the random He-normal VGG (std sqrt(2 / fan_in)), its decoder PyTorch's default
  # (std sqrt(1 / (3 fan_in)), 2.45x smaller): the re-draw must keep each layer's scale, not only the decoder's.
  model = adain.AdaIN(_config(width=1 / 8, train_encoder=True))
  vgg = model.init_vgg(jax.random.key(0))
  theta_0 = model.init(jax.random.key(1), vgg)
  fresh = model.reinit(jax.random.key(2), vgg, theta_0)
  checked = {"encoder": 0, "decoder": 0}
  for group in checked:
    for name, layer in theta_0[group].items():
      before, after = np.asarray(layer["kernel"]), np.asarray(fresh[group][name]["kernel"])
      assert after.shape == before.shape and not np.allclose(after, before), f"{group}/{name} was not re-drawn"
      if before.size >= 1000:  # the std of 1000 draws is within 10% with a wide margin (its s.e. is ~2%)
        ratio = float(np.std(after) / np.std(before))
        assert abs(ratio - 1) < 0.1, f"{group}/{name}: re-drawn std / theta_0's std = {ratio:.3f}"
        checked[group] += 1
  assert checked["encoder"] >= 7 and checked["decoder"] >= 7, checked


def test_identity_term_is_the_pixel_mse_of_the_content_stylized_with_itself(setup):
  plain = adain.AdaIN(_config())
  weighted = adain.AdaIN(_config(identity_weight=50.0))
  assert "identity" not in plain.terms and weighted.terms == ("content", "style", "identity")
  vgg, params, c, s = setup["vgg"], setup["p_frozen"], setup["content"], setup["style"]
  total0, m0 = plain.loss(params, vgg, c, s, None)
  total, m = weighted.loss(params, vgg, c, s, None)
  # By hand: the decoder applied to the content's own r41 features after AdaIN with themselves.
  f = np.asarray(enc_apply({"params": vgg}, c)["r41"], np.float64)
  rec = dec_apply({"params": params["decoder"]}, jnp.asarray(_np_adain(f, f), jnp.float32))
  hand = float(np.mean((np.asarray(rec, np.float64) - np.asarray(c, np.float64)) ** 2))
  np.testing.assert_allclose(float(m["identity"]), hand, rtol=1e-4)
  np.testing.assert_allclose(float(total), float(total0) + 50.0 * hand, rtol=1e-4)
  np.testing.assert_allclose(float(m["content"]), float(m0["content"]), rtol=1e-6)


@pytest.mark.parametrize("name", ["adain", "sanet", "adaattn"])
def test_decoder_init_he_normal_draws_kernels_with_he_variance(name):
  model_class = get_model(name)
  fields = dict(name=name, width=0.25, train_encoder=False, dtype="float32")
  he = model_class(ml_collections.ConfigDict({**fields, "decoder_init": "he_normal"}))
  ref = model_class(ml_collections.ConfigDict(fields))
  vgg = ref.init_vgg(jax.random.key(0))
  for model, expected in ((he, lambda fan_in: 2.0 / fan_in), (ref, None)):
    params = model.init(jax.random.key(1), vgg)["decoder"]
    big = [(k, np.asarray(v["kernel"])) for k, v in params.items() if np.asarray(v["kernel"]).size > 20000]
    assert big
    for layer, kernel in big:
      fan_in = np.prod(kernel.shape[:-1])
      if expected is not None:
        # He-normal is a truncated normal scaled to variance 2 / fan_in.
        np.testing.assert_allclose(kernel.var(), expected(fan_in), rtol=0.1, err_msg=layer)
      else:
        assert kernel.var() < 0.8 * 2.0 / fan_in, layer  # the reference inits are well below He's variance


def test_decoder_init_refuses_unknown_names():
  c = config_lib.default_config()
  c.model.decoder_init = "xavier"
  with pytest.raises(UserError, match=r"model.decoder_init.*reference, he_normal"):
    config_lib.validate(c, data=False)
