"""Tests for jaxtickets.models.decoder: layout, parameter count, an independent numpy forward."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxtickets.models import layers
from jaxtickets.models.decoder import Decoder

NAMES = ("conv4_1", "conv3_4", "conv3_3", "conv3_2", "conv3_1", "conv2_2", "conv2_1", "conv1_2", "conv1_1")


def test_full_width_parameter_count_and_layout():
  dec = Decoder()
  shapes = jax.eval_shape(lambda: dec.init(jax.random.key(0), jnp.zeros((1, 4, 4, 512)))["params"])
  assert sum(int(np.prod(a.shape)) for a in jax.tree.leaves(shapes)) == 3_505_219
  assert set(shapes) == set(NAMES)
  assert shapes["conv4_1"]["kernel"].shape == (3, 3, 512, 256)
  assert shapes["conv3_1"]["kernel"].shape == (3, 3, 256, 128)
  assert shapes["conv1_1"]["kernel"].shape == (3, 3, 64, 3)


def _np_conv(x, kernel, bias):
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
  h, w = x.shape[1:3]
  return sum(np.einsum("bhwc,co->bhwo", xp[:, i:i + h, j:j + w], kernel[i, j]) for i in range(3)
             for j in range(3)) + bias


def test_forward_matches_independent_numpy():
  dec = Decoder(width=1 / 16)
  x = np.random.default_rng(0).normal(size=(2, 3, 4, 32))
  params = layers.init_params(dec, jax.random.key(1), jnp.zeros((1, 4, 4, 32)))
  # Random biases so they are exercised (the init sets them to zero).
  rng = np.random.default_rng(2)
  params = {n: {"kernel": p["kernel"], "bias": 0.1 * rng.normal(size=p["bias"].shape).astype(np.float32)}
            for n, p in params.items()}
  out = jax.jit(dec.apply)({"params": params}, jnp.asarray(x, jnp.float32))
  assert out.shape == (2, 24, 32, 3) and out.dtype == jnp.float32
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  h = x
  for name in NAMES:
    h = _np_conv(h, **p[name])
    if name != "conv1_1":  # the output layer has no activation
      h = np.maximum(h, 0.0)
    if name in ("conv4_1", "conv3_1", "conv2_1"):
      h = h.repeat(2, axis=1).repeat(2, axis=2)
  np.testing.assert_allclose(out, h, rtol=1e-4, atol=1e-5)
  assert (h < 0).any()  # the check above covers negative (unclamped) outputs

