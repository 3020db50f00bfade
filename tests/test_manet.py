"""Tests for MANet: parameter counts, the MA module against numpy, the loss terms and pairings, stylize, IMP."""

import functools
import os
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from helpers import tiny_config, EARLY_BIRD, assert_early_bird_and_stability_work
from jaxtickets import config as config_lib
from jaxtickets.store import checkpoint, workdir as workdir_lib
from jaxtickets.run import imp
from jaxtickets.errors import UserError
from jaxtickets.models import get_model, manet
from jaxtickets.models.base import StyleModel
from jaxtickets.models.vgg import VGGEncoder
from test_attention import nonzero_biases, np_sanet_block, np_ssa, to_bcn, to_nhwc

W = 1 / 16
VGG51 = VGGEncoder("r51", width=W)
vgg_apply = jax.jit(VGG51.apply)
WEIGHTS = {"content": 1.0, "style": 5.0, "identity1": 50.0, "identity2": 1.0, "disentangle": 1.0}


def _config(**kw):
  return ml_collections.ConfigDict({**dict(name="manet", width=W, train_encoder=False, dtype="float32"), **kw})


@functools.cache
def _model_and_loss(original=False, threshold=1e9):
  """One model and jitted loss per setting, so tests share compiles."""
  m = manet.MANet(_config(manet_original_pairing=original, disentangle_threshold=threshold))
  return m, jax.jit(m.loss)


def _any_size(s, content, style):
  """stylize_any_size through the fixture's jitted stylize (the padded sizes hit its compiled shape)."""
  model = types.SimpleNamespace(stylize=s["stylize"], divisor=s["m"].divisor)
  return StyleModel.stylize_any_size(model, s["p"], s["vgg"], content, style)


def _count(tree):
  return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))


@pytest.fixture(scope="module")
def setup():
  m = manet.MANet(_config())
  vgg = m.init_vgg(jax.random.key(0))
  p = m.init(jax.random.key(1), vgg)
  p["transform"] = nonzero_biases(p["transform"], 3)
  images = jax.random.uniform(jax.random.key(2), (6, 32, 32, 3))
  return dict(m=m, vgg=vgg, p=p, content=images[:3], style=images[3:], stylize=jax.jit(m.stylize))


def test_registry_settings_and_param_counts_at_full_width():
  assert get_model("manet") is manet.MANet is manet.Model
  for train_encoder in (False, True):
    m = manet.MANet(_config(width=1.0, train_encoder=train_encoder))
    assert (m.divisor, m.encoder_depth, m.loss_depth) == (8, "r41", "r51")
    assert m.loss_weights == WEIGHTS and not m.original_pairing and m.disentangle_threshold == 10.0
    vgg = jax.eval_shape(m.init_vgg, jax.random.key(0))
    p = jax.eval_shape(m.init, jax.random.key(1), vgg)
    assert _count(vgg) == 12_944_972
    counts = {g: _count(v) for g, v in p.items()}
    expected = {"decoder": 3_505_219, "transform": 3_151_872}
    # The stylizing encoder only needs r41 (the transform reads nothing deeper).
    assert counts == ({**expected, "encoder": 3_505_740} if train_encoder else expected)
  blocks = {b: {"f", "g", "h", "out_conv"} for b in ("CSA", "SSA", "CA")}
  assert {b: set(v) for b, v in p["transform"].items()} == blocks
  assert p["transform"]["SSA"]["h"]["kernel"].shape == (1, 1, 512, 512)
  with pytest.raises(UserError, match="disentangle_threshold"):
    manet.MANet(_config(disentangle_threshold="ten"))


def test_multi_adaptation_matches_numpy():
  rng = np.random.default_rng(0)
  c = 8
  fc = np.maximum(rng.normal(size=(2, 3, 4, c)) + 0.3, 0).astype(np.float32)
  fs = np.maximum(rng.normal(size=(2, 4, 2, c)) + 0.3, 0).astype(np.float32)
  t = manet.MultiAdaptation()
  p = nonzero_biases(jax.jit(t.init)(jax.random.key(0), fc, fs)["params"], 1)  # jitted: eager, each op compiles alone
  p = {**p, "SSA": jax.tree.map(lambda a: a * 0.3 if a.ndim == 4 else a, p["SSA"])}  # softmax not one-hot
  out = t.apply({"params": p}, fc, fs)
  c_hat = np_sanet_block(p["CSA"], to_bcn(fc), to_bcn(fc))  # CSA: the content attends to itself
  s_hat = np_ssa(p["SSA"], to_bcn(fs))
  expected = np_sanet_block(p["CA"], c_hat, s_hat)
  np.testing.assert_allclose(out, to_nhwc(expected, 3, 4), rtol=1e-5, atol=1e-5)
  # The transposed SSA aggregation matters at this scale.
  plain = to_nhwc(np_sanet_block(p["CA"], c_hat, np_ssa(p["SSA"], to_bcn(fs), transpose=False)), 3, 4)
  assert np.abs(plain - np.asarray(out)).max() > 1e-4


def test_partner_indices_and_shuffles():
  seen = set()
  for i in range(8):
    ic, is_ = manet.partner_indices(jax.random.key(i), 4, original_pairing=False)
    assert len(set(np.asarray(ic).tolist())) == 1 and len(set(np.asarray(is_).tolist())) == 1
    seen.add(int(ic[0]))
    ic, is_ = manet.partner_indices(jax.random.key(i), 4, original_pairing=True)
    assert sorted(np.asarray(ic).tolist()) == sorted(np.asarray(is_).tolist()) == [0, 1, 2, 3]
  assert len(seen) > 1  # the one content is drawn, not always the first
  x = jnp.arange(5.0)[:, None]
  a, b = manet.shuffled_pairs(jax.random.key(0), {"r11": x, "r21": x})
  for v in (*a.values(), *b.values()):
    assert sorted(np.asarray(v).ravel().tolist()) == [0, 1, 2, 3, 4]
  assert len({tuple(np.asarray(v).ravel()) for v in (*a.values(), *b.values())}) > 1


def _np_stats(x):
  x = np.asarray(x, np.float64)
  return x.mean(axis=(1, 2)), np.sqrt(x.var(axis=(1, 2), ddof=1) + 1e-5)


def _np_norm(x):
  m, s = _np_stats(x)
  return (np.asarray(x, np.float64) - m[:, None, None]) / s[:, None, None]


def _content(g, v, taps=("r41", "r51")):
  return sum(np.mean((_np_norm(g[t]) - _np_norm(v[t])) ** 2) for t in taps)


def _style(g, v):
  return sum(np.mean((_np_stats(g[t])[i] - _np_stats(v[t])[i]) ** 2) for t in g for i in (0, 1))


def _hand_loss(s, m, rng):
  """The MANet loss from separate stylize calls, numpy losses, and the model's own random draws (same keys)."""
  p, vgg, c, st = s["p"], s["vgg"], s["content"], s["style"]
  k_pair, k_dc, k_ds = jax.random.split(rng, 3)
  ic, is_ = manet.partner_indices(k_pair, c.shape[0], m.original_pairing)
  sty = lambda a, b: s["stylize"](p, vgg, a, b)
  feat = lambda x: {k: np.asarray(v, np.float64) for k, v in vgg_apply({"params": vgg}, x).items()}
  icc, iss = sty(c, c), sty(st, st)
  g, gcc, gss, vc, vs = feat(sty(c, st)), feat(icc), feat(iss), feat(c), feat(st)
  g_c1s, g_cs1 = feat(sty(c[ic], st)), feat(sty(c, st[is_]))
  a, b = manet.shuffled_pairs(k_dc, {t: g_c1s[t] for t in ("r41", "r51")})
  dc = _content(a, b)
  a, b = manet.shuffled_pairs(k_ds, g_cs1)
  terms = dict(content=_content(g, vc), style=_style(g, vs), disentangle=dc + _style(a, b),
               identity1=np.mean((np.asarray(icc) - c) ** 2) + np.mean((np.asarray(iss) - st) ** 2),
               identity2=sum(np.mean((gcc[t] - vc[t]) ** 2) + np.mean((gss[t] - vs[t]) ** 2) for t in g))
  return terms


@pytest.mark.parametrize("original,threshold", [(False, 1e9), (True, 0.0)])
def test_loss_matches_hand_computation(setup, original, threshold):
  s = setup
  m, loss_fn = _model_and_loss(original, threshold)
  rng = jax.random.key(7)
  loss, metrics = loss_fn(s["p"], s["vgg"], s["content"], s["style"], rng)
  assert set(metrics) == {"total", "content", "style", "identity1", "identity2", "disentangle", "disentangle_on"}
  assert all(v.dtype == jnp.float32 and v.shape == () for v in metrics.values())
  terms = _hand_loss(s, m, rng)
  for k, v in terms.items():
    np.testing.assert_allclose(metrics[k], v, rtol=1e-4, err_msg=k)
  assert terms["disentangle"] > 0
  on = 1.0 if threshold > 0 else 0.0  # the threshold switches the disentanglement term
  assert float(metrics["disentangle_on"]) == on
  expected = sum(WEIGHTS[k] * v for k, v in terms.items() if k != "disentangle") + on * terms["disentangle"]
  np.testing.assert_allclose(loss, expected, rtol=1e-4)
  np.testing.assert_allclose(metrics["total"], loss)


def test_intended_pairing_compares_same_content_outputs(setup):
  """With one style for the whole batch, Ic1s repeats one image, so only the style half (L_ds) remains."""
  s = setup
  style = jnp.broadcast_to(s["style"][:1], s["style"].shape)
  _, loss_fn = _model_and_loss()
  rng = jax.random.key(3)
  _, metrics = loss_fn(s["p"], s["vgg"], s["content"], style, rng)
  _, k_dc, k_ds = jax.random.split(rng, 3)
  g = {k: np.asarray(v, np.float64) for k, v in
       vgg_apply({"params": s["vgg"]}, s["stylize"](s["p"], s["vgg"], s["content"], style)).items()}
  a, b = manet.shuffled_pairs(k_ds, g)  # Ics1 = D(MA(c, s1)) = Ics here
  np.testing.assert_allclose(metrics["disentangle"], _style(a, b), rtol=1e-4, atol=1e-9)


def test_stylize_alpha_and_any_size(setup):
  s = setup
  m, p, vgg, c, st = s["m"], s["p"], s["vgg"], s["content"], s["style"]
  out1 = s["stylize"](p, vgg, c, st)
  assert out1.shape == (3, 32, 32, 3) and out1.dtype == jnp.float32
  blend = jax.jit(m.stylize)
  half = blend(p, vgg, c, st, jnp.float32(0.5))
  # D is nonlinear, so check the blend in feature space: D(0.5 MA(c, s) + 0.5 MA(c, c)).
  # Jitted: run eagerly, every op and shape compiles a program of its own.
  encode, transform = jax.jit(VGGEncoder("r41", width=W).apply), jax.jit(m.transform.apply)
  fc = encode({"params": m.encoder_params(p, vgg)}, c)["r41"]
  fs = encode({"params": m.encoder_params(p, vgg)}, st)["r41"]
  ma = lambda a, b: transform({"params": p["transform"]}, a, b)
  expected = jax.jit(m.decoder.apply)({"params": p["decoder"]}, 0.5 * ma(fc, fs) + 0.5 * ma(fc, fc))
  np.testing.assert_allclose(half, expected, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(blend(p, vgg, c, st, jnp.float32(0.0)), s["stylize"](p, vgg, c, c), rtol=1e-5, atol=1e-5)
  assert _any_size(s, c[:, :27, :29], st[:, :30]).shape == (3, 27, 29, 3)


@pytest.mark.e2e
def test_imp_two_rounds_prunes_the_transform(tmp_path):
  config = tiny_config(model__name="manet", imp__rounds=2, train__steps=3, **EARLY_BIRD)
  imp.run(config_lib.resolve(config), str(tmp_path))
  assert_early_bird_and_stability_work(str(tmp_path), 2)
  t = checkpoint.load_ticket(workdir_lib.ticket_dir(str(tmp_path), "imp", 2))
  assert set(t.masks) == {"encoder", "decoder", "transform"}
  kernels = np.concatenate([np.asarray(t.masks["transform"][b][c]["kernel"]).ravel()
                            for b in ("CSA", "SSA", "CA") for c in ("f", "g", "h", "out_conv")])
  assert 0 < 1 - kernels.mean() < 1
  for pp, mm in zip(jax.tree.leaves(t.trained_params), jax.tree.leaves(t.masks)):
    assert np.all(np.asarray(pp)[~np.asarray(mm)] == 0)
  # Training moved every kernel of every group (the gradient reaches the encoder, decoder and transform).
  for (path, a), b in zip(jax.tree.leaves_with_path(t.trained_params), jax.tree.leaves(t.rewind_params)):
    if path[-1].key == "kernel":
      assert np.abs(np.asarray(a) - np.asarray(b)).max() > 0, path
