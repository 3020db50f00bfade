"""Tests for jaxtickets.models.layers: padding, pooling, upsampling, reflect conv, AdaIN statistics."""

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtickets.models import layers

X5 = np.array([[3, 7, 1, 0, 5],
               [2, 9, 4, 8, 6],
               [1, 0, 2, 3, 4],
               [6, 5, 7, 1, 2],
               [8, 3, 0, 9, 1]], np.float32)


def _nhwc(a):
  return jnp.asarray(a)[None, :, :, None]


def np_reflect_conv(x, k, b):
  """Independent reference: numpy reflect pad + a VALID 3x3 cross-correlation, in float64."""
  x, k = np.asarray(x, np.float64), np.asarray(k, np.float64)
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
  h, w = x.shape[1:3]
  out = sum(np.einsum("bhwc,co->bhwo", xp[:, i:i + h, j:j + w], k[i, j]) for i in range(3) for j in range(3))
  return out + np.asarray(b, np.float64)


def test_reflect_pad_matches_hand_worked_example():
  expected = np.array([[9, 2, 9, 4, 8, 6, 8],
                       [7, 3, 7, 1, 0, 5, 0],
                       [9, 2, 9, 4, 8, 6, 8],
                       [0, 1, 0, 2, 3, 4, 3],
                       [5, 6, 5, 7, 1, 2, 1],
                       [3, 8, 3, 0, 9, 1, 9],
                       [5, 6, 5, 7, 1, 2, 1]], np.float32)
  np.testing.assert_array_equal(layers.reflect_pad(_nhwc(X5))[0, :, :, 0], expected)


def test_reflect_pad_of_any_width_and_its_gradient_match_jnp_pad():
  """The slice-and-concatenate pad against jnp.pad(mode='reflect') (values and gradient), wider pads included; a pad
  as wide as a side takes jnp.pad's own path (repeated reflection)."""
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5, 7, 3)).astype(np.float32))
  weights = jnp.asarray(np.random.default_rng(1).normal(size=(2, 11, 13, 3)).astype(np.float32))
  for n in (1, 2, 3, 4, 5):
    reference = lambda x: jnp.pad(x, ((0, 0), (n, n), (n, n), (0, 0)), mode="reflect")
    np.testing.assert_array_equal(layers.reflect_pad(x, n), reference(x), err_msg=f"n={n}")
    np.testing.assert_array_equal(layers.reflect_pad(x, n), np.pad(np.asarray(x), ((0, 0), (n, n), (n, n), (0, 0)),
                                                                   mode="reflect"), err_msg=f"n={n}")
    if n <= 3:  # the gradient scatters each border pixel back onto the pixel it reflects
      loss = lambda pad: lambda x: jnp.sum(pad(x) * weights[:, 3 - n:8 + n, 3 - n:10 + n])
      np.testing.assert_allclose(jax.grad(loss(lambda x: layers.reflect_pad(x, n)))(x), jax.grad(loss(reference))(x),
                                 rtol=1e-6, atol=1e-6, err_msg=f"n={n}")


def test_max_pool_ceil_matches_hand_worked_example():
  expected = np.array([[9, 8, 6],
                       [6, 7, 4],
                       [8, 9, 1]], np.float32)
  np.testing.assert_array_equal(layers.max_pool_ceil(_nhwc(X5))[0, :, :, 0], expected)
  # All-negative input: the lone last row/column must not see a zero pad.
  np.testing.assert_array_equal(layers.max_pool_ceil(_nhwc(X5 - 10))[0, :, :, 0], expected - 10)


def test_max_pool_ceil_even_and_mixed_sizes():
  x = np.random.default_rng(0).normal(size=(2, 4, 7, 3)).astype(np.float32)
  y = np.asarray(layers.max_pool_ceil(jnp.asarray(x)))
  assert y.shape == (2, 2, 4, 3)
  for i in range(2):
    for j in range(4):
      np.testing.assert_array_equal(y[:, i, j], x[:, 2 * i:2 * i + 2, 2 * j:2 * j + 2].max(axis=(1, 2)))


def test_upsample_nearest2x_matches_hand_worked_example():
  x = np.array([[1, 2], [3, 4]], np.float32)
  expected = np.array([[1, 1, 2, 2],
                       [1, 1, 2, 2],
                       [3, 3, 4, 4],
                       [3, 3, 4, 4]], np.float32)
  np.testing.assert_array_equal(layers.upsample_nearest2x(_nhwc(x))[0, :, :, 0], expected)


@pytest.mark.parametrize("same_trick", [True, False])
def test_conv3x3_reflect_matches_numpy(same_trick):
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, 6, 7, 5)).astype(np.float32)
  k = rng.normal(size=(3, 3, 5, 4)).astype(np.float32)
  b = rng.normal(size=(4,)).astype(np.float32)
  y = layers.conv3x3_reflect(jnp.asarray(x), jnp.asarray(k), jnp.asarray(b), same_trick=same_trick)
  np.testing.assert_allclose(y, np_reflect_conv(x, k, b), rtol=1e-5, atol=1e-5)


def test_conv3x3_reflect_fast_path_gradients_equal_valid_path():
  rng = np.random.default_rng(2)
  x, k, b = (jnp.asarray(rng.normal(size=s).astype(np.float32)) for s in [(2, 6, 5, 3), (3, 3, 3, 4), (4,)])
  cot = jnp.asarray(rng.normal(size=(2, 6, 5, 4)).astype(np.float32))

  def grads(same_trick):
    f = lambda x, k, b: jnp.sum(layers.conv3x3_reflect(x, k, b, same_trick=same_trick, matmul_grad=False) * cot)
    return jax.jit(jax.grad(f, argnums=(0, 1, 2)))(x, k, b)

  for fast, slow in zip(grads(True), grads(False)):
    np.testing.assert_allclose(fast, slow, rtol=1e-5, atol=1e-5)
  # The bias gradient is the cotangent summed over B, H, W: an independent check of the reference path.
  np.testing.assert_allclose(grads(True)[2], np.asarray(cot).sum(axis=(0, 1, 2)), rtol=1e-5)


def test_reflect_conv_module_params_and_output():
  conv = layers.ReflectConv(4)
  x = jnp.asarray(np.random.default_rng(3).normal(size=(1, 5, 6, 3)).astype(np.float32))
  params = layers.init_params(conv, jax.random.key(0), x)
  assert set(params) == {"kernel", "bias"}
  assert params["kernel"].shape == (3, 3, 3, 4) and params["kernel"].dtype == jnp.float32
  np.testing.assert_array_equal(params["bias"], np.zeros(4))
  # PyTorch default init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with fan_in = 3*3*3.
  assert float(jnp.abs(params["kernel"]).max()) <= 1 / np.sqrt(27)
  params = {"kernel": params["kernel"], "bias": jnp.arange(4.0)}
  y = conv.apply({"params": params}, x)
  np.testing.assert_allclose(y, np_reflect_conv(x, params["kernel"], params["bias"]), rtol=1e-5, atol=1e-5)
  # On CPU the module runs the SAME-conv fast path (1-pixel padding inside the conv).
  if jax.default_backend() == "cpu":
    assert "padding=((1, 1), (1, 1))" in str(jax.make_jaxpr(conv.apply)({"params": params}, x))


@pytest.mark.parametrize("make, x_shape", [
    (lambda init: layers.ReflectConv(4, kernel_init=init), (2, 5, 6, 3)),
    (lambda init: layers.Conv(4, (3, 3), padding="SAME", kernel_init=init), (2, 5, 6, 3)),
    (lambda init: layers.Dense(4, kernel_init=init), (2, 3)),
])
def test_known_shape_params_apply_without_the_initializer_and_check_shapes(make, x_shape):
  """Apply reads the params without running the initializer (flax evaluates it at every apply), computes what
  flax's own module computes, and still refuses a param of the wrong shape by name."""
  calls = []
  counting_init = lambda key, shape, dtype=jnp.float32: calls.append(shape) or layers.torch_default_init(key, shape,
                                                                                                        dtype)
  module = make(counting_init)
  x = jnp.asarray(np.random.default_rng(0).normal(size=x_shape).astype(np.float32))
  params = layers.init_params(module, jax.random.key(0), x)
  assert len(calls) == 1  # init creates the kernel
  y = jax.jit(module.apply)({"params": params}, x)
  assert len(calls) == 1
  if not isinstance(module, layers.ReflectConv):  # the same module without the mixin: flax's path
    plain = (nn.Dense if isinstance(module, nn.Dense) else nn.Conv)(**{
        f: getattr(module, f) for f in ("features", "kernel_init") + (
            ("kernel_size", "padding") if isinstance(module, nn.Conv) else ())})
    np.testing.assert_array_equal(y, jax.jit(plain.apply)({"params": params}, x))
    assert len(calls) == 2  # flax's apply ran the initializer abstractly
  wrong = dict(params, kernel=params["kernel"][..., :3])
  with pytest.raises(flax.errors.ScopeParamShapeError, match="kernel"):
    module.apply({"params": wrong}, x)


def test_reflect_conv_bfloat16_computes_in_bf16_with_f32_params():
  conv = layers.ReflectConv(2, dtype=jnp.bfloat16)
  x = jnp.ones((1, 4, 4, 3))
  shapes = jax.eval_shape(lambda: conv.init(jax.random.key(0), x)["params"])
  assert shapes["kernel"].dtype == shapes["bias"].dtype == jnp.float32
  params = {"kernel": jnp.ones((3, 3, 3, 2)), "bias": jnp.zeros(2)}
  assert conv.apply({"params": params}, x).dtype == jnp.bfloat16


def test_mean_std_matches_numpy():
  x = np.random.default_rng(4).normal(2.0, 3.0, size=(2, 5, 4, 3)).astype(np.float32)
  mean, std = layers.mean_std(jnp.asarray(x))
  assert mean.shape == std.shape == (2, 1, 1, 3)
  np.testing.assert_allclose(mean, x.mean(axis=(1, 2), keepdims=True), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(std, np.sqrt(x.var(axis=(1, 2), ddof=1, keepdims=True) + 1e-5), rtol=1e-5)
  mean16, std16 = layers.mean_std(jnp.asarray(x, jnp.bfloat16))
  assert mean16.dtype == std16.dtype == jnp.float32


def test_relu_equals_jax_nn_relu_with_its_gradient():
  """Bitwise jax.nn.relu's values and gradients (under vmap, as in a packed step): 0 at 0, and a NaN goes through."""
  x = jnp.array([-2.0, -0.0, 0.0, 0.5, 3.0, jnp.nan, -jnp.inf, jnp.inf])
  np.testing.assert_array_equal(layers.relu(x), jax.nn.relu(x))
  grad = jax.vmap(jax.grad(layers.relu))(x)
  np.testing.assert_array_equal(grad, jax.vmap(jax.grad(jax.nn.relu))(x))
  np.testing.assert_array_equal(grad[:5], [0.0, 0.0, 0.0, 1.0, 1.0])
  y = jax.random.normal(jax.random.key(0), (2, 3, 4, 5))
  w = jax.random.normal(jax.random.key(1), (2, 3, 4, 5))
  loss = lambda f: lambda y: jnp.sum(f(y * 2.0 - 0.5) * w)
  np.testing.assert_array_equal(jax.jit(jax.grad(loss(layers.relu)))(y), jax.jit(jax.grad(loss(jax.nn.relu)))(y))


def test_adain_matches_numpy():
  rng = np.random.default_rng(5)
  c = rng.normal(1.0, 2.0, size=(2, 4, 6, 3))
  s = rng.normal(-3.0, 0.5, size=(2, 3, 5, 3))
  sd = lambda a: np.sqrt(a.var(axis=(1, 2), ddof=1, keepdims=True) + 1e-5)
  mu = lambda a: a.mean(axis=(1, 2), keepdims=True)
  expected = sd(s) * (c - mu(c)) / sd(c) + mu(s)
  out = layers.adain(jnp.asarray(c, jnp.float32), jnp.asarray(s, jnp.float32))
  assert out.shape == c.shape
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
  assert layers.adain(jnp.asarray(c, jnp.bfloat16), jnp.asarray(s, jnp.bfloat16)).dtype == jnp.bfloat16


def _plain_valid_conv(x, k, b):
  """The reference: reflect pad + plain VALID conv, differentiated by JAX's own autodiff."""
  y = jax.lax.conv_general_dilated(layers.reflect_pad(x), k, (1, 1), "VALID",
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return y + b


@pytest.fixture
def matmul_grad_everywhere(monkeypatch):
  """Lets the matmul weight gradient run on the tests' few-channel layers too."""
  monkeypatch.setattr(layers, "MATMUL_GRAD_MIN_CHANNELS", 1)


@pytest.mark.parametrize("shape", [(2, 6, 5, 3, 4), (3, 9, 12, 8, 16)])
def test_matmul_grad_conv_value_and_gradients_equal_plain_valid_conv(shape, matmul_grad_everywhere):
  bsz, h, w, ci, co = shape
  rng = np.random.default_rng(sum(shape))
  x, k, b = (jnp.asarray(rng.normal(size=s).astype(np.float32)) for s in [(bsz, h, w, ci), (3, 3, ci, co), (co,)])
  cot = jnp.asarray(rng.normal(size=(bsz, h, w, co)).astype(np.float32))
  fast = lambda x, k, b: layers.conv3x3_reflect(x, k, b, same_trick=True, matmul_grad=True)
  np.testing.assert_allclose(fast(x, k, b), np_reflect_conv(x, k, b), rtol=1e-5, atol=1e-5)

  def grads(f):
    return jax.jit(jax.grad(lambda x, k, b: jnp.sum(f(x, k, b) * cot), argnums=(0, 1, 2)))(x, k, b)

  got, want = grads(fast), grads(_plain_valid_conv)
  for g, r in zip(got, want):
    assert g.shape == r.shape and g.dtype == r.dtype
    np.testing.assert_allclose(g, r, rtol=2e-5, atol=2e-5 * float(jnp.abs(r).max()))
  # An independent check of the weight gradient: dW[i, j] = sum_bhw xp[b, h+i, w+j]^T cot[b, h, w] in float64.
  xp = np.pad(np.asarray(x, np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
  c64 = np.asarray(cot, np.float64)
  dw = np.array([[np.einsum("bhwc,bhwo->co", xp[:, i:i + h, j:j + w], c64) for j in range(3)] for i in range(3)])
  np.testing.assert_allclose(got[1], dw, rtol=1e-5, atol=1e-5 * np.abs(dw).max())


def test_matmul_grad_conv_bfloat16_keeps_dtypes_and_tracks_float32(matmul_grad_everywhere):
  rng = np.random.default_rng(7)
  x, k, b = (rng.normal(size=s).astype(np.float32) for s in [(2, 8, 8, 4), (3, 3, 4, 5), (5,)])

  def loss(f, dtype):
    return lambda x, k, b: jnp.sum(f(x.astype(dtype), k.astype(dtype), b.astype(dtype)).astype(jnp.float32) ** 2)

  fast = lambda x, k, b: layers.conv3x3_reflect(x, k, b, same_trick=True, matmul_grad=True)
  grad = lambda f, dtype: jax.jit(jax.grad(loss(f, dtype), argnums=(0, 1, 2)))(x, k, b)
  g16, g16_ref = grad(fast, jnp.bfloat16), grad(_plain_valid_conv, jnp.bfloat16)
  g32 = grad(_plain_valid_conv, jnp.float32)
  for a, r16, r32 in zip(g16, g16_ref, g32):
    assert a.dtype == r16.dtype == jnp.float32  # cast back to the float32 inputs by the astype's VJP
    scale = float(jnp.abs(r32).max())
    np.testing.assert_allclose(a, r32, atol=0.05 * scale)  # bf16 has ~3 significant digits


def test_conv_defaults_follow_the_backend():
  jaxpr = lambda ci, co, *flags: str(jax.make_jaxpr(lambda x, k: layers.conv3x3_reflect(x, k, jnp.zeros(co), *flags))(
      jnp.ones((1, 4, 4, ci)), jnp.ones((3, 3, ci, co))))
  n = layers.MATMUL_GRAD_MIN_CHANNELS
  on_cpu = jax.default_backend() == "cpu"
  assert ("custom_vjp" in jaxpr(n, n)) == (on_cpu and layers.MATMUL_GRAD_ON_CPU)
  assert "custom_vjp" not in jaxpr(3, n) and "custom_vjp" not in jaxpr(n, 3)  # RGB layers keep XLA's dW
  plain = jaxpr(n, n, False, False)
  assert "custom_vjp" not in plain and "padding=((0, 0), (0, 0))" in plain
  assert "custom_vjp" in jaxpr(n, n, True, True)


def test_target_platform_picks_the_conv_path_of_the_target_not_of_the_tracing_machine():
  n = layers.MATMUL_GRAD_MIN_CHANNELS
  jaxpr = lambda: str(jax.make_jaxpr(lambda x, k: layers.conv3x3_reflect(x, k, jnp.zeros(n)))(
      jnp.ones((1, 4, 4, n)), jnp.ones((3, 3, n, n))))
  with layers.target_platform("tpu"):
    assert layers.platform() == "tpu"
    on_tpu = jaxpr()
  with layers.target_platform("cpu"):
    on_cpu = jaxpr()
  assert layers.platform() == jax.default_backend()  # the block ends, the default is back
  assert "custom_vjp" not in on_tpu and "padding=((0, 0), (0, 0))" in on_tpu  # the plain VALID conv
  assert "padding=((1, 1), (1, 1))" in on_cpu and ("custom_vjp" in on_cpu) == layers.MATMUL_GRAD_ON_CPU
