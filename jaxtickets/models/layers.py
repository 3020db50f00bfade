"""Building blocks shared by the style-transfer models: reflect-padded conv, ceil-mode pool, AdaIN statistics."""

import contextlib
import contextvars
import functools
from typing import Any, Callable, Iterator

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

_DN = ("NHWC", "HWIO", "NHWC")

# PyTorch's Conv2d default, kaiming_uniform(a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in)), variance 1/(3 fan_in).
# Whether conv3x3_reflect's default on CPU uses the matmul weight gradient (scripts/bench.py measures both).
MATMUL_GRAD_ON_CPU = True
MATMUL_GRAD_MIN_CHANNELS = 16

torch_default_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")

# The platform the traced program is for, when it is not the machine that traces it: a program compiled ahead of
# time for a TPU on a CPU machine must get the TPU's conv path, not the CPU's. None = JAX's default backend.
_TARGET_PLATFORM: contextvars.ContextVar[str | None] = contextvars.ContextVar("target_platform", default=None)


@contextlib.contextmanager
def target_platform(platform: str | None) -> Iterator[None]:
  """Within the block, the layers trace their code path for `platform` ('cpu', 'gpu', 'tpu'; None: JAX's default
  backend). Set it around the tracing (jit's lower or first call) of a program compiled for other devices."""
  token = _TARGET_PLATFORM.set(platform)
  try:
    yield
  finally:
    _TARGET_PLATFORM.reset(token)


def platform() -> str:
  """The platform the layers trace for: the target_platform block's, else JAX's default backend."""
  return _TARGET_PLATFORM.get() or jax.default_backend()


@functools.partial(jax.jit, static_argnums=0)
def _jit_init(module: nn.Module, rng: jax.Array, *inputs) -> dict:
  return module.init(rng, *inputs)["params"]


def init_params(module: nn.Module, rng: jax.Array, *inputs) -> dict:
  """`module.init(rng, *inputs)["params"]`, jitted (cached per module), drawing from the classic threefry."""
  # Partitionable threefry makes each random init several times slower to compile on XLA CPU; the classic stream
  # is just as deterministic for a given key and shape.
  with jax.threefry_partitionable(False):
    return _jit_init(module, rng, *inputs)


def reflect_pad(x: jax.Array, n: int = 1) -> jax.Array:
  """Pads H and W of an NHWC array by reflection without repeating the edge (== torch ReflectionPad2d)."""
  if n >= min(x.shape[1:3]):  # torch refuses this; jnp.pad reflects repeatedly
    return jnp.pad(x, ((0, 0), (n, n), (n, n), (0, 0)), mode="reflect")
  # Slices and one concatenation per axis: the same values as jnp.pad(mode="reflect"), which nests jitted helpers
  # that are traced anew for every shape, and every conv of a model pads.
  for axis in (1, 2):
    size = x.shape[axis]
    before = jax.lax.slice_in_dim(x, 1, n + 1, axis=axis)
    after = jax.lax.slice_in_dim(x, size - n - 1, size - 1, axis=axis)
    if n > 1:
      before, after = jax.lax.rev(before, (axis,)), jax.lax.rev(after, (axis,))
    x = jax.lax.concatenate([before, x, after], axis)
  return x


@jax.custom_jvp
def relu(x: jax.Array) -> jax.Array:
  """max(x, 0) with gradient 0 at 0: jax.nn.relu's definition without its jit wrapper, whose nested program is
  traced anew for every activation shape under vmap and grad."""
  return jax.lax.max(x, jax.lax.full_like(x, 0))


relu.defjvps(lambda g, ans, x: jax.lax.select(x > 0, g, jax.lax.full_like(g, 0)))


def _conv(x: jax.Array, kernel: jax.Array, padding) -> jax.Array:
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), padding, dimension_numbers=_DN)


def _same_cropped(xp: jax.Array, kernel: jax.Array) -> jax.Array:
  """The VALID 3x3 conv of a padded input, run as a SAME conv whose 1-pixel border is cropped off."""
  # XLA CPU runs a SAME conv faster than a VALID one (docs/speed-and-scale.md); the cropped border is the only difference.
  return _conv(xp, kernel, "SAME")[:, 1:-1, 1:-1]


@jax.custom_vjp
def _valid_conv_matmul_grad(xp: jax.Array, kernel: jax.Array) -> jax.Array:
  """VALID 3x3 conv of a padded input with a hand-written VJP: dW as three large matmuls (fast on XLA CPU)."""
  return _same_cropped(xp, kernel)


def _valid_conv_fwd(xp, kernel):
  return _same_cropped(xp, kernel), (xp, kernel)


def _valid_conv_bwd(res, g):
  xp, kernel = res
  b, h, w, co = g.shape
  ci = xp.shape[-1]
  # dX: the full correlation of g with the flipped, transposed kernel (what autodiff of the VALID conv computes).
  dxp = _conv(g, jax.lax.rev(kernel, (0, 1)).swapaxes(2, 3), ((2, 2), (2, 2)))
  # dW[i, j] = sum over b, y, x of xp[b, y + i, x + j]^T g[b, y, x]. Per row shift i, one matmul against g
  # placed at the three column offsets j (zero-padded to the padded width) gives dW[i, 0..2] at once: 3 copies of
  # g and 3 row slices of xp feed 3 large matmuls, where XLA CPU's own dW (a conv with the batch as features)
  # runs several times slower at large H*W.
  zero = jnp.zeros((), g.dtype)
  g3 = jnp.stack([jax.lax.pad(g, zero, ((0, 0, 0), (0, 0, 0), (j, 2 - j, 0), (0, 0, 0))) for j in range(3)],
                 axis=-2).reshape(-1, 3 * co)
  rows = [jax.lax.dot_general(xp[:, i:i + h].reshape(-1, ci), g3, (((0,), (0,)), ((), ()))) for i in range(3)]
  dw = jnp.stack(rows).reshape(3, ci, 3, co).transpose(0, 2, 1, 3)
  return dxp.astype(xp.dtype), dw.astype(kernel.dtype)


_valid_conv_matmul_grad.defvjp(_valid_conv_fwd, _valid_conv_bwd)


def conv3x3_reflect(x: jax.Array, kernel: jax.Array, bias: jax.Array, same_trick: bool | None = None,
                    matmul_grad: bool | None = None) -> jax.Array:
  """Reflect pad 1 + 3x3 VALID conv + bias.

  `same_trick` (default: on when the target `platform()` is the CPU, off on GPU/TPU, which keep the plain conv) runs
  the conv as a cropped SAME conv; `matmul_grad` (default: `same_trick and MATMUL_GRAD_ON_CPU`) also swaps in a
  custom VJP whose weight gradient is three large matmuls (layers with at least
  MATMUL_GRAD_MIN_CHANNELS channels in and out). Every path's value and gradients equal the plain VALID
  conv's up to float rounding.
  """
  same_trick = platform() == "cpu" if same_trick is None else same_trick
  matmul_grad = (same_trick and MATMUL_GRAD_ON_CPU) if matmul_grad is None else matmul_grad
  xp = reflect_pad(x)
  # Layers with few channels (RGB in or out) keep XLA's own dW, which is as fast there.
  if matmul_grad and min(kernel.shape[2:]) >= MATMUL_GRAD_MIN_CHANNELS:
    y = _valid_conv_matmul_grad(xp, kernel)
  elif same_trick:
    y = _same_cropped(xp, kernel)
  else:
    y = _conv(xp, kernel, "VALID")
  return y + bias


class KnownShapeParams:
  """Mixin for modules whose initializers take the param's shape as their first argument (flax's Conv and Dense, ours).

  Reads an existing param directly and checks its shape against that argument. Flax's own `param` instead evaluates
  the initializer abstractly at every apply to learn the shape (a `jax.eval_shape` per param): a tenth to a fifth of
  the time it takes to trace a model's train step, paid in every process, every program. Creating a param (`init`) and
  any other initializer signature keep flax's path.
  """

  def param(self, name, init_fn, *init_args, unbox=True, **init_kwargs):
    shape = init_args[0] if init_args else None
    if (isinstance(shape, tuple) and all(isinstance(n, int) for n in shape)
        and self.has_variable("params", name)):
      value = self.get_variable("params", name)
      if tuple(value.shape) != shape:
        raise flax.errors.ScopeParamShapeError(name, self.scope.path_text, tuple(value.shape), shape)
      return value
    return super().param(name, init_fn, *init_args, unbox=unbox, **init_kwargs)


class Conv(KnownShapeParams, nn.Conv):
  """flax's Conv, reading its params as KnownShapeParams does."""


class Dense(KnownShapeParams, nn.Dense):
  """flax's Dense, reading its params as KnownShapeParams does."""


class ReflectConv(KnownShapeParams, nn.Module):
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
  # (jnp.var nests jitted helpers, but spelled out by hand it changed the rounding of vmapped (packed) steps.)
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
