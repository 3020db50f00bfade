"""LST, Linear Style Transfer (Li, Liu, Kautz & Yang, CVPR 2019), the r41 model: a learned 32x32 linear map.

Encoders are the WCT-style VGGs with floor-mode pooling: encoder4 (to r41) stylizes, encoder5 (to r51) is the
loss network; both read the frozen `vgg_params` (up to r51), encoder4 as its truncation. The decoder is the
shared Decoder (decoder4, pre-trained and frozen in the reference); only the transform (MulLayer) is trained by
default. Flax names follow the reference state-dict keys of r41.pth: transform/{cnet,snet}/{convs_0,convs_2,
convs_4,fc}, transform/compress, transform/unzip.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxtickets.models import decoder as decoder_lib
from jaxtickets.models import layers
from jaxtickets.models import vgg as vgg_lib
from jaxtickets.models.base import DECODER, TRANSFORM, StyleModel, _field
from jaxtickets.models.torch_layout import Layer, KeyLayout, Part

STYLE_TAPS = vgg_lib.TAPS[:4]  # r11..r41
CONTENT_TAP = "r41"
MATRIX_SIZE = 32  # fixed at every width: the transform's algorithm is a 32x32 map of compressed features


def torch_bias_init(fan_in: int):
  """PyTorch's default bias init for Conv2d/Linear: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / fan_in ** 0.5
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


# The transform keeps PyTorch's default bias init, as the reference does: with zero biases both 32x32 matrices
# start near 0 (the covariance of three shrinking convs), so T = T_s T_c is ~1e-9 and no gradient reaches it.
def _conv(features: int, size: int, in_features: int, dtype: Any, name: str) -> layers.Conv:
  """A conv with PyTorch's default init and float32 params; 3x3 ones ZERO-pad by 1 (== SAME)."""
  return layers.Conv(features, (size, size), padding="SAME" if size == 3 else "VALID", dtype=dtype,
                     param_dtype=jnp.float32, kernel_init=layers.torch_default_init,
                     bias_init=torch_bias_init(size * size * in_features), name=name)


def channel_mean(x: jax.Array) -> jax.Array:
  """Per-sample, per-channel spatial mean in float32, shape (B,1,1,C)."""
  return jnp.mean(x.astype(jnp.float32), axis=(1, 2), keepdims=True)


class CNN(nn.Module):
  """cnet/snet: three zero-padded 3x3 convs to 32 channels, M = y y^T / (h w), fc on vec(M) -> (B, 32, 32)."""
  width: float = 1.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c1, c2 = vgg_lib.channels(256, self.width), vgg_lib.channels(128, self.width)
    y = layers.relu(_conv(c1, 3, x.shape[-1], self.dtype, "convs_0")(x.astype(self.dtype)))
    y = layers.relu(_conv(c2, 3, c1, self.dtype, "convs_2")(y))
    y = _conv(MATRIX_SIZE, 3, c2, self.dtype, "convs_4")(y)
    b, h, w, k = y.shape
    y = y.reshape(b, h * w, k).astype(jnp.float32)
    # The covariance is divided by h*w only (no centring of y, no channel factor), as in the reference.
    m = jnp.einsum("bpi,bpj->bij", y, y) / (h * w)
    # Row-major flatten/reshape == PyTorch's view; M is symmetric, so only the output order matters.
    out = layers.Dense(k * k, param_dtype=jnp.float32, kernel_init=layers.torch_default_init,
                       bias_init=torch_bias_init(k * k), name="fc")(m.reshape(b, k * k))
    return out.reshape(b, k, k)


class MulLayer(nn.Module):
  """MulLayer('r41', matrixSize=32): out = unzip(T_s T_c compress(c - mu_c)) + mu_s; returns (out, T)."""
  width: float = 1.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, cf: jax.Array, sf: jax.Array) -> tuple[jax.Array, jax.Array]:
    # Centring only: LST never divides by the std.
    s_mean = channel_mean(sf)
    c_hat = (cf.astype(jnp.float32) - channel_mean(cf)).astype(self.dtype)
    s_hat = (sf.astype(jnp.float32) - s_mean).astype(self.dtype)
    c = cf.shape[-1]
    z = _conv(MATRIX_SIZE, 1, c, self.dtype, "compress")(c_hat)
    t_c = CNN(self.width, self.dtype, name="cnet")(c_hat)
    t_s = CNN(self.width, self.dtype, name="snet")(s_hat)
    t = jnp.einsum("bij,bjk->bik", t_s, t_c)
    # The 32x32 map acts on each position's compressed channels (torch: bmm(T, z) with z as (B, 32, HW)).
    tz = jnp.einsum("bij,bhwj->bhwi", t, z.astype(jnp.float32)).astype(self.dtype)
    out = _conv(c, 1, MATRIX_SIZE, self.dtype, "unzip")(tz).astype(jnp.float32) + s_mean
    return out.astype(self.dtype), t


def gram(x: jax.Array) -> jax.Array:
  """Uncentred Gram matrix F F^T / (C H W) per sample, in float32, shape (B, C, C)."""
  b, h, w, c = x.shape
  f = x.astype(jnp.float32).reshape(b, h * w, c)
  return jnp.einsum("bpi,bpj->bij", f, f) / (c * h * w)


def style_loss(g_taps: dict, s_taps: dict, taps=STYLE_TAPS) -> jax.Array:
  """Sum over taps of [sum (mu_g - mu_s)^2 + sum (G_g - G_s)^2] / B (LST's size_average=False MSE)."""
  total = jnp.float32(0.0)
  for t in taps:
    g, s = g_taps[t], s_taps[t]
    mean_term = jnp.sum((channel_mean(g) - channel_mean(s)) ** 2)
    gram_term = jnp.sum((gram(g) - gram(s)) ** 2)
    total += (mean_term + gram_term) / g.shape[0]
  return total


class LST(StyleModel):
  """LST r41: trains the transform only (plus the decoder / encoder when train_decoder / train_encoder).

  The reference's encoder5 also computes r51, which no loss term reads; the loss VGG stops at r41 here (same
  values, a third less compute), while `vgg_params` still holds encoder5's weights up to r51.
  """
  name = "lst"
  own_groups = (DECODER, TRANSFORM)
  divisor = 8
  encoder_depth = "r41"
  loss_depth = "r51"
  loss_weights = {"content": 1.0, "style": 0.02}
  terms = ("content", "style")

  def __init__(self, model_config):
    super().__init__(model_config)
    self.train_decoder = bool(_field(model_config, "train_decoder", False))
    # LST's encoders pool in floor mode; the loss network's r51 is never read (see the class docstring).
    self.vgg = vgg_lib.VGGEncoder(depth=self.loss_depth, width=self.width, dtype=self.dtype, ceil_pool=False)
    self.encoder = vgg_lib.VGGEncoder(depth=self.encoder_depth, width=self.width, dtype=self.dtype,
                                      ceil_pool=False)
    self.decoder = decoder_lib.Decoder(width=self.width, dtype=self.dtype,
                                        kernel_init=self.decoder_kernel_init(layers.torch_default_init))
    self.transform = MulLayer(width=self.width, dtype=self.dtype)

  @property
  def trained_groups(self) -> tuple[str, ...]:
    """'transform', plus 'decoder' when train_decoder and 'encoder' when train_encoder."""
    return tuple(g for g in self.groups if g != "decoder" or self.train_decoder)

  def init(self, rng: jax.Array, vgg_params: dict) -> dict:
    """{'decoder', 'transform': random init, 'encoder': copy of the VGG up to r41 (only when train_encoder)}."""
    k_dec, k_tr = jax.random.split(rng)
    x = jnp.zeros((1, 4, 4, vgg_lib.channels(512, self.width)), jnp.float32)
    params = {"decoder": layers.init_params(self.decoder, k_dec, x),
              "transform": layers.init_params(self.transform, k_tr, x, x)}
    if self.train_encoder:
      params["encoder"] = self.init_encoder(vgg_params)
    return params

  def _encode(self, enc_params: dict, x: jax.Array) -> jax.Array:
    return self.encoder.apply({"params": enc_params}, x)[CONTENT_TAP]

  def _transform(self, params: dict, fc: jax.Array, fs: jax.Array) -> jax.Array:
    return self.transform.apply({"params": params["transform"]}, fc, fs)[0]

  def _decode(self, params: dict, t: jax.Array) -> jax.Array:
    return self.decoder.apply({"params": params["decoder"]}, t)

  def stylize(self, params, vgg_params, content, style, alpha=1.0):
    """decoder(alpha * MulLayer(f_c, f_s) + (1 - alpha) * f_c) with r41 features.

    The reference has no alpha; this blend of the transformed and the content feature is ours (alpha=1 is LST).
    """
    enc = self.encoder_params(params, vgg_params)
    fc, fs = self._encode(enc, content), self._encode(enc, style)
    t = alpha * self._transform(params, fc, fs).astype(jnp.float32) + (1.0 - alpha) * fc.astype(jnp.float32)
    return self._decode(params, t.astype(fc.dtype))

  def loss(self, params, vgg_params, content, style, rng):
    """Raw-feature content MSE at r41 + weighted mean/Gram style loss (sum / B) at r11..r41."""
    del rng  # LST's loss is deterministic.
    loss_params = vgg_lib.truncate(vgg_params, CONTENT_TAP)
    lossvgg = lambda x: self.encoder.apply({"params": loss_params}, x)
    vc, vs = lossvgg(content), lossvgg(style)
    if self.train_encoder:
      enc = params["encoder"]
      fc, fs = self._encode(enc, content), self._encode(enc, style)
    else:
      fc, fs = vc[CONTENT_TAP], vs[CONTENT_TAP]  # the stylizing encoder is the loss VGG: reuse its features
    g_taps = lossvgg(self._decode(params, self._transform(params, fc, fs)))
    # The targets come from the frozen loss VGG, so training the encoder never moves what the loss measures.
    target = jax.lax.stop_gradient(vc[CONTENT_TAP].astype(jnp.float32))
    content_loss = jnp.mean((g_taps[CONTENT_TAP].astype(jnp.float32) - target) ** 2)
    s_loss = style_loss(g_taps, jax.lax.stop_gradient(vs))
    total = self.loss_weights["content"] * content_loss + self.loss_weights["style"] * s_loss
    return total, self.named_metrics(total, {"content": content_loss, "style": s_loss})


Model = LST


# ------------------------------------------------------------------------------------------------------------
# PyTorch layout (models.md §4.6): dec_r41.pth and r41.pth (MulLayer); LST's VGG files are in vgg.py.


def _torch_cnn(name: str) -> tuple[Layer, ...]:
  convs = tuple(Layer(f"{name}.convs.{i}", f"{name}/convs_{i}") for i in (0, 2, 4))
  return convs + (Layer(f"{name}.fc", f"{name}/fc", linear=True),)


TORCH_TRANSFORM = KeyLayout("LST r41 (MulLayer)", _torch_cnn("snet") + _torch_cnn("cnet")
                         + (Layer("compress", "compress"), Layer("unzip", "unzip")))
LST.torch_parts = {"decoder": (decoder_lib.torch_part("dec_r41.pth", lst_first=True),),
                   "transform": (Part("transform", (TORCH_TRANSFORM,), "r41.pth"),)}
# TestArtistic.py's encoder4 holds conv1..conv10 (up to relu4_1) and loads vgg_r41.pth strictly.
LST.torch_encoder = Part("encoder", (KeyLayout("LST vgg_r41", vgg_lib.LST_VGG.layers[:10]),), "vgg_r41.pth")
