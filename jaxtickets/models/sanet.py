"""SANet (Park & Lee 2019): style-attentional blocks on r41 and r51, merged by a 3x3 conv, the shared decoder."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxtickets.errors import UserError
from jaxtickets.models import attention
from jaxtickets.models import decoder as decoder_lib
from jaxtickets.models import layers
from jaxtickets.models import losses
from jaxtickets.models import vgg as vgg_lib
from jaxtickets.models.base import DECODER, TRANSFORM, StyleModel
from jaxtickets.models.torch_layout import Layer, KeyLayout, Part, convs

CONTENT_TAPS = ("r41", "r51")
STYLE_TAPS = losses.ALL_TAPS


class Transform(nn.Module):
  """merge_conv(reflect_pad(sanet4_1(c41, s41) + up2_nearest(sanet5_1(c51, s51)))), at r41 resolution."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, c41: jax.Array, s41: jax.Array, c51: jax.Array, s51: jax.Array) -> jax.Array:
    a41 = attention.AttentionBlock(dtype=self.dtype, name="sanet4_1")(c41, s41)
    a51 = layers.upsample_nearest2x(attention.AttentionBlock(dtype=self.dtype, name="sanet5_1")(c51, s51))
    if a51.shape != a41.shape:
      raise UserError(f"SANet got r41 features of {a41.shape[1]}x{a41.shape[2]} and r51 features of "
                      f"{c51.shape[1]}x{c51.shape[2]}, which do not line up: use image sides that are multiples "
                      "of 16 (stylize_any_size pads them for you).")
    return layers.ReflectConv(c41.shape[-1], dtype=self.dtype, name="merge_conv")(a41 + a51)


def split_taps(taps: dict, n: int) -> list[dict]:
  """Splits every tap of a batch stacked from n equal parts into n dicts of taps."""
  parts = [{} for _ in range(n)]
  for t, x in taps.items():
    for i, chunk in enumerate(jnp.split(x, n, axis=0)):
      parts[i][t] = chunk
  return parts


def identity_losses(icc, iss, content, style, g_cc, g_ss, vc, vs, taps=losses.ALL_TAPS):
  """(L_id1, L_id2): pixel MSE of Icc/Iss to Ic/Is, and the raw-feature MSE of their taps (SANet, MANet)."""
  id1 = losses.mse(icc, content) + losses.mse(iss, style)
  id2 = losses.feature_loss(g_cc, vc, taps) + losses.feature_loss(g_ss, vs, taps)
  return id1, id2


def is_one(alpha) -> bool:
  """Whether alpha is statically 1 (then the test-time blend, which needs a second transform pass, is skipped)."""
  return isinstance(alpha, (int, float)) and not isinstance(alpha, bool) and alpha == 1.0


class SANet(StyleModel):
  """SANet with an optionally trainable encoder (to r51); losses use the frozen loss VGG (to r51).

  Metrics: total, content (normalised r41 + r51), style (mean/std r11..r51), identity1 (pixels), identity2
  (raw features r11..r51); total = sum of each times its weight.
  """
  name = "sanet"
  own_groups = (DECODER, TRANSFORM)
  divisor = 16  # r41 + up2(r51) only line up when the sides are multiples of 16
  encoder_depth = "r51"
  loss_depth = "r51"
  loss_weights = {"content": 1.0, "style": 3.0, "identity1": 50.0, "identity2": 1.0}
  terms = ("content", "style", "identity1", "identity2")

  def __init__(self, model_config):
    super().__init__(model_config)
    self.decoder = decoder_lib.Decoder(width=self.width, dtype=self.dtype,
                                        kernel_init=self.decoder_kernel_init(layers.torch_default_init))
    self.transform = Transform(dtype=self.dtype)

  def init(self, rng: jax.Array, vgg_params: dict) -> dict:
    """{'decoder', 'transform': random init, 'encoder': copy of the VGG up to r51 (only when train_encoder)}."""
    c = vgg_lib.channels(512, self.width)
    kd, kt = jax.random.split(rng)
    f41, f51 = jnp.zeros((1, 4, 4, c), jnp.float32), jnp.zeros((1, 2, 2, c), jnp.float32)
    params = {"decoder": layers.init_params(self.decoder, kd, f41),
              "transform": layers.init_params(self.transform, kt, f41, f41, f51, f51)}
    if self.train_encoder:
      params["encoder"] = self.init_encoder(vgg_params)
    return params

  def _encode(self, enc_params: dict, x: jax.Array) -> dict:
    return self.encoder.apply({"params": enc_params}, x)

  def _transform(self, params: dict, fc: dict, fs: dict) -> jax.Array:
    return self.transform.apply({"params": params["transform"]}, fc["r41"], fs["r41"], fc["r51"], fs["r51"])

  def _decode(self, params: dict, t: jax.Array) -> jax.Array:
    return self.decoder.apply({"params": params["decoder"]}, t)

  def stylize(self, params, vgg_params, content, style, alpha=1.0):
    """decoder(alpha * T(c, s) + (1 - alpha) * T(c, c)); T(c, c) is what the identity loss trains to
    reconstruct the content (the reference has no alpha; alpha = 1 is its output)."""
    enc = self.encoder_params(params, vgg_params)
    fc, fs = self._encode(enc, content), self._encode(enc, style)
    t = self._transform(params, fc, fs)
    if not is_one(alpha):
      t = alpha * t + (1.0 - alpha) * self._transform(params, fc, fc)
    return self._decode(params, t.astype(self.dtype))

  def loss(self, params, vgg_params, content, style, rng):
    """L = w_c L_c + w_s L_s + w_id1 L_id1 + w_id2 L_id2 (content and style batches of the same shape)."""
    del rng  # SANet's loss is deterministic.
    vgg_params = vgg_lib.truncate(vgg_params, self.loss_depth)
    lossvgg = lambda x: self.vgg.apply({"params": vgg_params}, x)
    # Content and style share one pass through each network (same shapes): a smaller graph compiles faster.
    both = jnp.concatenate([content, style], axis=0)
    vc, vs = split_taps(lossvgg(both), 2)
    if self.train_encoder:
      ec, es = split_taps(self._encode(params["encoder"], both), 2)
    else:
      ec, es = vc, vs  # The stylizing encoder is the loss VGG: reuse its features instead of a second pass.
    # One batched pass for Ics = D(T(c, s)), Icc = D(T(c, c)) and Iss = D(T(s, s)).
    cat = lambda *xs: jnp.concatenate(xs, axis=0)
    queries = {t: cat(ec[t], ec[t], es[t]) for t in CONTENT_TAPS}
    keys = {t: cat(es[t], ec[t], es[t]) for t in CONTENT_TAPS}
    images = self._decode(params, self._transform(params, queries, keys))
    g_cs, g_cc, g_ss = split_taps(lossvgg(images), 3)
    _, icc, iss = jnp.split(images, 3, axis=0)
    terms = {"content": losses.normalized_content_loss(g_cs, vc, CONTENT_TAPS),
             "style": losses.mean_std_style_loss(g_cs, vs, STYLE_TAPS)}
    terms["identity1"], terms["identity2"] = identity_losses(icc, iss, content, style, g_cc, g_ss, vc, vs)
    total = sum(self.loss_weights[k] * v for k, v in terms.items())
    return total, self.named_metrics(total, terms)


Model = SANet


# ------------------------------------------------------------------------------------------------------------
# PyTorch layout (models.md §3.6): the released decoder and transformer files.

TORCH_TRANSFORM = KeyLayout("SANet transformer", convs("sanet4_1", "sanet4_1") + convs("sanet5_1", "sanet5_1")
                         + (Layer("merge_conv", "merge_conv"),))
SANet.torch_parts = {"decoder": (decoder_lib.torch_part("decoder_iter_500000.pth"),),
                     "transform": (Part("transform", (TORCH_TRANSFORM,), "transformer_iter_500000.pth"),)}
