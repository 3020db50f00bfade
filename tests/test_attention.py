"""Tests for the SANet/MANet attention blocks against numpy formulations written in PyTorch's (B, C, N) layout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtickets.models import attention

C = 8


def np_conv1x1(p, x):
  """x (B, C, N); the PyTorch weight (O, I) is the Flax kernel's (I, O) transposed."""
  w = np.asarray(p["kernel"], np.float64)[0, 0].T
  return np.einsum("oi,bin->bon", w, x) + np.asarray(p["bias"], np.float64)[None, :, None]


def np_norm(x):
  """(x - mean) / sqrt(unbiased var + 1e-5) over positions, x (B, C, N)."""
  return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, ddof=1, keepdims=True) + 1e-5)


def np_softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def to_bcn(x):
  x = np.asarray(x, np.float64)
  return x.reshape(x.shape[0], -1, x.shape[-1]).transpose(0, 2, 1)


def np_sanet_block(p, fc, fs, scale=1.0, v_from_norm=False):
  """The SANet block in (B, C, N): S = softmax_j(Q^T K), O = V S^T, out_conv(O) + Fc."""
  q = np_conv1x1(p["f"], np_norm(fc))
  k = np_conv1x1(p["g"], np_norm(fs))
  v = np_conv1x1(p["h"], np_norm(fs) if v_from_norm else fs)
  s = np_softmax(np.einsum("bci,bcj->bij", q, k) * scale)  # (B, Nc, Ns), softmax over style positions
  return np_conv1x1(p["out_conv"], np.einsum("bcj,bij->bci", v, s)) + fc


def np_ssa(p, fs, transpose=True):
  """MANet SSA in (B, C, N): E = f(Fs) g(Fs)^T (C x C), A = softmax over the last index, O = A^T h(norm Fs)."""
  e = np.einsum("bcn,bdn->bcd", np_conv1x1(p["f"], fs), np_conv1x1(p["g"], fs))
  a = np_softmax(e)
  v = np_conv1x1(p["h"], np_norm(fs))
  o = np.einsum("bdc,bdn->bcn", a, v) if transpose else np.einsum("bcd,bdn->bcn", a, v)
  return np_conv1x1(p["out_conv"], o) + fs


def nonzero_biases(params, seed):
  """Init gives zero biases; random ones make the test see where each bias enters."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda a: a + 0.1 * rng.normal(size=a.shape).astype(np.float32) if a.ndim == 1 else a, params)


def to_nhwc(x_bcn, h, w):
  return np.asarray(x_bcn).transpose(0, 2, 1).reshape(x_bcn.shape[0], h, w, -1)


@pytest.fixture(scope="module")
def feats():
  rng = np.random.default_rng(0)
  # Different content and style sizes: the attention map is (Nc, Ns), not square.
  fc = np.maximum(rng.normal(size=(2, 3, 4, C)), 0).astype(np.float32) * 2
  fs = np.maximum(rng.normal(size=(2, 2, 5, C)) + 0.5, 0).astype(np.float32) * 3
  return fc, fs


def test_sanet_block_matches_numpy(feats):
  fc, fs = feats
  block = attention.AttentionBlock()
  p = nonzero_biases(block.init(jax.random.key(0), fc, fs)["params"], 1)
  assert set(p) == {"f", "g", "h", "out_conv"} and p["f"]["kernel"].shape == (1, 1, C, C)
  out = jax.jit(block.apply)({"params": p}, fc, fs)
  assert out.shape == fc.shape and out.dtype == jnp.float32
  expected = np_sanet_block(p, to_bcn(fc), to_bcn(fs))
  np.testing.assert_allclose(out, to_nhwc(expected, 3, 4), rtol=1e-5, atol=1e-5)
  # The check can fail: a 1/sqrt(d) temperature would give a measurably different output.
  scaled = to_nhwc(np_sanet_block(p, to_bcn(fc), to_bcn(fs), scale=1 / np.sqrt(C)), 3, 4)
  assert np.abs(scaled - np.asarray(out)).max() > 1e-3
  # ... and so would values read from the normalised style instead of the raw one.
  normed = to_nhwc(np_sanet_block(p, to_bcn(fc), to_bcn(fs), v_from_norm=True), 3, 4)
  assert np.abs(normed - np.asarray(out)).max() > 1e-2


def test_style_self_attention_matches_numpy_with_transposed_aggregation(feats):
  _, fs = feats
  block = attention.StyleSelfAttention()
  p = nonzero_biases(block.init(jax.random.key(1), fs)["params"], 2)
  # Small weights keep the raw-feature logits in a range where the softmax is not one-hot, so the test can tell
  # the transposed aggregation from the plain one.
  p = jax.tree.map(lambda a: a * 0.3 if a.ndim == 4 else a, p)
  out = jax.jit(block.apply)({"params": p}, fs)
  assert out.shape == fs.shape and out.dtype == jnp.float32
  np.testing.assert_allclose(out, to_nhwc(np_ssa(p, to_bcn(fs)), 2, 5), rtol=1e-5, atol=1e-5)
  plain = to_nhwc(np_ssa(p, to_bcn(fs), transpose=False), 2, 5)
  assert np.abs(plain - np.asarray(out)).max() > 1e-3


def test_style_self_attention_softmax_is_stable_on_large_logits(feats):
  _, fs = feats
  block = attention.StyleSelfAttention()
  p = block.init(jax.random.key(1), fs)["params"]
  out = jax.jit(block.apply)({"params": p}, fs * 1e3)  # logits ~1e6: a naive exp would overflow
  assert np.all(np.isfinite(out))


def test_bfloat16_blocks_keep_float32_params_and_stay_close(feats):
  fc, fs = feats
  block, block16 = attention.AttentionBlock(), attention.AttentionBlock(dtype=jnp.bfloat16)
  p = block.init(jax.random.key(0), fc, fs)["params"]
  assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(block16.init(jax.random.key(0), fc, fs)))
  out16 = block16.apply({"params": p}, fc, fs)
  assert out16.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(out16, np.float32), block.apply({"params": p}, fc, fs), rtol=0.05, atol=0.1)
