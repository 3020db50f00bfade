"""AdaIN (Huang & Belongie 2017): VGG r41 features, channel mean/std transfer, the shared mirrored decoder."""

import jax
import jax.numpy as jnp

from jaxtickets.models import decoder as decoder_lib
from jaxtickets.models import layers
from jaxtickets.models import losses
from jaxtickets.models import vgg as vgg_lib
from jaxtickets.errors import UserError
from jaxtickets.models.base import StyleModel

STYLE_TAPS = ("r11", "r21", "r31", "r41")
CONTENT_TAP = "r41"


class AdaIN(StyleModel):
  """AdaIN with an optionally trainable encoder; the loss always uses the frozen loss VGG."""
  name = "adain"
  divisor = 8
  encoder_depth = "r41"
  loss_depth = "r41"
  # 'identity' is no term of the reference's: SANet's pixel identity loss (the content stylized with itself as the
  # style, against the content), 0 = off. At CPU scale it gives the decoder a direct pixel signal that the feature
  # losses alone do not (docs/study_cpu/pilots).
  loss_weights = {"content": 1.0, "style": 10.0, "identity": 0.0}
  terms = ("content", "style")

  def __init__(self, model_config):
    super().__init__(model_config)
    self.decoder = decoder_lib.Decoder(width=self.width, dtype=self.dtype,
                                        kernel_init=self.decoder_kernel_init(layers.torch_default_init))
    # The reference's content loss is r41 alone. With a random loss VGG an r41 map of 8x8 at 64 px asks the decoder
    # for nothing finer than 8x8 blobs, and a random VGG's r41 barely sees colour. Shallower taps, each against its own
    # AdaIN target (the content's features at that tap with the style's channel statistics), ask for the content's
    # structure in the style's colours, which makes the task learnable at CPU scale.
    taps = getattr(model_config, "content_taps", None) or CONTENT_TAP
    self.content_taps = tuple(t.strip() for t in str(taps).split(",") if t.strip())
    bad = [t for t in self.content_taps if t not in STYLE_TAPS]
    if self.loss_weights["identity"]:
      self.terms = self.terms + ("identity",)  # computed (an extra decoder pass) and reported only when weighted
    if bad or not self.content_taps:
      raise UserError(f"config.model.content_taps = {taps!r} names no VGG tap or an unknown one: use a comma-separated "
                      f"subset of {', '.join(STYLE_TAPS)} (the reference's is '{CONTENT_TAP}').")

  def init(self, rng: jax.Array, vgg_params: dict) -> dict:
    """{'decoder': random init, 'encoder': copy of the VGG up to r41 (only when train_encoder)}."""
    c = vgg_lib.channels(512, self.width)
    params = {"decoder": layers.init_params(self.decoder, rng, jnp.zeros((1, 4, 4, c), jnp.float32))}
    if self.train_encoder:
      params["encoder"] = self.init_encoder(vgg_params)
    return params

  def _encode(self, enc_params: dict, x: jax.Array) -> jax.Array:
    return self.encoder.apply({"params": enc_params}, x)[CONTENT_TAP]

  def _decode(self, params: dict, t: jax.Array) -> jax.Array:
    return self.decoder.apply({"params": params["decoder"]}, t)

  def stylize(self, params, vgg_params, content, style, alpha=1.0):
    """decoder(alpha * AdaIN(f_c, f_s) + (1 - alpha) * f_c) with r41 features."""
    enc = self.encoder_params(params, vgg_params)
    fc, fs = self._encode(enc, content), self._encode(enc, style)
    t = alpha * layers.adain(fc, fs) + (1.0 - alpha) * fc
    return self._decode(params, t.astype(fc.dtype))

  def loss(self, params, vgg_params, content, style, rng):
    """Content MSE at r41 against the frozen-VGG AdaIN target + weighted mean/std style loss at r11..r41 (+ the
    pixel identity term when model.identity_weight > 0).

    With model.content_taps beyond r41, the content term adds, per shallower tap, the MSE between the output's
    loss-VGG features and that tap's AdaIN target (content features, style channel statistics).
    """
    del rng  # AdaIN's loss is deterministic.
    vgg_params = vgg_lib.truncate(vgg_params, self.loss_depth)
    lossvgg = lambda x: self.vgg.apply({"params": vgg_params}, x)
    vc, vs = lossvgg(content), lossvgg(style)
    # The target comes from the frozen loss VGG, so training the encoder never moves what the loss measures;
    # it stays float32 (adain returns its first argument's dtype) even when the VGG computes in bfloat16.
    target = jax.lax.stop_gradient(layers.adain(vc[CONTENT_TAP].astype(jnp.float32), vs[CONTENT_TAP]))
    if self.train_encoder:
      enc = params["encoder"]
      t = layers.adain(self._encode(enc, content), self._encode(enc, style))
    else:
      t = target  # The stylizing encoder is the loss VGG: reuse its features instead of a second pass.
    g_taps = lossvgg(self._decode(params, t))
    content_loss = jnp.float32(0.0)
    for tap in self.content_taps:
      tap_target = target if tap == CONTENT_TAP else jax.lax.stop_gradient(
          layers.adain(vc[tap].astype(jnp.float32), vs[tap]))
      content_loss += losses.mse(g_taps[tap], tap_target)
    terms = {"content": content_loss,
             "style": losses.mean_std_style_loss(g_taps, jax.lax.stop_gradient(vs), STYLE_TAPS)}
    if "identity" in self.terms:
      fc = self._encode(params["encoder"], content) if self.train_encoder else vc[CONTENT_TAP]
      identity = self._decode(params, layers.adain(fc, fc))
      terms["identity"] = losses.mse(identity, content.astype(jnp.float32))
    total = sum(self.loss_weights[k] * v for k, v in terms.items())
    return total, self.named_metrics(total, terms)


Model = AdaIN


# ------------------------------------------------------------------------------------------------------------
# PyTorch layout (models.md §2.6): naoto0804's decoder; the AdaIN transform has no weights.

AdaIN.torch_parts = {"decoder": (decoder_lib.torch_part("decoder.pth"),), "transform": ()}
