"""Tests for MCCNet: parameter counts, the MCC transform against numpy (with and without eps), the loss terms
by hand, stylize, and a 2-round IMP run that prunes the transform."""

import copy
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxtickets import config as config_lib
from jaxtickets.store import checkpoint, workdir as workdir_lib
from jaxtickets.run import imp
from jaxtickets.errors import UserError
from jaxtickets.models import get_model, mccnet
from helpers import tiny_config, EARLY_BIRD, assert_early_bird_and_stability_work

W = 1 / 16
TAPS = ("r11", "r21", "r31", "r41", "r51")


def _config(**kw):
  base = dict(name="mccnet", width=W, train_encoder=False, dtype="float32")
  return ml_collections.ConfigDict({**base, **kw})


def _count(tree):
  return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))


@pytest.fixture(scope="module")
def setup():
  """A frozen-encoder model, its VGG and params, images, and the jitted functions the tests share."""
  m = mccnet.MCCNet(_config())
  vgg = m.init_vgg(jax.random.key(0))
  params = m.init(jax.random.key(1), vgg)
  images = jax.random.uniform(jax.random.key(2), (4, 32, 32, 3))
  return dict(m=m, vgg=vgg, params=params, content=images[:2], style=images[2:], loss=jax.jit(m.loss),
              stylize=jax.jit(m.stylize), vgg_apply=jax.jit(m.vgg.apply),
              enc_apply=jax.jit(m.encoder.apply), dec_apply=jax.jit(m.decoder.apply))


# ---- numpy formulation (models.md §7.3, §7.4) ----

def _np_norm(x):
  x = np.asarray(x, np.float64)
  return (x - x.mean(axis=(1, 2), keepdims=True)) / np.sqrt(x.var(axis=(1, 2), ddof=1, keepdims=True) + 1e-5)


def _np_weights(g, eps):
  g = g.reshape(g.shape[0], -1, g.shape[-1])
  num, den = (g * g).sum(axis=1), g.sum(axis=1)
  if eps:
    den = np.where(den < 0, -1.0, 1.0) * np.maximum(np.abs(den), eps * g.shape[1])
  return num / den


def _np_mcc(p, c, s, eps):
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
  conv = lambda q, x: x @ q["kernel"][0, 0] + q["bias"]
  f, g = conv(p["f"], _np_norm(c)), conv(p["g"], _np_norm(s))
  a = _np_weights(g, eps) @ p["fc"]["kernel"] + p["fc"]["bias"]
  return conv(p["out_conv"], f * a[:, None, None, :]) + np.asarray(c, np.float64)


def _np_mean_std(x):
  x = np.asarray(x, np.float64)
  return x.mean(axis=(1, 2)), np.sqrt(x.var(axis=(1, 2), ddof=1) + 1e-5)


def _np_mse(a, b):
  return np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)


def _transform_params(ch, seed, g_bias):
  rng = np.random.default_rng(seed)
  layer = lambda shape, bias: {"kernel": (rng.normal(size=shape) / np.sqrt(ch)).astype(np.float32),
                               "bias": np.asarray(bias, np.float32)}
  return {"f": layer((1, 1, ch, ch), 0.1 * rng.normal(size=ch)), "g": layer((1, 1, ch, ch), g_bias),
          "out_conv": layer((1, 1, ch, ch), 0.1 * rng.normal(size=ch)),
          "fc": layer((ch, ch), 0.1 * rng.normal(size=ch))}


# ---- settings and counts ----

def test_registry_settings_and_full_width_counts():
  assert get_model("mccnet") is mccnet.MCCNet is mccnet.Model
  m = mccnet.MCCNet(_config(width=1.0, train_encoder=True))
  assert (m.name, m.divisor, m.encoder_depth, m.loss_depth) == ("mccnet", 8, "r41", "r51")
  assert m.groups == ("encoder", "decoder", "transform") and m.mcc_eps == 1e-5
  assert m.loss_weights == {"content": 3.0, "style": 10.0, "identity1": 70.0, "identity2": 1.0,
                            "noise": 3000.0, "tv": 1e-4}
  vgg = jax.eval_shape(m.init_vgg, jax.random.key(0))
  shapes = jax.eval_shape(m.init, jax.random.key(1), vgg)
  assert _count(vgg) == 12_944_972
  assert {g: _count(v) for g, v in shapes.items()} == {"encoder": 3_505_740, "decoder": 3_505_219,
                                                       "transform": 1_050_624}
  assert set(shapes["transform"]) == {"f", "g", "out_conv", "fc"}  # the unused h conv is not created
  assert shapes["transform"]["fc"]["kernel"].shape == (512, 512)
  assert shapes["transform"]["g"]["kernel"].shape == (1, 1, 512, 512)
  m = mccnet.MCCNet(_config(noise_weight=5.0, mcc_eps=0.0))
  assert m.groups == ("decoder", "transform") and m.loss_weights["noise"] == 5.0 and m.mcc_eps == 0.0
  for bad in (-1e-3, "small", True):
    with pytest.raises(UserError, match="config.model.mcc_eps"):
      mccnet.MCCNet(_config(mcc_eps=bad))


# ---- the transform ----

def test_channel_correlation_eps_floor_keeps_sign_and_matches_reference_at_zero():
  # Dyadic values: the float sums are exact. Columns: sum 0, sum -2^-20, sum -3 (large), sum +4 (large).
  g = np.array([[0.5, 0.5, -1.0, 1.0], [-0.5, -0.5, -1.0, 1.0], [0.25, 0.25, -0.5, 1.0],
                [-0.25, -0.25 - 2.0 ** -20, -0.5, 1.0]], np.float32).reshape(1, 2, 2, 4)
  num = (g.reshape(4, 4) ** 2).sum(axis=0)
  eps = 1e-5
  out = np.asarray(mccnet.channel_correlation(jnp.asarray(g), eps))[0]
  np.testing.assert_allclose(out, num / np.array([4 * eps, -4 * eps, -3.0, 4.0]), rtol=1e-6)
  raw = np.asarray(mccnet.channel_correlation(jnp.asarray(g), 0.0))[0]
  assert np.isinf(raw[0])  # the reference's division by a zero sum
  np.testing.assert_allclose(raw[1:], num[1:] / np.array([-2.0 ** -20, -3.0, 4.0]), rtol=1e-6)
  np.testing.assert_array_equal(raw[2:], out[2:])  # large sums are untouched by the floor
  np.testing.assert_allclose(out, _np_weights(g.astype(np.float64), eps)[0], rtol=1e-6)


@pytest.mark.parametrize("eps", [0.0, 1e-5])
def test_transform_matches_numpy_on_safe_denominators(eps):
  ch = 8
  rng = np.random.default_rng(0)
  c, s = rng.normal(size=(2, 4, 3, ch)), rng.normal(size=(2, 3, 5, ch))
  # sum_n G = N * bias_g: biases of both signs, well away from 0, keep the reference's division safe.
  p = _transform_params(ch, 1, rng.choice([-1.0, 1.0], ch) * rng.uniform(0.3, 1.0, ch))
  out = jax.jit(mccnet.MCC(eps=eps).apply)({"params": p}, jnp.asarray(c, jnp.float32), jnp.asarray(s, jnp.float32))
  assert out.shape == c.shape and out.dtype == jnp.float32
  np.testing.assert_allclose(out, _np_mcc(p, c, s, 0.0), rtol=1e-4, atol=1e-4)


def test_transform_eps_guards_a_dead_channel_where_the_reference_gives_nan():
  ch = 8
  rng = np.random.default_rng(3)
  c, s = rng.normal(size=(2, 4, 4, ch)), rng.normal(size=(2, 4, 4, ch))
  p = _transform_params(ch, 4, rng.uniform(0.3, 1.0, ch))
  # A fully pruned g output channel with a zero bias: G is exactly 0 there, so sum G^2 / sum G = 0 / 0.
  p["g"]["kernel"][..., 2] = 0.0
  p["g"]["bias"][2] = 0.0
  args = (jnp.asarray(c, jnp.float32), jnp.asarray(s, jnp.float32))
  ref = mccnet.MCC(eps=0.0).apply({"params": p}, *args)
  assert np.isnan(np.asarray(ref)).all()
  out = mccnet.MCC(eps=1e-5).apply({"params": p}, *args)
  expected = _np_mcc(p, c, s, 1e-5)
  assert np.isfinite(expected).all()
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def test_transform_bfloat16_returns_bfloat16_close_to_float32():
  ch = 8
  rng = np.random.default_rng(5)
  c, s = (jnp.asarray(rng.normal(size=(1, 4, 4, ch)), jnp.float32) for _ in range(2))
  p = _transform_params(ch, 6, rng.uniform(0.3, 1.0, ch))
  out = jax.jit(mccnet.MCC(dtype=jnp.bfloat16).apply)({"params": p}, c.astype(jnp.bfloat16), s.astype(jnp.bfloat16))
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(out, np.float32), _np_mcc(p, c, s, 0.0), rtol=0.05, atol=0.1)


def test_init_gives_g_a_nonzero_bias(setup):
  p = setup["params"]["transform"]
  assert np.all(np.asarray(p["f"]["bias"]) == 0)
  bias = np.asarray(p["g"]["bias"])
  assert np.all(bias != 0) and np.abs(bias).max() <= 1 / np.sqrt(bias.size)


# ---- losses ----

def test_tv_loss_is_a_sum_over_the_batch():
  x = np.random.default_rng(0).normal(size=(2, 5, 4, 3)).astype(np.float32)
  expected = np.abs(np.diff(x, axis=2)).sum() + np.abs(np.diff(x, axis=1)).sum()
  np.testing.assert_allclose(mccnet.tv_loss(jnp.asarray(x)), expected, rtol=1e-5)
  np.testing.assert_allclose(mccnet.tv_loss(jnp.asarray(np.concatenate([x, x]))), 2 * expected, rtol=1e-5)


def test_loss_terms_match_a_hand_computation(setup):
  s = setup
  m, vgg, p, c, st = s["m"], s["vgg"], s["params"], s["content"], s["style"]
  total, metrics = s["loss"](p, vgg, c, st, jax.random.key(7))
  assert set(metrics) == {"total", "content", "style", "identity1", "identity2", "noise", "tv"}
  assert all(v.dtype == jnp.float32 and v.shape == () for v in metrics.values())
  feats = lambda x: jax.tree.map(lambda a: np.asarray(a, np.float64), s["vgg_apply"]({"params": vgg}, x))
  ics = s["stylize"](p, vgg, c, st, 1.0)  # D(MCC(c, s)) with the frozen encoder
  icc, iss = s["stylize"](p, vgg, c, c, 1.0), s["stylize"](p, vgg, st, st, 1.0)
  vc, vs, g, gcc, gss = map(feats, (c, st, ics, icc, iss))
  hand = {
      "content": sum(_np_mse(_np_norm(g[t]), _np_norm(vc[t])) for t in ("r41", "r51")),
      "style": sum(_np_mse(_np_mean_std(g[t])[i], _np_mean_std(vs[t])[i]) for t in TAPS for i in (0, 1)),
      "identity1": _np_mse(icc, c) + _np_mse(iss, st),
      "identity2": sum(_np_mse(gcc[t], vc[t]) + _np_mse(gss[t], vs[t]) for t in TAPS),
      "tv": np.abs(np.diff(np.asarray(ics, np.float64), axis=1)).sum()
            + np.abs(np.diff(np.asarray(ics, np.float64), axis=2)).sum(),
  }
  for k, v in hand.items():
    np.testing.assert_allclose(metrics[k], v, rtol=2e-4, err_msg=k)
  weights = {"content": 3.0, "style": 10.0, "identity1": 70.0, "identity2": 1.0, "noise": 3000.0, "tv": 1e-4}
  np.testing.assert_allclose(total, sum(weights[k] * metrics[k] for k in weights), rtol=1e-5)
  np.testing.assert_allclose(metrics["total"], total)


def test_noise_loss_uses_the_rng(setup):
  s = setup
  m, vgg, p, c, st = s["m"], s["vgg"], s["params"], s["content"], s["style"]
  _, a = s["loss"](p, vgg, c, st, jax.random.key(11))
  _, b = s["loss"](p, vgg, c, st, jax.random.key(11))
  _, other = s["loss"](p, vgg, c, st, jax.random.key(12))
  assert float(a["noise"]) > 0 and float(a["noise"]) == float(b["noise"])
  assert abs(float(other["noise"]) - float(a["noise"])) > 1e-3 * float(a["noise"])
  for k in ("content", "style", "identity1", "identity2", "tv"):  # only the noise term is random
    np.testing.assert_allclose(other[k], a[k], rtol=1e-6)
  # By hand: sigma ~ U(0.01, 0.02) once, n ~ N(0, sigma^2) per pixel, MSE(D(MCC(phi(c + n), phi(s))), Ics).
  k_sigma, k_noise = jax.random.split(jax.random.key(11))
  sigma = float(jax.random.uniform(k_sigma, (), jnp.float32, 0.01, 0.02))
  noise = np.asarray(sigma * jax.random.normal(k_noise, c.shape, jnp.float32))
  assert 0.01 <= sigma <= 0.02 and abs(noise.std() / sigma - 1) < 0.05
  enc = lambda x: s["enc_apply"]({"params": m.encoder_params(p, vgg)}, x)["r41"]
  t = m.transform.apply({"params": p["transform"]}, enc(c + noise), enc(st))
  hand = _np_mse(s["dec_apply"]({"params": p["decoder"]}, t), s["stylize"](p, vgg, c, st, 1.0))
  np.testing.assert_allclose(a["noise"], hand, rtol=1e-3)


def test_trained_encoder_loss_equals_frozen_at_init(setup):
  s = setup
  m = mccnet.MCCNet(_config(train_encoder=True))
  p = m.init(jax.random.key(1), s["vgg"])
  assert set(p) == {"encoder", "decoder", "transform"}
  _, metrics = jax.jit(m.loss)(p, s["vgg"], s["content"], s["style"], jax.random.key(7))
  _, ref = s["loss"](s["params"], s["vgg"], s["content"], s["style"], jax.random.key(7))
  for k in ref:
    np.testing.assert_allclose(metrics[k], ref[k], rtol=1e-4, err_msg=k)


# ---- stylize ----

def test_stylize_alpha_blends_mcc_outputs_and_any_size(setup):
  s = setup
  m, vgg, p, c, st = s["m"], s["vgg"], s["params"], s["content"], s["style"]
  fc = s["enc_apply"]({"params": m.encoder_params(p, vgg)}, c)["r41"]
  fs = s["enc_apply"]({"params": m.encoder_params(p, vgg)}, st)["r41"]
  mcc = lambda a, b: np.asarray(m.transform.apply({"params": p["transform"]}, a, b), np.float64)
  dec = lambda t: s["dec_apply"]({"params": p["decoder"]}, jnp.asarray(t, jnp.float32))
  for alpha in (0.0, 0.3, 1.0):
    out = s["stylize"](p, vgg, c, st, alpha)
    assert out.shape == (2, 32, 32, 3) and out.dtype == jnp.float32
    expected = dec(alpha * mcc(fc, fs) + (1 - alpha) * mcc(fc, fc))
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
  jitted = copy.copy(m)
  jitted.stylize = s["stylize"]  # stylize_any_size calls it: one compile instead of op-by-op dispatch
  odd = jitted.stylize_any_size(p, vgg, c[:, :30, :27], st[:, :20, :36])  # style of another size too
  assert odd.shape == (2, 30, 27, 3) and np.isfinite(np.asarray(odd)).all()


# ---- IMP ----

@pytest.mark.e2e
def test_two_round_imp_prunes_the_transform(tmp_path):
  # A frozen encoder keeps the compile (the bulk of this test) short; the trained-encoder loss is tested above.
  config = tiny_config(model__name="mccnet", model__train_encoder=False, sparsity__scope="decoder,transform",
                       imp__rounds=2, train__steps=3, **EARLY_BIRD)
  imp.run(config_lib.resolve(config), str(tmp_path))
  assert_early_bird_and_stability_work(str(tmp_path), 2)
  t = checkpoint.load_ticket(workdir_lib.ticket_dir(str(tmp_path), "imp", 2))
  assert set(t.masks) == {"decoder", "transform"}
  for name in ("f", "g", "out_conv", "fc"):
    mask = np.asarray(t.masks["transform"][name]["kernel"])
    assert 0 < (~mask).sum() < mask.size, name
    assert np.asarray(t.masks["transform"][name]["bias"]).all()  # biases are never pruned
  for path, p, p0, mask in zip(jax.tree_util.tree_leaves_with_path(t.trained_params),
                                jax.tree.leaves(t.trained_params), jax.tree.leaves(t.rewind_params),
                                jax.tree.leaves(t.masks)):
    p, p0, mask = np.asarray(p), np.asarray(p0), np.asarray(mask)
    assert np.all(p[~mask] == 0)
    # Training moved every layer: gradients reach all of them.
    assert np.any(p[mask] != p0[mask]), jax.tree_util.keystr(path[0])
  assert all(np.isfinite(t.metrics[k]) for k in ("total", "content", "style", "noise", "tv"))
