"""Building blocks shared by the style-transfer models: reflect-padded conv, ceil-mode pool, AdaIN statistics."""

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

_DN = ("NHWC", "HWIO", "NHWC")

# PyTorch's Conv2d default, kaiming_uniform(a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in)), variance 1/(3 fan_in).
torch_default_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


@functools.partial(jax.jit, static_argnums=0)
def _jit_init(module: nn.Module, rng: jax.Array, *inputs) -> dict:
  return module.init(rng, *inputs)["params"]


def init_params(module: nn.Module, rng: jax.Array, *inputs) -> dict:
  """`module.init(rng, *inputs)["params"]`, jitted (cached per module), drawing from the classic threefry."""
  # Partitionable threefry makes each random init several times slower to compile on XLA CPU (~10 s vs ~2 s
  # for the VGG); the classic stream is just as deterministic for a given key and shape.
  with jax.threefry_partitionable(False):
    return _jit_init(module, rng, *inputs)


def reflect_pad(x: jax.Array, n: int = 1) -> jax.Array:
  """Pads H and W of an NHWC array by reflection without repeating the edge (== torch ReflectionPad2d)."""
  return jnp.pad(x, ((0, 0), (n, n), (n, n), (0, 0)), mode="reflect")


def conv3x3_reflect(x: jax.Array, kernel: jax.Array, bias: jax.Array, same_trick: bool | None = None) -> jax.Array:
  """Reflect pad 1 + 3x3 VALID conv + bias; `same_trick` (default: on CPU) runs it as a cropped SAME conv."""
  if same_trick is None:
    same_trick = jax.default_backend() == "cpu"
  xp = reflect_pad(x)
  if same_trick:
    # XLA CPU runs a SAME conv ~3x faster than VALID; the cropped border is the only difference.
    y = jax.lax.conv_general_dilated(xp, kernel, (1, 1), "SAME", dimension_numbers=_DN)[:, 1:-1, 1:-1]
  else:
    y = jax.lax.conv_general_dilated(xp, kernel, (1, 1), "VALID", dimension_numbers=_DN)
  return y + bias


class ReflectConv(nn.Module):
  """3x3 conv after a 1-pixel reflection pad; float32 params, compute in `dtype`."""
  features: int
  dtype: Any = jnp.float32
  kernel_init: Callable = torch_default_init

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", self.kernel_init, (3, 3, x.shape[-1], self.features), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
    return conv3x3_reflect(x.astype(self.dtype), kernel.astype(self.dtype), bias.astype(self.dtype))


def max_pool_ceil(x: jax.Array) -> jax.Array:
  """2x2 stride-2 max pool with PyTorch ceil_mode=True: odd sides keep a 1-wide last window."""
  b, h, w, c = x.shape
  ph, pw = h % 2, w % 2
  if ph or pw:
    x = jnp.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)), constant_values=-jnp.inf)
  # The reshape-max has a much cheaper backward on XLA CPU than reduce_window's select_and_scatter.
  return x.reshape(b, (h + ph) // 2, 2, (w + pw) // 2, 2, c).max(axis=(2, 4))


def upsample_nearest2x(x: jax.Array) -> jax.Array:
  """Nearest-neighbour x2 upsampling of H and W: every pixel becomes a 2x2 block."""
  b, h, w, c = x.shape
  return jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c)).reshape(b, 2 * h, 2 * w, c)


def mean_std(x: jax.Array, eps: float = 1e-5) -> tuple[jax.Array, jax.Array]:
  """Per-sample, per-channel mean and sqrt(unbiased var + eps) over H, W, in float32; shapes (B,1,1,C)."""
  x = x.astype(jnp.float32)
  mean = jnp.mean(x, axis=(1, 2), keepdims=True)
  var = jnp.var(x, axis=(1, 2), keepdims=True, ddof=1)
  return mean, jnp.sqrt(var + eps)


def normalize(x: jax.Array, eps: float = 1e-5) -> jax.Array:
  """(x - mean) / sqrt(unbiased var + eps) per sample and channel (the reference's `norm` /
  `mean_variance_norm`), in float32."""
  mean, std = mean_std(x, eps)
  return (x.astype(jnp.float32) - mean) / std


def adain(content: jax.Array, style: jax.Array, eps: float = 1e-5) -> jax.Array:
  """Adaptive instance normalisation: gives `content` the channel mean/std of `style` (in content's dtype)."""
  mc, sc = mean_std(content, eps)
  ms, ss = mean_std(style, eps)
  out = ss * (content.astype(jnp.float32) - mc) / sc + ms
  return out.astype(content.dtype)
