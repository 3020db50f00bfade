"""Tests for jaxtickets.models.vgg: layout, parameter counts, taps, truncation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtickets.errors import UserError
from jaxtickets.models import layers, vgg


def _count(tree):
  return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))


ENC = vgg.VGGEncoder("r51", width=1 / 16)
APPLY = jax.jit(ENC.apply)  # one wrapper, so tests with the same input shape share a compile


@pytest.fixture(scope="module")
def params():
  """Random width-1/16 VGG params up to r51, initialised once for the file."""
  return layers.init_params(ENC, jax.random.key(0), jnp.zeros((1, 16, 16, 3)))


@pytest.mark.parametrize("depth,count", [("r41", 3_505_740), ("r51", 12_944_972)])
def test_full_width_parameter_counts(depth, count):
  enc = vgg.VGGEncoder(depth)
  shapes = jax.eval_shape(lambda: enc.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))["params"])
  assert _count(shapes) == count
  assert set(shapes) == set(vgg.vgg_layer_names(depth))
  assert shapes["conv0"]["kernel"].shape == (1, 1, 3, 3)
  assert shapes["conv4_1"]["kernel"].shape == (3, 3, 256, 512)


def test_layer_names():
  assert vgg.vgg_layer_names("r11") == ("conv0", "conv1_1")
  assert vgg.vgg_layer_names("r41") == ("conv0", "conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2",
                                        "conv3_3", "conv3_4", "conv4_1")
  assert vgg.vgg_layer_names("r51")[-5:] == ("conv4_1", "conv4_2", "conv4_3", "conv4_4", "conv5_1")
  with pytest.raises(UserError, match="r61"):
    vgg.vgg_layer_names("r61")


@pytest.mark.parametrize("size,sides", [(32, (32, 16, 8, 4, 2)), (33, (33, 17, 9, 5, 3))])
def test_tap_shapes_with_ceil_pooling(params, size, sides):
  x = jax.random.uniform(jax.random.key(1), (2, size, size, 3))
  taps = APPLY({"params": params}, x)
  assert tuple(taps) == vgg.TAPS
  for tap, side, c in zip(vgg.TAPS, sides, (4, 8, 16, 32, 32)):
    assert taps[tap].shape == (2, side, side, c), tap
    assert float(taps[tap].min()) >= 0.0  # every tap is taken after its ReLU


def _np_conv(x, kernel, bias):
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
  h, w = x.shape[1:3]
  return sum(np.einsum("bhwc,co->bhwo", xp[:, i:i + h, j:j + w], kernel[i, j]) for i in range(3)
             for j in range(3)) + bias


def test_r21_matches_independent_numpy_forward(params):
  enc = vgg.VGGEncoder("r21", width=1 / 16)
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), vgg.truncate(params, "r21"))
  p["conv0"]["bias"] = np.array([0.1, -0.2, 0.3])  # non-zero biases so they are exercised
  x = np.random.default_rng(0).uniform(size=(2, 7, 6, 3))
  relu = lambda a: np.maximum(a, 0.0)
  h = np.einsum("bhwc,co->bhwo", x, p["conv0"]["kernel"][0, 0]) + p["conv0"]["bias"]
  r11 = relu(_np_conv(h, **p["conv1_1"]))
  h = relu(_np_conv(r11, **p["conv1_2"]))
  h = np.pad(h, ((0, 0), (0, 1), (0, 0), (0, 0)), constant_values=-np.inf)  # H=7 is odd: ceil mode
  h = h.reshape(2, 4, 2, 3, 2, h.shape[-1]).max(axis=(2, 4))
  r21 = relu(_np_conv(h, **p["conv2_1"]))
  taps = jax.jit(enc.apply)({"params": p}, jnp.asarray(x, jnp.float32))  # eager, every op compiles alone
  np.testing.assert_allclose(taps["r11"], r11, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(taps["r21"], r21, rtol=1e-4, atol=1e-5)


def test_truncate_selects_layers_by_name(params):
  sub = vgg.truncate(params, "r31")
  assert tuple(sub) == vgg.vgg_layer_names("r31")
  assert sub["conv3_1"] is params["conv3_1"]
  x = jax.random.uniform(jax.random.key(3), (2, 32, 32, 3))
  full = APPLY({"params": params}, x)
  short = jax.jit(vgg.VGGEncoder("r31", width=1 / 16).apply)({"params": sub}, x)
  assert tuple(short) == ("r11", "r21", "r31")
  np.testing.assert_allclose(short["r31"], full["r31"], rtol=1e-6)
  with pytest.raises(UserError, match="conv5_1"):
    vgg.truncate(sub, "r51")


def test_random_init_keeps_deep_taps_alive(params):
  # He init: a random loss VGG must not shrink r51 to ~0, or its losses would be meaningless.
  x = jax.random.uniform(jax.random.key(4), (2, 32, 32, 3))
  taps = APPLY({"params": params}, x)
  assert float(jnp.std(taps["r51"])) > 0.05 * float(jnp.std(taps["r11"]))


@pytest.mark.parametrize("h,w", [(5, 7), (4, 6), (3, 2)])
def test_max_pool_floor_drops_odd_edges(h, w):
  x = np.random.default_rng(h * w).normal(size=(2, h, w, 3))
  expected = np.empty((2, h // 2, w // 2, 3))
  for i in range(h // 2):
    for j in range(w // 2):
      expected[:, i, j] = x[:, 2 * i:2 * i + 2, 2 * j:2 * j + 2].max(axis=(1, 2))
  np.testing.assert_array_equal(vgg.max_pool_floor(jnp.asarray(x, jnp.float32)), expected.astype(np.float32))


def test_floor_pool_encoder_shapes_and_default_is_ceil(params):
  assert vgg.VGGEncoder().ceil_pool
  x = jax.random.uniform(jax.random.key(5), (1, 35, 35, 3))
  floor = jax.jit(vgg.VGGEncoder("r51", width=1 / 16, ceil_pool=False).apply)({"params": params}, x)
  assert [floor[t].shape[1] for t in vgg.TAPS] == [35, 17, 8, 4, 2]
  ceil = APPLY({"params": params}, x)
  assert [ceil[t].shape[1] for t in vgg.TAPS] == [35, 18, 9, 5, 3]
  np.testing.assert_array_equal(floor["r11"], ceil["r11"])
  # At even sizes floor and ceil pooling agree exactly.
  x = x[:, :32, :32]
  a = jax.jit(vgg.VGGEncoder("r41", width=1 / 16, ceil_pool=False).apply)({"params": vgg.truncate(params, "r41")}, x)
  np.testing.assert_array_equal(a["r41"], APPLY({"params": params}, x)["r41"])


def test_r21_floor_pool_matches_numpy(params):
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), vgg.truncate(params, "r21"))
  x = np.random.default_rng(1).uniform(size=(1, 7, 9, 3))
  relu = lambda a: np.maximum(a, 0.0)
  h = np.einsum("bhwc,co->bhwo", x, p["conv0"]["kernel"][0, 0]) + p["conv0"]["bias"]
  h = relu(_np_conv(relu(_np_conv(h, **p["conv1_1"])), **p["conv1_2"]))
  h = h[:, :6, :8].reshape(1, 3, 2, 4, 2, h.shape[-1]).max(axis=(2, 4))  # floor: the last row/column is dropped
  r21 = relu(_np_conv(h, **p["conv2_1"]))
  taps = jax.jit(vgg.VGGEncoder("r21", width=1 / 16, ceil_pool=False).apply)({"params": p}, jnp.asarray(x, jnp.float32))
  np.testing.assert_allclose(taps["r21"], r21, rtol=1e-4, atol=1e-5)
