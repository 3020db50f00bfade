"""Tests for AdaAttN: counts, get_key's nearest rule, the block and losses against numpy, stylize, IMP."""

import functools
import importlib.util
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxtickets import config as config_lib
from jaxtickets.store import checkpoint, workdir as workdir_lib
from jaxtickets.run import imp
from jaxtickets.models import adaattn, get_model, layers
from jaxtickets.models.vgg import VGGEncoder
from helpers import tiny_config, EARLY_BIRD, assert_early_bird_and_stability_work

W = 1 / 16
TAPS = ("r11", "r21", "r31", "r41", "r51")


def _config(**kw):
  base = dict(name="adaattn", width=W, train_encoder=False, dtype="float32", style_weight=None,
              local_weight=None, content_weight=None)
  return ml_collections.ConfigDict({**base, **kw})


def _count(tree):
  return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))


# ---- numpy formulations (from models.md §6, written independently of the module) ----

def np_norm(x):
  x = np.asarray(x, np.float64)
  return (x - x.mean(axis=(1, 2), keepdims=True)) / np.sqrt(x.var(axis=(1, 2), ddof=1, keepdims=True) + 1e-5)


def np_nearest(x, out_h, out_w):
  """PyTorch nearest: src = min(floor(dst * in / out), in - 1), the product in float32."""
  h, w = x.shape[1:3]
  ih = [min(int(np.floor(np.float32(d) * (np.float32(h) / np.float32(out_h)))), h - 1) for d in range(out_h)]
  iw = [min(int(np.floor(np.float32(d) * (np.float32(w) / np.float32(out_w)))), w - 1) for d in range(out_w)]
  return np.asarray(x)[:, ih][:, :, iw]


def np_get_key(feats, tap):
  h, w = feats[tap].shape[1:3]
  shallow = TAPS[:TAPS.index(tap) + 1]
  return np.concatenate([np_norm(np_nearest(feats[t], h, w)) for t in shallow], axis=-1)


def np_conv1x1(x, p):
  return np.asarray(x, np.float64) @ np.asarray(p["kernel"], np.float64)[0, 0] + np.asarray(p["bias"])


def np_conv3x3(x, p):
  xp = np.pad(np.asarray(x, np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
  k = np.asarray(p["kernel"], np.float64)
  h, w = x.shape[1:3]
  return sum(xp[:, i:i + h, j:j + w] @ k[i, j] for i in range(3) for j in range(3)) + np.asarray(p["bias"])


def np_up2(x):
  return np.repeat(np.repeat(x, 2, axis=1), 2, axis=2)


def np_adaattn(content, style, key_c, key_s, p=None, index=None):
  """S * norm(Fc) + M with Q = f(key_c), K = g(key_s), V = h(Fs); identity f, g, h when p is None."""
  f = (lambda x, n: np_conv1x1(x, p[n])) if p else (lambda x, n: np.asarray(x, np.float64))
  b, h, w, c = content.shape
  q = f(key_c, "f").reshape(b, h * w, -1)
  k = f(key_s, "g").reshape(b, -1, q.shape[-1])
  v = f(style, "h").reshape(b, -1, c)
  if index is not None:
    k, v = k[:, index], v[:, index]
  logits = q @ k.transpose(0, 2, 1)
  a = np.exp(logits - logits.max(-1, keepdims=True))
  a /= a.sum(-1, keepdims=True)
  mean = a @ v
  std = np.sqrt(np.maximum(a @ (v * v) - mean ** 2, 0.0))
  return std.reshape(b, h, w, c) * np_norm(content) + mean.reshape(b, h, w, c)


def np_stats(x):
  x = np.asarray(x, np.float64)
  return x.mean(axis=(1, 2)), np.sqrt(x.var(axis=(1, 2), ddof=1) + 1e-5)


def _random_bias(params, seed=7):
  """The init sets biases to 0; random ones make sure they are exercised."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda a: (0.1 * rng.normal(size=a.shape)).astype(np.float32) if a.ndim == 1 else a, params)


@pytest.fixture(scope="module")
def setup():
  frozen = adaattn.AdaAttNModel(_config())
  # Non-default weights with the content loss on: one compiled loss checks every term and the weighting.
  trained = adaattn.AdaAttNModel(_config(train_encoder=True, content_weight=2.0, local_weight=0.5))
  vgg = frozen.init_vgg(jax.random.key(0))
  params = _random_bias(trained.init(jax.random.key(1), vgg))
  images = jax.random.uniform(jax.random.key(2), (4, 32, 32, 3))
  enc = VGGEncoder("r51", width=W)
  feats = jax.jit(enc.apply)({"params": vgg}, images)
  return dict(frozen=frozen, trained=trained, vgg=vgg, params=params, content=images[:2], style=images[2:],
              c_feats={t: f[:2] for t, f in feats.items()}, s_feats={t: f[2:] for t, f in feats.items()},
              loss_trained=jax.jit(trained.loss),
              stylize=jax.jit(frozen.stylize))


def test_full_width_parameter_counts_and_names():
  m = get_model("adaattn")(_config(width=1.0, train_encoder=True))
  assert (m.divisor, m.encoder_depth, m.loss_depth) == (16, "r51", "r51")
  assert m.groups == ("encoder", "decoder", "transform")
  assert m.loss_weights == {"style": 10.0, "local": 3.0, "content": 0.0}
  vgg = jax.eval_shape(m.init_vgg, jax.random.key(0))
  shapes = jax.eval_shape(m.init, jax.random.key(1), vgg)
  assert _count(vgg) == _count(shapes["encoder"]) == 12_944_972
  assert _count(shapes["decoder"]) == 4_095_043
  tr = shapes["transform"]["transformer"]
  assert _count(tr) == 9_066_752 and _count(shapes["transform"]["adaattn_3"]) == 468_096
  assert (_count(tr["attn_adain_4_1"]), _count(tr["attn_adain_5_1"]), _count(tr["merge_conv"])) == (
      2_107_776, 4_599_168, 2_359_808)
  assert tr["attn_adain_5_1"]["f"]["kernel"].shape == (1, 1, 1472, 1472)
  assert shapes["transform"]["adaattn_3"]["g"]["kernel"].shape == (1, 1, 448, 448)
  names = {f"decoder_layer_2_{i}" for i in (1, 4, 7, 10, 14, 17, 21, 24)} | {"decoder_layer_1_1"}
  assert set(shapes["decoder"]) == names
  assert shapes["decoder"]["decoder_layer_2_1"]["kernel"].shape == (3, 3, 512, 256)
  assert adaattn.AdaAttNModel(_config(width=1.0)).groups == ("decoder", "transform")


def test_init_is_normal_0_02_with_zero_biases(setup):
  p = setup["trained"].init(jax.random.key(3), setup["vgg"])
  for group in ("decoder", "transform"):
    for path, leaf in jax.tree.leaves_with_path(p[group]):
      if leaf.ndim == 1:
        assert not np.any(leaf), path
  kernels = np.concatenate([np.ravel(k) for g in ("decoder", "transform") for k in jax.tree.leaves(p[g]) if k.ndim > 1])
  assert abs(kernels.std() - 0.02) < 1e-3 and abs(kernels.mean()) < 1e-3
  for a, b in zip(jax.tree.leaves(p["encoder"]), jax.tree.leaves(setup["vgg"])):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("size_in,size_out", [(32, 8), (16, 16), (7, 4), (13, 5), (6, 4), (5, 3)])
def test_nearest_resize_follows_the_floor_index_rule(size_in, size_out):
  x = np.random.default_rng(0).normal(size=(2, size_in, size_in + 1, 3)).astype(np.float32)
  out_w = max(1, (size_in + 1) * size_out // size_in)
  got = np.asarray(adaattn.nearest_resize(jnp.asarray(x), size_out, out_w))
  np.testing.assert_array_equal(got, np_nearest(x, size_out, out_w))


def test_power_of_two_downsampling_is_the_top_left_pixel_not_jax_image_resize():
  x = np.random.default_rng(1).normal(size=(1, 16, 16, 2)).astype(np.float32)
  got = np.asarray(adaattn.nearest_resize(jnp.asarray(x), 4, 4))
  np.testing.assert_array_equal(got, x[:, ::4, ::4])
  half_pixel = np.asarray(jax.image.resize(x, (1, 4, 4, 2), "nearest"))
  assert not np.allclose(got, half_pixel)


def test_get_key_matches_numpy(setup):
  feats = setup["c_feats"]
  for tap, width in (("r21", 12), ("r31", 28), ("r41", 60), ("r51", 92)):
    key = jax.jit(adaattn.get_key, static_argnums=1)(feats, tap)  # jitted: eager, every op compiles alone
    assert key.shape[-1] == width and key.dtype == jnp.float32
    np.testing.assert_allclose(key, np_get_key(feats, tap), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(adaattn.get_key(feats, "r41", shallow_layer=False), np_norm(feats["r41"]),
                             rtol=1e-4, atol=1e-4)


def _block_inputs(seed, b=2, hc=4, wc=5, hs=6, ws=4, c=6, k=5):
  r = np.random.default_rng(seed)
  f = lambda *s: r.normal(size=s).astype(np.float32)
  return f(b, hc, wc, c), np.abs(f(b, hs, ws, c)), f(b, hc, wc, k), f(b, hs, ws, k)


@pytest.mark.parametrize("max_sample", [1000, 10])
def test_adaattn_block_matches_numpy_with_and_without_subsampling(max_sample):
  content, style, kc, ks = _block_inputs(0)
  block = adaattn.AdaAttN(max_sample=max_sample)
  p = _random_bias(block.init(jax.random.key(0), content, style, kc, ks, jax.random.key(1))["params"])
  # N(0, 0.02) f and g make a nearly uniform attention; larger ones test the softmax properly.
  p = jax.tree.map(lambda a: a * 20 if a.ndim > 1 else a, p)
  index = np.random.default_rng(1).permutation(24)[:max_sample] if max_sample < 24 else None
  apply = jax.jit(block.apply)  # eager, every op would compile a program of its own
  out = apply({"params": p}, content, style, kc, ks, sample_index=index)
  np.testing.assert_allclose(out, np_adaattn(content, style, kc, ks, p, index), rtol=1e-4, atol=1e-5)
  # From an rng: the first max_sample entries of a permutation drawn from it.
  key = jax.random.key(5)
  out_rng = apply({"params": p}, content, style, kc, ks, key)
  perm = np.asarray(jax.random.permutation(key, 24))[:max_sample] if max_sample < 24 else None
  np.testing.assert_allclose(out_rng, np_adaattn(content, style, kc, ks, p, perm), rtol=1e-4, atol=1e-5)
  if max_sample < 24:
    with pytest.raises(ValueError, match="rng"):
      block.apply({"params": p}, content, style, kc, ks)


def test_std_is_exact_and_grad_eps_only_changes_the_gradient():
  var = jnp.array([0.0, 1e-12, 0.25, -1e-3])
  f0 = lambda v: adaattn._std_from_var(v, 0.0).sum()
  f1 = lambda v: adaattn._std_from_var(v, 1e-8).sum()
  np.testing.assert_array_equal(adaattn._std_from_var(var, 1e-8), adaattn._std_from_var(var, 0.0))
  np.testing.assert_allclose(adaattn._std_from_var(var, 0.0), [0, 1e-6, 0.5, 0], rtol=1e-6)
  g0, g1 = jax.grad(f0)(var), jax.grad(f1)(var)
  # The reference's relu gates the infinite sqrt slope at <= 0 (torch's relu backward does the same).
  assert g0[0] == 0 and g0[3] == 0 and g0[1] == pytest.approx(5e5, rel=1e-3)
  assert g1[1] == pytest.approx(0.5 / np.sqrt(1e-8 + 1e-12), rel=1e-3) and np.all(np.isfinite(g1))


def test_local_feature_loss_is_the_parameter_free_attention(setup):
  c, s = setup["c_feats"], setup["s_feats"]
  g = {t: f[::-1] * 1.1 for t, f in c.items()}  # any "stylized" features
  ck = {t: adaattn.get_key(c, t) for t in adaattn.LOSS_TAPS}
  sk = {t: adaattn.get_key(s, t) for t in adaattn.LOSS_TAPS}
  # r21 is 16x16 = 256 style positions: sample 100 of them with a given index, the deeper taps use all.
  index = np.random.default_rng(3).permutation(256)[:100]
  got = jax.jit(functools.partial(adaattn.local_feature_loss, max_sample=100))(g, c, s, ck, sk, None,
                                                                             sample_index=index)
  expected = 0.0
  for t in adaattn.LOSS_TAPS:
    idx = index if t == "r21" else None
    target = np_adaattn(c[t], s[t], np_get_key(c, t), np_get_key(s, t), None, idx)
    expected += np.mean((np.asarray(g[t], np.float64) - target) ** 2)
  np.testing.assert_allclose(got, expected, rtol=1e-4)


# Every key tap's get_key in one program: run eagerly, each op on each shape would compile a program of its own.
_keys = jax.jit(lambda feats: {t: adaattn.get_key(feats, t) for t in adaattn.KEY_TAPS})


def test_transform_and_skip_decoder_match_numpy(setup):
  m, p = setup["frozen"], setup["params"]
  c, s = setup["c_feats"], setup["s_feats"]
  ck, sk = _keys(c), _keys(s)
  t, skip = jax.jit(m.transform.apply)({"params": p["transform"]}, c, s, ck, sk, jax.random.key(0))
  assert t.shape == c["r41"].shape and skip.shape == c["r31"].shape
  tp = p["transform"]["transformer"]
  a4 = np_adaattn(c["r41"], s["r41"], np_get_key(c, "r41"), np_get_key(s, "r41"), tp["attn_adain_4_1"])
  a5 = np_adaattn(c["r51"], s["r51"], np_get_key(c, "r51"), np_get_key(s, "r51"), tp["attn_adain_5_1"])
  np_t = np_conv3x3(a4 + np_up2(a5), tp["merge_conv"])
  np_skip = np_adaattn(c["r31"], s["r31"], np_get_key(c, "r31"), np_get_key(s, "r31"), p["transform"]["adaattn_3"])
  np.testing.assert_allclose(t, np_t, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(skip, np_skip, rtol=1e-4, atol=1e-5)
  # The skip decoder: r41 (4x4, 32 ch) + r31 skip (8x8, 16 ch) -> RGB 32x32; the concat is [decoder, skip].
  out = jax.jit(m.decoder.apply)({"params": p["decoder"]}, t, skip)
  assert out.shape == (2, 32, 32, 3) and out.dtype == jnp.float32
  d = p["decoder"]
  x = np.concatenate([np_up2(np.maximum(np_conv3x3(np_t, d["decoder_layer_1_1"]), 0)), np_skip], axis=-1)
  for idx, up in ((1, 0), (4, 0), (7, 0), (10, 1), (14, 0), (17, 1), (21, 0)):
    x = np.maximum(np_conv3x3(x, d[f"decoder_layer_2_{idx}"]), 0)
    x = np_up2(x) if up else x
  np.testing.assert_allclose(out, np_conv3x3(x, d["decoder_layer_2_24"]), rtol=1e-3, atol=1e-4)


def test_loss_matches_hand_computation_and_frozen_targets(setup):
  s = setup
  noise = np.random.default_rng(0)
  enc = jax.tree.map(lambda a: a * (1 + 0.2 * noise.normal(size=a.shape)).astype(np.float32), s["vgg"])
  params = dict(s["params"], encoder=enc)
  loss, metrics = s["loss_trained"](params, s["vgg"], s["content"], s["style"], jax.random.key(0))
  assert s["trained"].metric_names == ("total", "global", "local", "content_norm")
  assert set(metrics) == set(s["trained"].metric_names)
  assert all(v.dtype == jnp.float32 for v in metrics.values())
  # Stylize with the trained encoder, then score with the frozen loss VGG in numpy.
  vgg_apply = jax.jit(VGGEncoder("r51", width=W).apply)
  ef = lambda x: vgg_apply({"params": enc}, x)
  cf, sf = ef(s["content"]), ef(s["style"])
  keys = lambda f: {t: adaattn.get_key(f, t) for t in adaattn.KEY_TAPS}
  t, skip = s["trained"].transform.apply({"params": params["transform"]}, cf, sf, keys(cf), keys(sf))
  g = vgg_apply({"params": s["vgg"]}, s["trained"].decoder.apply({"params": params["decoder"]}, t, skip))
  c, st = s["c_feats"], s["s_feats"]
  l_global = l_local = l_content = 0.0
  for tap in adaattn.LOSS_TAPS:
    (mg, sg), (ms, ss) = np_stats(g[tap]), np_stats(st[tap])
    l_global += np.mean((mg - ms) ** 2) + np.mean((sg - ss) ** 2)
    target = np_adaattn(c[tap], st[tap], np_get_key(c, tap), np_get_key(st, tap))
    l_local += np.mean((np.asarray(g[tap], np.float64) - target) ** 2)
    l_content += np.mean((np_norm(g[tap]) - np_norm(c[tap])) ** 2)
  np.testing.assert_allclose([metrics["global"], metrics["local"], metrics["content_norm"]],
                             [l_global, l_local, l_content], rtol=2e-4)
  np.testing.assert_allclose(loss, 10 * l_global + 0.5 * l_local + 2 * l_content, rtol=2e-4)


def test_content_loss_is_skipped_at_weight_0(setup):
  s = setup
  p = {k: v for k, v in s["params"].items() if k != "encoder"}
  _, metrics = jax.eval_shape(s["frozen"].loss, p, s["vgg"], s["content"], s["style"], jax.random.key(0))
  assert set(metrics) == set(s["frozen"].metric_names) == {"total", "global", "local"}
  # The frozen-encoder path (features reused from the loss VGG) equals a trained encoder still equal to the VGG.
  loss, metrics = s["frozen"].loss(p, s["vgg"], s["content"], s["style"], jax.random.key(0))
  _, ref = s["loss_trained"](dict(p, encoder=s["vgg"]), s["vgg"], s["content"], s["style"], jax.random.key(0))
  np.testing.assert_allclose([metrics["global"], metrics["local"]], [ref["global"], ref["local"]], rtol=1e-5)
  np.testing.assert_allclose(loss, 10 * ref["global"] + 3 * ref["local"], rtol=1e-5)


def test_stylize_alpha_and_any_size(setup):
  s = setup
  m, p = s["frozen"], {k: v for k, v in s["params"].items() if k != "encoder"}
  c = s["c_feats"]
  out0 = s["stylize"](p, s["vgg"], s["content"], s["style"], jnp.float32(0.0))
  decode = jax.jit(m.decoder.apply)
  np.testing.assert_allclose(out0, decode({"params": p["decoder"]}, c["r41"], c["r31"]), rtol=1e-5, atol=1e-6)
  out1 = s["stylize"](p, s["vgg"], s["content"], s["style"], jnp.float32(1.0))
  t, skip = jax.jit(m.transform.apply)({"params": p["transform"]}, c, s["s_feats"], _keys(c), _keys(s["s_feats"]))
  assert out1.shape == (2, 32, 32, 3) and out1.dtype == jnp.float32
  np.testing.assert_allclose(out1, decode({"params": p["decoder"]}, t, skip), rtol=1e-4, atol=1e-5)
  odd = jax.jit(m.stylize_any_size)(p, s["vgg"], s["content"][:1, :27, :21], s["style"][:1, :30], 1.0)
  assert odd.shape == (1, 27, 21, 3) and np.all(np.isfinite(odd))


def test_configs():
  path = os.path.join(os.path.dirname(__file__), "..", "configs", "adaattn.py")
  spec = importlib.util.spec_from_file_location("adaattn_config", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config()
  assert (c.model.style_weight, c.model.local_weight, c.model.content_weight) == (10.0, 3.0, 0.0)
  assert (c.train.lr, c.train.schedule, c.train.epoch_steps, c.train.steps) == (2e-4, "epoch_step", 10_348, 51_740)
  assert (c.train.lr_constant_epochs, c.train.lr_epoch_factor, c.train.batch_size) == (2, 0.3, 8)
  assert (c.data.load_size, c.data.crop_size, c.imp.rounds) == (512, 256, 10)
  d = mod.get_config("demo")
  assert d.data.crop_size % 16 == 0 and d.data.content == "demo"
  with pytest.raises(ValueError, match="demo"):
    mod.get_config("nope")


@pytest.mark.e2e
def test_imp_two_rounds_prunes_the_transform(tmp_path):
  config = tiny_config(model__name="adaattn", imp__rounds=2, train__steps=3, **EARLY_BIRD)  # trains the encoder
  imp.run(config_lib.resolve(config), str(tmp_path))
  assert_early_bird_and_stability_work(str(tmp_path), 2)
  t = checkpoint.load_ticket(workdir_lib.ticket_dir(str(tmp_path), "imp", 2))
  assert set(t.masks) == {"encoder", "decoder", "transform"}
  # The tables carry AdaAttN's own term names, recorded with every ticket.
  assert t.metrics["terms"] == ["global", "local"] and "content" not in t.metrics["per_pair"]
  with open(os.path.join(tmp_path, "results.csv")) as f:
    assert f.readline().strip().endswith(",global,local,total,relative_to_dense")
  with open(os.path.join(tmp_path, "summary.csv")) as f:
    head = f.readline()
  assert "global_relative" in head and "local_ci_high" in head and "content" not in head
  pruned = {k: int(np.sum(~m)) for k, m in jax.tree.leaves_with_path(t.masks["transform"])}
  assert sum(pruned.values()) > 0
  for p, m in zip(jax.tree.leaves(t.trained_params), jax.tree.leaves(t.masks)):
    assert np.all(np.asarray(p)[~np.asarray(m)] == 0)
  # Gradients reach every group (encoder included) and stay finite: training moved each one.
  for group in ("encoder", "decoder", "transform"):
    moved = [np.abs(np.asarray(a) * m - np.asarray(b) * m).max()
             for a, b, m in zip(jax.tree.leaves(t.trained_params[group]), jax.tree.leaves(t.rewind_params[group]),
                                jax.tree.leaves(t.masks[group]))]
    assert np.all(np.isfinite(moved)) and max(moved) > 0, group
