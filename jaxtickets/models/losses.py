"""Loss terms shared by the style-transfer models (all reductions in float32, PyTorch MSELoss = mean)."""

import jax
import jax.numpy as jnp

from jaxtickets.models import layers
from jaxtickets.models import vgg as vgg_lib

ALL_TAPS = vgg_lib.TAPS


def mse(a: jax.Array, b: jax.Array) -> jax.Array:
  """Mean squared error over all elements, in float32."""
  return jnp.mean((a.astype(jnp.float32) - b.astype(jnp.float32)) ** 2)


def mean_std_style_loss(g_taps: dict, s_taps: dict, taps=ALL_TAPS) -> jax.Array:
  """Sum over taps of MSE(channel means) + MSE(channel stds) (unbiased var + 1e-5)."""
  total = jnp.float32(0.0)
  for t in taps:
    mg, sg = layers.mean_std(g_taps[t])
    ms, ss = layers.mean_std(s_taps[t])
    total += mse(mg, ms) + mse(sg, ss)
  return total


def normalized_content_loss(g_taps: dict, c_taps: dict, taps=("r41", "r51")) -> jax.Array:
  """Sum over taps of MSE(norm(generated), norm(content)) (SANet, MANet, MCCNet)."""
  total = jnp.float32(0.0)
  for t in taps:
    total += mse(layers.normalize(g_taps[t]), layers.normalize(c_taps[t]))
  return total


def feature_loss(a_taps: dict, b_taps: dict, taps=ALL_TAPS) -> jax.Array:
  """Sum over taps of the MSE between raw features (the identity loss L_id2)."""
  total = jnp.float32(0.0)
  for t in taps:
    total += mse(a_taps[t], b_taps[t])
  return total
