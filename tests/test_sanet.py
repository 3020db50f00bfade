"""Tests for SANet: parameter counts, the transform against numpy, the loss terms, stylize and a 2-round IMP run."""

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
from jaxtickets.models import get_model, sanet
from jaxtickets.models.base import StyleModel
from jaxtickets.models.vgg import VGGEncoder
from test_attention import nonzero_biases, np_sanet_block, to_bcn, to_nhwc

W = 1 / 16
VGG51 = VGGEncoder("r51", width=W)
vgg_apply = jax.jit(VGG51.apply)


def _config(**kw):
  return ml_collections.ConfigDict({**dict(name="sanet", width=W, train_encoder=False, dtype="float32"), **kw})


def _any_size(s, content, style):
  """stylize_any_size through the fixture's jitted stylize (the padded sizes hit its compiled shape)."""
  model = types.SimpleNamespace(stylize=s["stylize"], divisor=s["m"].divisor)
  return StyleModel.stylize_any_size(model, s["p"], s["vgg"], content, style)


def _count(tree):
  return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))


@pytest.fixture(scope="module")
def setup():
  """A trained-encoder SANet whose encoder differs from the loss VGG (test_manet covers the frozen encoder)."""
  m = sanet.SANet(_config(train_encoder=True))
  vgg = m.init_vgg(jax.random.key(0))
  p = m.init(jax.random.key(1), vgg)
  p["transform"] = nonzero_biases(p["transform"], 3)
  noise = np.random.default_rng(0)
  p["encoder"] = jax.tree.map(lambda a: a * (1 + 0.2 * noise.normal(size=a.shape)).astype(np.float32), p["encoder"])
  images = jax.random.uniform(jax.random.key(2), (4, 32, 32, 3))
  return dict(m=m, vgg=vgg, p=p, content=images[:2], style=images[2:], stylize=jax.jit(m.stylize),
              loss=jax.jit(m.loss))


def test_registry_settings_and_param_counts_at_full_width():
  assert get_model("sanet") is sanet.SANet is sanet.Model
  for train_encoder in (False, True):
    m = sanet.SANet(_config(width=1.0, train_encoder=train_encoder, style_weight=2.0))
    assert (m.divisor, m.encoder_depth, m.loss_depth) == (16, "r51", "r51")
    assert m.loss_weights == {"content": 1.0, "style": 2.0, "identity1": 50.0, "identity2": 1.0}
    vgg = jax.eval_shape(m.init_vgg, jax.random.key(0))
    p = jax.eval_shape(m.init, jax.random.key(1), vgg)
    assert _count(vgg) == 12_944_972
    counts = {g: _count(v) for g, v in p.items()}
    expected = {"decoder": 3_505_219, "transform": 4_461_056}
    assert counts == ({**expected, "encoder": 12_944_972} if train_encoder else expected)
    assert m.groups == tuple(k for k in ("encoder", "decoder", "transform") if k in counts)
  t = p["transform"]
  assert set(t) == {"sanet4_1", "sanet5_1", "merge_conv"}
  assert _count(t["sanet4_1"]) == _count(t["sanet5_1"]) == 1_050_624 and _count(t["merge_conv"]) == 2_359_808
  assert t["sanet4_1"]["f"]["kernel"].shape == (1, 1, 512, 512) and t["merge_conv"]["kernel"].shape == (3, 3, 512, 512)


def np_merge(p, a41, a51):
  """reflect_pad1(a41 + nearest_up2(a51)) then a 3x3 VALID conv, NHWC, with an explicit sum over the 9 taps."""
  x = a41 + np.repeat(np.repeat(a51, 2, axis=1), 2, axis=2)
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
  k = np.asarray(p["kernel"], np.float64)
  h, w = x.shape[1:3]
  out = sum(np.einsum("bhwi,io->bhwo", xp[:, dy:dy + h, dx:dx + w], k[dy, dx]) for dy in range(3) for dx in range(3))
  return out + np.asarray(p["bias"], np.float64)


def test_transform_matches_numpy():
  rng = np.random.default_rng(0)
  c = 8
  f = lambda *s: np.maximum(rng.normal(size=s) + 0.3, 0).astype(np.float32)
  # Style maps differ in size from the content ones; r51 is half of r41.
  c41, c51, s41, s51 = f(2, 4, 6, c), f(2, 2, 3, c), f(2, 6, 4, c), f(2, 3, 2, c)
  t = sanet.Transform()
  # jitted: eager, each op compiles alone
  p = nonzero_biases(jax.jit(t.init)(jax.random.key(0), c41, s41, c51, s51)["params"], 1)
  out = t.apply({"params": p}, c41, s41, c51, s51)
  a41 = to_nhwc(np_sanet_block(p["sanet4_1"], to_bcn(c41), to_bcn(s41)), 4, 6)
  a51 = to_nhwc(np_sanet_block(p["sanet5_1"], to_bcn(c51), to_bcn(s51)), 2, 3)
  np.testing.assert_allclose(out, np_merge(p["merge_conv"], a41, a51), rtol=1e-5, atol=1e-5)
  with pytest.raises(UserError, match="multiples of 16"):
    t.apply({"params": p}, c41, s41, c51[:, :, :2], s51)


def test_identity_losses_on_small_inputs():
  rng = np.random.default_rng(1)
  a, b, c, d = (rng.normal(size=(2, 3, 3, 2)).astype(np.float32) for _ in range(4))
  taps = lambda x: {"r11": x, "r21": 2 * x[:, :2]}
  id1, id2 = sanet.identity_losses(a, b, c, d, taps(a), taps(b), taps(c), taps(d), taps=("r11", "r21"))
  np.testing.assert_allclose(id1, np.mean((a - c) ** 2) + np.mean((b - d) ** 2), rtol=1e-6)
  hand = sum(np.mean((taps(x)[t] - taps(y)[t]) ** 2) for x, y in ((a, c), (b, d)) for t in ("r11", "r21"))
  np.testing.assert_allclose(id2, hand, rtol=1e-6)


def _np_stats(x):
  x = np.asarray(x, np.float64)
  return x.mean(axis=(1, 2)), np.sqrt(x.var(axis=(1, 2), ddof=1) + 1e-5)


def _np_norm(x):
  m, s = _np_stats(x)
  return (np.asarray(x, np.float64) - m[:, None, None]) / s[:, None, None]


def test_loss_matches_hand_computation(setup):
  s = setup
  m, p, vgg, c, st = s["m"], s["p"], s["vgg"], s["content"], s["style"]
  loss, metrics = s["loss"](p, vgg, c, st, jax.random.key(0))
  assert set(metrics) == {"total", "content", "style", "identity1", "identity2"}
  assert all(v.dtype == jnp.float32 and v.shape == () for v in metrics.values())
  # Ics, Icc, Iss by separate stylize calls (not the loss's batched pass) with the trained encoder; every loss
  # feature and target from the frozen loss VGG.
  ics, icc, iss = s["stylize"](p, vgg, c, st), s["stylize"](p, vgg, c, c), s["stylize"](p, vgg, st, st)
  feat = lambda x: {k: np.asarray(v, np.float64) for k, v in vgg_apply({"params": vgg}, x).items()}
  g, gcc, gss, vc, vs = feat(ics), feat(icc), feat(iss), feat(c), feat(st)
  lc = sum(np.mean((_np_norm(g[t]) - _np_norm(vc[t])) ** 2) for t in ("r41", "r51"))
  ls = sum(np.mean((_np_stats(g[t])[i] - _np_stats(vs[t])[i]) ** 2) for t in g for i in (0, 1))
  id1 = np.mean((np.asarray(icc) - c) ** 2) + np.mean((np.asarray(iss) - st) ** 2)
  id2 = sum(np.mean((gcc[t] - vc[t]) ** 2) + np.mean((gss[t] - vs[t]) ** 2) for t in g)
  np.testing.assert_allclose([metrics[k] for k in ("content", "style", "identity1", "identity2")],
                             [lc, ls, id1, id2], rtol=1e-4)
  np.testing.assert_allclose(loss, lc + 3 * ls + 50 * id1 + id2, rtol=1e-4)
  np.testing.assert_allclose(metrics["total"], loss)


def test_stylize_alpha_and_any_size(setup):
  s = setup
  m, p, vgg, c, st = s["m"], s["p"], s["vgg"], s["content"], s["style"]
  out1 = s["stylize"](p, vgg, c, st)
  assert out1.shape == (2, 32, 32, 3) and out1.dtype == jnp.float32
  blend = jax.jit(m.stylize)
  # alpha = 0 gives D(T(c, c)), i.e. the content as its own style; 1 gives the plain output.
  np.testing.assert_allclose(blend(p, vgg, c, st, jnp.float32(0.0)), s["stylize"](p, vgg, c, c), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(blend(p, vgg, c, st, jnp.float32(1.0)), out1, rtol=1e-5, atol=1e-5)
  # (A random decoder's outputs are tiny, so the difference is judged relative to them.)
  assert float(jnp.abs(out1 - s["stylize"](p, vgg, c, c)).max()) > 1e-2 * float(jnp.abs(out1).max())
  odd = _any_size(s, c[:, :27, :21], st[:, :30])
  assert odd.shape == (2, 27, 21, 3)


@pytest.mark.e2e
def test_imp_two_rounds_prunes_the_transform(tmp_path):
  config = tiny_config(model__name="sanet", imp__rounds=2, train__steps=3, **EARLY_BIRD)
  imp.run(config_lib.resolve(config), str(tmp_path))
  assert_early_bird_and_stability_work(str(tmp_path), 2)
  t = checkpoint.load_ticket(workdir_lib.ticket_dir(str(tmp_path), "imp", 2))
  assert set(t.masks) == {"encoder", "decoder", "transform"}
  sparsity = lambda tree: 1 - np.mean(np.concatenate(
      [np.asarray(leaf).ravel() for path, leaf in jax.tree.leaves_with_path(tree) if path[-1].key == "kernel"]))
  tm = t.masks["transform"]
  assert sparsity(tm["merge_conv"]) > 0 and sparsity({"a": tm["sanet4_1"], "b": tm["sanet5_1"]}) > 0
  for pp, mm in zip(jax.tree.leaves(t.trained_params), jax.tree.leaves(t.masks)):
    assert np.all(np.asarray(pp)[~np.asarray(mm)] == 0)
  # Training moved every kernel of every group (the gradient reaches the encoder, decoder and transform).
  for (path, a), b in zip(jax.tree.leaves_with_path(t.trained_params), jax.tree.leaves(t.rewind_params)):
    if path[-1].key == "kernel":
      assert np.abs(np.asarray(a) - np.asarray(b)).max() > 0, path
