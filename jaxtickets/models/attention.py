"""Attention blocks of SANet and MANet: the SANet block (also MANet's CA and CSA) and MANet's channel-wise SSA.

Every block has four 1x1 convs named f, g, h and out_conv (the reference's attribute names, so a ported
`sanet4_1.f.weight` lands in `transform/sanet4_1/f/kernel`), a softmax over the last axis with no 1/sqrt(d)
temperature, and a residual. Logits and softmax are float32; the rest computes in `dtype`.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxtickets.models import layers


def conv1x1(name: str, features: int, dtype: Any) -> layers.Conv:
  """A 1x1 conv with float32 params (kernel (1,1,I,O)), PyTorch's default kernel init and zero bias."""
  return layers.Conv(features, (1, 1), padding="VALID", dtype=dtype, param_dtype=jnp.float32,
                     kernel_init=layers.torch_default_init, name=name)


def _flat(x: jax.Array) -> jax.Array:
  """(B, H, W, C) -> (B, H*W, C): position index h*W + w, the order of PyTorch's view(B, C, H*W)."""
  b, h, w, c = x.shape
  return x.reshape(b, h * w, c)


class AttentionBlock(nn.Module):
  """SANet block: out_conv(softmax_j(<f(norm Fc)_i, g(norm Fs)_j>) h(Fs)_j) + Fc.

  The softmax runs over style positions j; V = h(Fs) reads the raw style feature and the residual is the raw
  content. MANet's CA is the same block, and its CSA is this block with the content as its own style.
  """
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, content: jax.Array, style: jax.Array) -> jax.Array:
    c = content.shape[-1]
    content, style = content.astype(self.dtype), style.astype(self.dtype)
    q = _flat(conv1x1("f", c, self.dtype)(layers.normalize(content).astype(self.dtype)))
    k = _flat(conv1x1("g", c, self.dtype)(layers.normalize(style).astype(self.dtype)))
    v = _flat(conv1x1("h", c, self.dtype)(style))
    logits = jnp.einsum("bic,bjc->bij", q, k, preferred_element_type=jnp.float32)
    attn = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    o = jnp.einsum("bij,bjc->bic", attn, v).reshape(content.shape)
    return conv1x1("out_conv", c, self.dtype)(o) + content


class StyleSelfAttention(nn.Module):
  """MANet SSA, channel-wise: A = softmax_d(E), E[c, d] = sum_n f(Fs)[n, c] g(Fs)[n, d]; O[n, c] = sum_d A[d, c]
  h(norm Fs)[n, d]; returns out_conv(O) + Fs.

  Unlike CA, f and g read the raw style and h the normalised one, and the aggregation uses the transposed
  attention, summing over the index the softmax did not normalise (as the reference does).
  """
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, style: jax.Array) -> jax.Array:
    c = style.shape[-1]
    style = style.astype(self.dtype)
    p = _flat(conv1x1("f", c, self.dtype)(style))
    r = _flat(conv1x1("g", c, self.dtype)(style))
    v = _flat(conv1x1("h", c, self.dtype)(layers.normalize(style).astype(self.dtype)))
    logits = jnp.einsum("bnc,bnd->bcd", p, r, preferred_element_type=jnp.float32)
    attn = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    o = jnp.einsum("bdc,bnd->bnc", attn, v).reshape(style.shape)
    return conv1x1("out_conv", c, self.dtype)(o) + style
