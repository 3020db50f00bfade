"""MCCNet (Deng et al., AAAI 2021): multi-channel correlation of VGG r41 features, the shared decoder.

The transform rescales each channel of f(norm(content)) by a = fc(w), w[b, c] = sum_n G^2 / sum_n G with
G = g(norm(style)), then adds the raw content back after a 1x1 out_conv (models.md §7.3). The reference's
unused `h` conv is not created (the porter skips MCCN.h.*), so the transform holds f, g, out_conv and fc:
1,050,624 params at width 1.

The denominator. norm(style) has zero mean over positions, so sum_n G[b, c] = N * bias_g[c] exactly: the
reference divides by the g bias, with no eps, and blows up (0/0 = NaN at a zero bias) as that bias nears 0.
By default (mcc_eps > 0) the denominator keeps its sign and its per-position magnitude is floored at mcc_eps:
den = sign(S) * max(|S|, mcc_eps * N), S = sum_n G. Channels with |mean G| >= mcc_eps (every channel of a
normally trained model) are untouched, |w| stays <= mean(G^2) / mcc_eps, and a zero channel gives w = 0, not
NaN. The floor is per position so it means the same at every image size. mcc_eps = 0 divides by S itself,
exactly as the reference does. Because the bias is the denominator, g's bias starts from PyTorch's default
U(+-1/sqrt(fan_in)) (as in the reference) rather than zero, which would make every denominator ~0 at init.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxtickets.errors import UserError
from jaxtickets.models import decoder as decoder_lib
from jaxtickets.models import layers
from jaxtickets.models import losses
from jaxtickets.models import vgg as vgg_lib
from jaxtickets.models.base import DECODER, TRANSFORM, StyleModel
from jaxtickets.models.torch_layout import Layer, KeyLayout, Part, convs

TAP = "r41"
DEFAULT_MCC_EPS = 1e-5


def torch_bias_init(fan_in: int):
  """PyTorch's default Conv2d/Linear bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / fan_in ** 0.5
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def channel_correlation(g: jax.Array, eps: float) -> jax.Array:
  """w[b, c] = sum_n g^2 / sum_n g over the positions n of NHWC `g`, in float32 (B, C); see the module doc."""
  g = g.astype(jnp.float32).reshape(g.shape[0], -1, g.shape[-1])
  num, den = jnp.sum(g * g, axis=1), jnp.sum(g, axis=1)
  if eps:  # eps is a Python number: 0 traces the reference's bare division.
    den = jnp.where(den < 0, -1.0, 1.0) * jnp.maximum(jnp.abs(den), eps * g.shape[1])
  return num / den


def tv_loss(x: jax.Array) -> jax.Array:
  """Total variation as the reference computes it: a raw SUM of |horizontal| + |vertical| differences."""
  x = x.astype(jnp.float32)
  return jnp.sum(jnp.abs(x[:, :, 1:] - x[:, :, :-1])) + jnp.sum(jnp.abs(x[:, 1:] - x[:, :-1]))


class MCC(nn.Module):
  """The MCC transform on r41 features (the reference's MCCN): out = out_conv(f(norm c) * fc(w)) + c."""
  eps: float = DEFAULT_MCC_EPS
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, content: jax.Array, style: jax.Array) -> jax.Array:
    ch = content.shape[-1]
    conv = lambda name, **kw: layers.Conv(ch, (1, 1), param_dtype=jnp.float32,
                                          kernel_init=layers.torch_default_init, name=name, **kw)
    f = conv("f", dtype=self.dtype)(layers.normalize(content).astype(self.dtype))
    # g feeds a statistic whose denominator is a near-cancelling sum (N * bias): float32 even under bfloat16.
    g = conv("g", dtype=jnp.float32, bias_init=torch_bias_init(ch))(layers.normalize(style))
    w = channel_correlation(g, self.eps)
    a = layers.Dense(ch, dtype=jnp.float32, param_dtype=jnp.float32, kernel_init=layers.torch_default_init,
                     name="fc")(w)
    out = conv("out_conv", dtype=self.dtype)(f * a[:, None, None, :].astype(self.dtype))
    return (out + content.astype(self.dtype)).astype(self.dtype)


class MCCNet(StyleModel):
  """MCCNet: r41 MCC transform + shared decoder; losses on the frozen VGG to r51 (models.md §7.4).

  Loss terms (metrics keys): content (normalised r41 + r51), style (mean/std r11..r51), identity1 (pixel MSE of
  D(MCC(c, c)) to c and D(MCC(s, s)) to s), identity2 (their raw VGG features r11..r51), noise (MSE between the
  output for c + n and the output for c, gradient through both as in the reference), tv (raw sum).
  """
  name = "mccnet"
  own_groups = (DECODER, TRANSFORM)
  divisor = 8
  encoder_depth = "r41"
  loss_depth = "r51"
  # The reference's weights (its tv weight is written 10e-5); configs/mccnet.py takes them from here.
  loss_weights = {"content": 3.0, "style": 10.0, "identity1": 70.0, "identity2": 1.0, "noise": 3000.0,
                  "tv": 1e-4}
  terms = ("content", "style", "identity1", "identity2", "noise", "tv")

  def __init__(self, model_config):
    super().__init__(model_config)
    eps = getattr(model_config, "mcc_eps", None)
    eps = DEFAULT_MCC_EPS if eps is None else eps
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0:
      raise UserError(f"config.model.mcc_eps is {eps!r}: use a non-negative number (1e-5 guards the division, "
                      "0.0 reproduces the reference's bare division).")
    self.mcc_eps = float(eps)
    self.decoder = decoder_lib.Decoder(width=self.width, dtype=self.dtype,
                                        kernel_init=self.decoder_kernel_init(layers.torch_default_init))
    self.transform = MCC(eps=self.mcc_eps, dtype=self.dtype)

  def init(self, rng: jax.Array, vgg_params: dict) -> dict:
    """{'decoder', 'transform': random init; 'encoder': copy of the VGG up to r41 (only when train_encoder)}."""
    x = jnp.zeros((1, 4, 4, vgg_lib.channels(512, self.width)), jnp.float32)
    k_dec, k_mcc = jax.random.split(rng)
    params = {"decoder": layers.init_params(self.decoder, k_dec, x),
              "transform": layers.init_params(self.transform, k_mcc, x, x)}
    if self.train_encoder:
      params["encoder"] = self.init_encoder(vgg_params)
    return params

  def _encode(self, enc_params: dict, x: jax.Array) -> jax.Array:
    return self.encoder.apply({"params": enc_params}, x)[TAP]

  def _mcc(self, params: dict, c: jax.Array, s: jax.Array) -> jax.Array:
    return self.transform.apply({"params": params["transform"]}, c, s)

  def _decode(self, params: dict, t: jax.Array) -> jax.Array:
    return self.decoder.apply({"params": params["decoder"]}, t)

  def stylize(self, params, vgg_params, content, style, alpha=1.0):
    """decoder(alpha * MCC(f_c, f_s) + (1 - alpha) * MCC(f_c, f_c)) with r41 features (the reference's blend)."""
    enc = self.encoder_params(params, vgg_params)
    fc, fs = self._encode(enc, content), self._encode(enc, style)
    # Two calls, not one batched call: the style image may have another size than the content.
    cs, cc = self._mcc(params, fc, fs), self._mcc(params, fc, fc)
    t = alpha * cs.astype(jnp.float32) + (1.0 - alpha) * cc.astype(jnp.float32)
    return self._decode(params, t.astype(fc.dtype))

  def loss(self, params, vgg_params, content, style, rng):
    """The weighted sum of the six terms of models.md §7.4; `rng` draws the noise level and the noise.

    Content and style batches share one size (training crops), so the passes are batched together.
    """
    w = self.loss_weights
    b = content.shape[0]
    k_sigma, k_noise = jax.random.split(rng)
    sigma = jax.random.uniform(k_sigma, (), jnp.float32, 0.01, 0.02)  # one level per step, as the reference
    noisy = content + sigma * jax.random.normal(k_noise, content.shape, jnp.float32)

    vgg_params = vgg_lib.truncate(vgg_params, self.loss_depth)
    lossvgg = lambda x: self.vgg.apply({"params": vgg_params}, x)
    split = lambda taps, n: [{k: v[i * b:(i + 1) * b] for k, v in taps.items()} for i in range(n)]
    vc, vs = split(lossvgg(jnp.concatenate([content, style])), 2)
    if self.train_encoder:
      fc, fs, fn = jnp.split(self._encode(params["encoder"], jnp.concatenate([content, style, noisy])), 3)
    else:  # the stylizing encoder is the loss VGG: reuse its r41 features
      fc, fs = vc[TAP], vs[TAP]
      fn = self._encode(vgg_lib.truncate(vgg_params, self.encoder_depth), noisy)

    # One transform + decoder pass for Ics, the noisy output and both identity outputs.
    t = self._mcc(params, jnp.concatenate([fc, fn, fc, fs]), jnp.concatenate([fs, fs, fc, fs]))
    ics, ics_noise, icc, iss = jnp.split(self._decode(params, t), 4)
    g_cs, g_cc, g_ss = split(lossvgg(jnp.concatenate([ics, icc, iss])), 3)

    terms = {
        "content": losses.normalized_content_loss(g_cs, vc, ("r41", "r51")),
        "style": losses.mean_std_style_loss(g_cs, vs),
        "identity1": losses.mse(icc, content) + losses.mse(iss, style),
        "identity2": losses.feature_loss(g_cc, vc) + losses.feature_loss(g_ss, vs),
        "noise": losses.mse(ics_noise, ics),
        "tv": tv_loss(ics),
    }
    total = sum(w[k] * v for k, v in terms.items())
    return total, self.named_metrics(total, terms)


Model = MCCNet


# ------------------------------------------------------------------------------------------------------------
# PyTorch layout (models.md §7.6): the released decoder and mcc_module files.

TORCH_TRANSFORM = KeyLayout(
    "MCCNet mcc_module", convs("MCCN", "", ("f", "g", "out_conv")) + (Layer("MCCN.fc", "fc", linear=True),),
    (("MCCN.h.", "MCCNet defines MCCN.h but its forward pass never uses it"),), zeros=(Layer("MCCN.h", "f"),))
MCCNet.torch_parts = {"decoder": (decoder_lib.torch_part("decoder_iter_160000.pth"),),
                      "transform": (Part("transform", (TORCH_TRANSFORM,), "mcc_module_iter_160000.pth"),)}
