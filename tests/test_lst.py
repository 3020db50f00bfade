"""Tests for the LST r41 model: counts, the MulLayer against numpy, the mean/Gram style loss, stylize, IMP."""

import importlib.util
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from helpers import tiny_config, EARLY_BIRD, assert_early_bird_and_stability_work
from jaxtickets.store import checkpoint, workdir as workdir_lib
from jaxtickets import config as config_lib
from jaxtickets.run import imp
from jaxtickets.models import get_model, layers, lst
from jaxtickets.models import vgg as vgg_lib
from jaxtickets.models.decoder import Decoder
from jaxtickets.models.vgg import VGGEncoder

W = 1 / 16
ENC = VGGEncoder("r41", width=W, ceil_pool=False)
enc_apply = jax.jit(ENC.apply)
dec_apply = jax.jit(Decoder(width=W).apply)


def _config(**kw):
  base = dict(name="lst", width=W, train_encoder=False, train_decoder=False, dtype="float32",
              content_weight=None, style_weight=None)
  return ml_collections.ConfigDict({**base, **kw})


def _count(tree):
  return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))


def _randomize(tree, seed):
  """Float64 params of the tree's shapes: kernels ~ N(0, 1/fan_in), biases ~ N(0, 0.1^2) (non-zero on purpose)."""
  rng = np.random.default_rng(seed)
  scale = lambda a: 0.1 if a.ndim == 1 else 1 / np.sqrt(np.prod(a.shape[:-1]))
  return jax.tree.map(lambda a: rng.normal(scale=scale(a), size=a.shape), tree)


def _load_config_module():
  path = os.path.join(os.path.dirname(__file__), os.pardir, "configs", "lst.py")
  spec = importlib.util.spec_from_file_location("lst_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="module")
def setup():
  m = lst.LST(_config())
  vgg = m.init_vgg(jax.random.key(0))
  params = m.init(jax.random.key(1), vgg)
  images = jax.random.uniform(jax.random.key(2), (4, 32, 32, 3))
  return dict(m=m, vgg=vgg, vgg41=vgg_lib.truncate(vgg, "r41"), params=params, content=images[:2],
              style=images[2:], loss=jax.jit(m.loss))


# ---- numpy reference ------------------------------------------------------------------------------------------

def _np_conv_zero(x, kernel, bias):
  """3x3 conv with zero padding 1 (PyTorch Conv2d(..., 3, 1, 1)) in NHWC."""
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  h, w = x.shape[1:3]
  return sum(np.einsum("bhwc,co->bhwo", xp[:, i:i + h, j:j + w], kernel[i, j]) for i in range(3)
             for j in range(3)) + bias


def _np_cnn(p, x):
  """CNN.forward written the PyTorch way: NCHW, view(b, c, h*w), bmm / (h*w), fc, view(b, 32, 32)."""
  y = np.maximum(_np_conv_zero(x, **p["convs_0"]), 0)
  y = np.maximum(_np_conv_zero(y, **p["convs_2"]), 0)
  y = _np_conv_zero(y, **p["convs_4"])
  b, h, w, k = y.shape
  f = y.transpose(0, 3, 1, 2).reshape(b, k, h * w)
  m = f @ f.transpose(0, 2, 1) / (h * w)
  out = m.reshape(b, k * k) @ p["fc"]["kernel"] + p["fc"]["bias"]  # torch Linear: x W^T + b, W^T = our kernel
  return out.reshape(b, k, k)


def _np_mullayer(p, cf, sf):
  """MulLayer.forward in NCHW numpy: centring, T = T_s T_c, unzip(T compress(c_hat)) + mean(s)."""
  c_mean = cf.mean(axis=(1, 2), keepdims=True)
  s_mean = sf.mean(axis=(1, 2), keepdims=True)
  c_hat, s_hat = cf - c_mean, sf - s_mean
  t = _np_cnn(p["snet"], s_hat) @ _np_cnn(p["cnet"], c_hat)
  b, h, w, _ = cf.shape
  z = np.einsum("bhwc,ck->bkhw", c_hat, p["compress"]["kernel"][0, 0]) + p["compress"]["bias"][:, None, None]
  tz = (t @ z.reshape(b, -1, h * w)).reshape(b, -1, h, w)
  out = np.einsum("bkhw,kc->bhwc", tz, p["unzip"]["kernel"][0, 0]) + p["unzip"]["bias"]
  return out + s_mean, t


def _np_style_loss(g_taps, s_taps, taps=lst.STYLE_TAPS):
  total = 0.0
  for t in taps:
    g, s = (np.asarray(x[t], np.float64) for x in (g_taps, s_taps))
    b, h, w, c = g.shape
    terms = 0.0
    for x_g, x_s in zip(g, s):  # per sample, as sums
      fg, fs = x_g.reshape(-1, c).T, x_s.reshape(-1, c).T  # (C, HW)
      gg, gs = fg @ fg.T / (c * h * w), fs @ fs.T / (c * fs.shape[1])
      terms += np.sum((fg.mean(1) - fs.mean(1)) ** 2) + np.sum((gg - gs) ** 2)
    total += terms / b
  return total


# ---- tests ----------------------------------------------------------------------------------------------------

def test_full_width_parameter_counts():
  m = lst.LST(_config(width=1.0))
  vgg = jax.eval_shape(m.init_vgg, jax.random.key(0))
  shapes = jax.eval_shape(m.init, jax.random.key(0), vgg)
  assert _count(vgg) == 12_944_972  # encoder5, the loss network
  assert _count({k: v for k, v in vgg.items() if k in ("conv5_1", "conv4_2", "conv4_3", "conv4_4")}) == (
      12_944_972 - 3_505_740)  # encoder4 is the r41 truncation
  assert set(shapes) == {"decoder", "transform"}
  assert _count(shapes["decoder"]) == 3_505_219
  assert _count(shapes["transform"]) == 5_156_192
  assert _count(shapes["transform"]["cnet"]) == _count(shapes["transform"]["snet"]) == 2_561_440
  t = shapes["transform"]
  assert t["cnet"]["convs_0"]["kernel"].shape == (3, 3, 512, 256) and t["snet"]["fc"]["kernel"].shape == (1024, 1024)
  assert t["compress"]["kernel"].shape == (1, 1, 512, 32) and t["unzip"]["kernel"].shape == (1, 1, 32, 512)
  enc = jax.eval_shape(lst.LST(_config(width=1.0, train_encoder=True)).init, jax.random.key(0), vgg)
  assert _count(enc["encoder"]) == 3_505_740


def test_settings_groups_and_configs():
  assert get_model("lst") is lst.LST is lst.Model
  m = lst.LST(_config())
  assert (m.name, m.divisor, m.encoder_depth, m.loss_depth) == ("lst", 8, "r41", "r51")
  assert m.loss_weights == {"content": 1.0, "style": 0.02}
  assert m.groups == ("decoder", "transform") and m.trained_groups == ("transform",)
  assert not m.encoder.ceil_pool and not m.vgg.ceil_pool
  assert lst.LST(_config(train_decoder=True)).trained_groups == ("decoder", "transform")
  m = lst.LST(_config(train_encoder=True, style_weight=0.5))
  assert m.groups == ("encoder", "decoder", "transform") and m.trained_groups == ("encoder", "transform")
  assert m.loss_weights["style"] == 0.5
  lst_config = _load_config_module()
  paper, demo = lst_config.get_config(), lst_config.get_config("demo")
  assert (paper.model.train_encoder, paper.model.train_decoder, demo.model.train_decoder) == (False, False, True)
  assert (paper.train.lr, paper.train.lr_decay, paper.train.steps, paper.data.crop_size) == (1e-4, 1e-5, 100_000, 256)
  config_lib.validate(demo)
  with pytest.raises(ValueError, match="variant"):
    lst_config.get_config("fast")


def test_cnn_covariance_fc_and_row_major_reshape():
  cnn = lst.CNN(width=W)
  x = np.random.default_rng(0).normal(size=(2, 5, 6, 32))
  p = _randomize(layers.init_params(cnn, jax.random.key(0), jnp.zeros((1, 5, 6, 32))), 1)
  got = jax.jit(cnn.apply)({"params": jax.tree.map(jnp.float32, p)}, jnp.float32(x))
  expected = _np_cnn(p, x)
  assert got.shape == (2, 32, 32)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
  # A column-major reshape (or a division by 32*h*w) would be measurably different.
  assert np.abs(expected - expected.transpose(0, 2, 1)).max() > 0.1 * np.abs(expected).max()


def test_mullayer_matches_numpy():
  mul = lst.MulLayer(width=W)
  rng = np.random.default_rng(2)
  # Different content and style sizes, non-zero means: centring, T = T_s T_c and + mean(s) all show.
  cf, sf = rng.normal(1.0, 1.0, size=(2, 6, 5, 32)), rng.normal(-0.5, 2.0, size=(2, 4, 7, 32))
  p = _randomize(layers.init_params(mul, jax.random.key(0), jnp.zeros((1, 4, 4, 32)), jnp.zeros((1, 4, 4, 32))), 3)
  out, t = jax.jit(mul.apply)({"params": jax.tree.map(jnp.float32, p)}, jnp.float32(cf), jnp.float32(sf))
  expected, expected_t = _np_mullayer(p, cf, sf)
  assert out.shape == cf.shape and t.shape == (2, 32, 32)
  np.testing.assert_allclose(t, expected_t, rtol=1e-5, atol=1e-5 * np.abs(expected_t).max())
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
  # The order T_c T_s would give another answer.
  wrong_t = _np_cnn(p["cnet"], cf - cf.mean((1, 2), keepdims=True)) @ _np_cnn(p["snet"], sf - sf.mean((1, 2), keepdims=True))
  assert np.abs(wrong_t - expected_t).max() > 0.1 * np.abs(expected_t).max()


def test_style_loss_is_sum_over_batch_size():
  rng = np.random.default_rng(4)
  shapes = {"r11": (3, 8, 8, 4), "r21": (3, 4, 4, 8), "r31": (3, 2, 2, 16), "r41": (3, 1, 1, 32)}
  g = {t: np.abs(rng.normal(size=s)) for t, s in shapes.items()}
  s = {t: np.abs(rng.normal(size=s)) for t, s in shapes.items()}
  style_loss = jax.jit(lst.style_loss, static_argnames="taps")
  got = style_loss({k: jnp.float32(v) for k, v in g.items()}, {k: jnp.float32(v) for k, v in s.items()})
  np.testing.assert_allclose(got, _np_style_loss(g, s), rtol=1e-5)
  # Hand value for one layer: B=1, 1 channel, 1 pixel: (2-1)^2 + (4/1 - 1/1)^2 = 10.
  one = lambda v: {"r11": jnp.full((1, 1, 1, 1), v)}
  np.testing.assert_allclose(style_loss(one(2.0), one(1.0), taps=("r11",)), 10.0)
  # Doubling the batch with a copy keeps the value (sum / B, not a mean over elements).
  two = {k: np.concatenate([v, v]) for k, v in g.items()}
  two_s = {k: np.concatenate([v, v]) for k, v in s.items()}
  np.testing.assert_allclose(style_loss(two, two_s), got, rtol=1e-5)


def test_loss_matches_hand_formulation(setup):
  s = setup
  total, metrics = s["loss"](s["params"], s["vgg"], s["content"], s["style"], jax.random.key(0))
  assert set(metrics) == {"content", "style", "total"} and metrics["total"].dtype == jnp.float32
  vgg41 = s["vgg41"]
  vc, vs = enc_apply({"params": vgg41}, s["content"]), enc_apply({"params": vgg41}, s["style"])
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), s["params"]["transform"])
  t, _ = _np_mullayer(p, np.asarray(vc["r41"], np.float64), np.asarray(vs["r41"], np.float64))
  g = enc_apply({"params": vgg41}, dec_apply({"params": s["params"]["decoder"]}, jnp.float32(t)))
  content = np.mean((np.asarray(g["r41"], np.float64) - np.asarray(vc["r41"], np.float64)) ** 2)
  style = _np_style_loss(g, vs)
  np.testing.assert_allclose([metrics["content"], metrics["style"]], [content, style], rtol=1e-4)
  np.testing.assert_allclose(total, content + 0.02 * style, rtol=1e-4)


def test_trained_encoder_keeps_the_frozen_target(setup):
  s = setup
  m = lst.LST(_config(train_encoder=True))
  loss = jax.jit(m.loss)
  params = dict(s["params"], encoder=m.init_encoder(s["vgg"]))
  _, at_init = loss(params, s["vgg"], s["content"], s["style"], jax.random.key(0))
  _, ref = s["loss"](s["params"], s["vgg"], s["content"], s["style"], jax.random.key(0))
  np.testing.assert_allclose(at_init["total"], ref["total"], rtol=1e-5)  # the copy starts equal to the VGG
  # A moved encoder copy changes the stylized output, but the content target stays the frozen r41 features.
  params["encoder"] = jax.tree.map(lambda a: a * 1.3, params["encoder"])
  _, moved = loss(params, s["vgg"], s["content"], s["style"], jax.random.key(0))
  enc = params["encoder"]
  fc, fs = (enc_apply({"params": enc}, x)["r41"] for x in (s["content"], s["style"]))
  t = s["m"].transform.apply({"params": s["params"]["transform"]}, fc, fs)[0]
  g = enc_apply({"params": s["vgg41"]}, dec_apply({"params": s["params"]["decoder"]}, t))
  target = enc_apply({"params": s["vgg41"]}, s["content"])["r41"]
  np.testing.assert_allclose(moved["content"], np.mean((np.asarray(g["r41"], np.float64) - target) ** 2), rtol=1e-4)
  assert abs(float(moved["content"]) - float(at_init["content"])) > 1e-3 * float(at_init["content"])


def test_stylize_alpha_and_any_size(setup):
  s = setup
  m, p, vgg = s["m"], s["params"], s["vgg"]
  stylize = jax.jit(m.stylize)
  fc = enc_apply({"params": s["vgg41"]}, s["content"])["r41"]
  fs = enc_apply({"params": s["vgg41"]}, s["style"])["r41"]
  t, _ = m.transform.apply({"params": p["transform"]}, fc, fs)
  out0 = stylize(p, vgg, s["content"], s["style"], jnp.float32(0.0))
  np.testing.assert_allclose(out0, dec_apply({"params": p["decoder"]}, fc), rtol=1e-5, atol=1e-6)
  out1 = stylize(p, vgg, s["content"], s["style"], jnp.float32(1.0))
  assert out1.shape == (2, 32, 32, 3) and out1.dtype == jnp.float32
  np.testing.assert_allclose(out1, dec_apply({"params": p["decoder"]}, t), rtol=1e-5, atol=1e-6)
  half = stylize(p, vgg, s["content"], s["style"], jnp.float32(0.5))
  np.testing.assert_allclose(half, dec_apply({"params": p["decoder"]}, 0.5 * t + 0.5 * fc), rtol=1e-5, atol=1e-6)
  odd = jax.random.uniform(jax.random.key(5), (1, 13, 19, 3))
  out = jax.jit(m.stylize_any_size)(p, vgg, odd, odd[:, :10, :10], 1.0)
  assert out.shape == (1, 13, 19, 3) and bool(jnp.all(jnp.isfinite(out)))


@pytest.mark.e2e
def test_imp_prunes_only_the_transform_and_keeps_the_decoder(tmp_path):
  config = tiny_config(model__name="lst", model__train_encoder=False, imp__rounds=2, train__steps=3, **EARLY_BIRD)
  imp.run(config_lib.resolve(config), str(tmp_path))
  assert_early_bird_and_stability_work(str(tmp_path), 2)
  theta_0 = checkpoint.load_params(os.path.join(tmp_path, "init", "rep_0", "theta_0"))
  assert set(theta_0) == {"decoder", "transform"}
  for r in range(3):
    ticket = checkpoint.load_ticket(workdir_lib.ticket_dir(str(tmp_path), "imp", r))
    trained, masks = ticket.trained_params, ticket.masks
    # The frozen decoder: never pruned, never moved by training.
    assert all(bool(np.all(m)) for m in jax.tree.leaves(masks["decoder"]))
    for a, b in zip(jax.tree.leaves(trained["decoder"]), jax.tree.leaves(theta_0["decoder"])):
      np.testing.assert_array_equal(a, b)
    kernels = [(trained["transform"][n][k]["kernel"], masks["transform"][n][k]["kernel"])
               for n in ("cnet", "snet") for k in ("convs_0", "fc")]
    for w, m in kernels:
      assert not np.any(w[~m])  # pruned weights stay exactly 0
    pruned = sum(int((~m).sum()) for w, m in kernels)
    assert (pruned > 0) == (r > 0)
    moved = np.abs(trained["transform"]["cnet"]["fc"]["kernel"] - ticket.rewind_params["transform"]["cnet"]["fc"]["kernel"])
    assert float(moved.max()) > 0  # the transform does train
