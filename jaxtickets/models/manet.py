"""MANet (Deng et al. 2020): content self-attention, channel-wise style self-attention and cross attention on r41."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxtickets.errors import UserError
from jaxtickets.models import attention
from jaxtickets.models import decoder as decoder_lib
from jaxtickets.models import layers
from jaxtickets.models import losses
from jaxtickets.models import sanet
from jaxtickets.models import vgg as vgg_lib
from jaxtickets.models.base import DECODER, TRANSFORM, StyleModel, _field
from jaxtickets.models.torch_layout import KeyLayout, Part, convs

CONTENT_TAPS = ("r41", "r51")
STYLE_TAPS = losses.ALL_TAPS


class MultiAdaptation(nn.Module):
  """MA(c, s) = CA(CSA(c), SSA(s)) on r41 features (the reference's Multi_Adaptation_Module)."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, content: jax.Array, style: jax.Array) -> jax.Array:
    c = attention.AttentionBlock(dtype=self.dtype, name="CSA")(content, content)
    s = attention.StyleSelfAttention(dtype=self.dtype, name="SSA")(style)
    return attention.AttentionBlock(dtype=self.dtype, name="CA")(c, s)


def partner_indices(rng: jax.Array, b: int, original_pairing: bool) -> tuple[jax.Array, jax.Array]:
  """Batch indices (of length b) of the c1 and s1 images behind Ic1s = D(MA(c1, s)) and Ics1 = D(MA(c, s1)).

  Intended: one random content (and one random style) repeated b times; original: random permutations.
  """
  kc, ks = jax.random.split(rng)
  if original_pairing:
    return jax.random.permutation(kc, b), jax.random.permutation(ks, b)
  return (jnp.full((b,), jax.random.randint(kc, (), 0, b)), jnp.full((b,), jax.random.randint(ks, (), 0, b)))


def shuffled_pairs(rng: jax.Array, taps: dict) -> tuple[dict, dict]:
  """Two independent random batch permutations of every tap (fresh ones per tap, as the reference's shuffle)."""
  a, b = {}, {}
  for key, (t, x) in zip(jax.random.split(rng, len(taps)), taps.items()):
    k1, k2 = jax.random.split(key)
    a[t] = x[jax.random.permutation(k1, x.shape[0])]
    b[t] = x[jax.random.permutation(k2, x.shape[0])]
  return a, b


def disentangle_losses(rng_c: jax.Array, rng_s: jax.Array, g_c1s: dict, g_cs1: dict) -> tuple[jax.Array, jax.Array]:
  """(L_dc, L_ds): the content loss between two random batch permutations of Ic1s's taps, and the style loss
  between two of Ics1's. Per-sample statistics commute with a batch permutation, so they are taken once and the
  small results permuted (the same values as permuting the feature maps, as the reference does)."""
  a, b = shuffled_pairs(rng_c, {t: layers.normalize(g_c1s[t]) for t in CONTENT_TAPS})
  dc = sum(losses.mse(a[t], b[t]) for t in CONTENT_TAPS)
  a, b = shuffled_pairs(rng_s, {t: jnp.concatenate(layers.mean_std(g_cs1[t]), axis=-1) for t in STYLE_TAPS})
  ds = jnp.float32(0.0)
  for t in STYLE_TAPS:
    c = a[t].shape[-1] // 2
    ds += losses.mse(a[t][..., :c], b[t][..., :c]) + losses.mse(a[t][..., c:], b[t][..., c:])
  return dc, ds


class MANet(StyleModel):
  """MANet with an optionally trainable encoder (to r41, all the transform reads); the loss VGG goes to r51.

  Metrics: total, content (normalised r41 + r51), style (mean/std r11..r51), identity1, identity2 (as SANet),
  disentangle (L_dc + L_ds, unweighted) and disentangle_on (1 when the disentanglement term was switched on:
  w_c L_c + w_s L_s < config.model.disentangle_threshold, default 10 as in the reference).
  total = w_c L_c + w_s L_s + disentangle_on * w_d (L_dc + L_ds) + w_id1 L_id1 + w_id2 L_id2.

  Pairing (config.model.manet_original_pairing):
    False (default, the paper's intent): Ic1s = D(MA(c1, s)) with ONE content c1 (drawn from the batch with the
      rng) for every style of the batch, and Ics1 = D(MA(c, s1)) with one style s1 for every content; L_dc is
      the content loss between two random permutations of Ic1s (same content, different styles) and L_ds the
      style loss between two permutations of Ics1 (same style, different contents).
    True (the reference code): c1 and s1 are whole independent batches (here random permutations of the batch's
      own contents and styles), so the permuted outputs being compared share nothing by construction.
  """
  name = "manet"
  own_groups = (DECODER, TRANSFORM)
  divisor = 8
  encoder_depth = "r41"
  loss_depth = "r51"
  loss_weights = {"content": 1.0, "style": 5.0, "identity1": 50.0, "identity2": 1.0, "disentangle": 1.0}
  terms = ("content", "style", "identity1", "identity2", "disentangle")
  extra_metrics = ("disentangle_on",)  # a switch, not a loss: never compared with the dense network

  def __init__(self, model_config):
    super().__init__(model_config)
    self.original_pairing = bool(_field(model_config, "manet_original_pairing", False))
    threshold = _field(model_config, "disentangle_threshold", 10.0)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
      raise UserError(f"config.model.disentangle_threshold is {threshold!r}: use a number such as 10.0.")
    self.disentangle_threshold = float(threshold)
    self.decoder = decoder_lib.Decoder(width=self.width, dtype=self.dtype,
                                        kernel_init=self.decoder_kernel_init(layers.torch_default_init))
    self.transform = MultiAdaptation(dtype=self.dtype)

  def init(self, rng: jax.Array, vgg_params: dict) -> dict:
    """{'decoder', 'transform': random init, 'encoder': copy of the VGG up to r41 (only when train_encoder)}."""
    c = vgg_lib.channels(512, self.width)
    kd, kt = jax.random.split(rng)
    f41 = jnp.zeros((1, 4, 4, c), jnp.float32)
    params = {"decoder": layers.init_params(self.decoder, kd, f41),
              "transform": layers.init_params(self.transform, kt, f41, f41)}
    if self.train_encoder:
      params["encoder"] = self.init_encoder(vgg_params)
    return params

  def _encode(self, enc_params: dict, x: jax.Array) -> jax.Array:
    return self.encoder.apply({"params": enc_params}, x)["r41"]

  def _transform(self, params: dict, fc: jax.Array, fs: jax.Array) -> jax.Array:
    return self.transform.apply({"params": params["transform"]}, fc, fs)

  def _decode(self, params: dict, t: jax.Array) -> jax.Array:
    return self.decoder.apply({"params": params["decoder"]}, t)

  def stylize(self, params, vgg_params, content, style, alpha=1.0):
    """decoder(alpha * MA(c, s) + (1 - alpha) * MA(c, c)), the reference's test-time blend."""
    enc = self.encoder_params(params, vgg_params)
    fc, fs = self._encode(enc, content), self._encode(enc, style)
    t = self._transform(params, fc, fs)
    if not sanet.is_one(alpha):
      t = alpha * t + (1.0 - alpha) * self._transform(params, fc, fc)
    return self._decode(params, t.astype(self.dtype))

  def loss(self, params, vgg_params, content, style, rng):
    """The weighted MANet loss (content and style batches of the same shape); rng draws c1/s1 and the shuffles."""
    k_pair, k_dc, k_ds = jax.random.split(rng, 3)
    vgg_params = vgg_lib.truncate(vgg_params, self.loss_depth)
    lossvgg = lambda x: self.vgg.apply({"params": vgg_params}, x)
    # Content and style share one pass through each network (same shapes): a smaller graph compiles faster.
    both = jnp.concatenate([content, style], axis=0)
    vc, vs = sanet.split_taps(lossvgg(both), 2)
    if self.train_encoder:
      ec, es = jnp.split(self._encode(params["encoder"], both), 2, axis=0)
    else:
      ec, es = vc["r41"], vs["r41"]  # The stylizing encoder is the loss VGG: reuse its features.
    ic, is_ = partner_indices(k_pair, ec.shape[0], self.original_pairing)
    c1, s1 = ec[ic], es[is_]
    # One batched pass for Ics, Icc, Iss, Ic1s and Ics1.
    queries = jnp.concatenate([ec, ec, es, c1, ec], axis=0)
    keys = jnp.concatenate([es, ec, es, es, s1], axis=0)
    images = self._decode(params, self._transform(params, queries, keys))
    g_cs, g_cc, g_ss, g_c1s, g_cs1 = sanet.split_taps(lossvgg(images), 5)
    _, icc, iss, _, _ = jnp.split(images, 5, axis=0)
    terms = {"content": losses.normalized_content_loss(g_cs, vc, CONTENT_TAPS),
             "style": losses.mean_std_style_loss(g_cs, vs, STYLE_TAPS)}
    terms["identity1"], terms["identity2"] = sanet.identity_losses(icc, iss, content, style, g_cc, g_ss, vc, vs)
    dc, ds = disentangle_losses(k_dc, k_ds, g_c1s, g_cs1)
    terms["disentangle"] = dc + ds
    w = self.loss_weights
    stylization = w["content"] * terms["content"] + w["style"] * terms["style"]
    # Switched on by the (weighted) stylization loss, inside jit: no host sync.
    on = jnp.where(stylization < self.disentangle_threshold, 1.0, 0.0).astype(jnp.float32)
    total = (stylization + on * w["disentangle"] * terms["disentangle"] + w["identity1"] * terms["identity1"]
             + w["identity2"] * terms["identity2"])
    return total, self.named_metrics(total, {**terms, "disentangle_on": on})


Model = MANet


# ------------------------------------------------------------------------------------------------------------
# PyTorch layout (models.md §5.6): the released decoder and ma_module files.

TORCH_TRANSFORM = KeyLayout("MANet ma_module", convs("CSA", "CSA") + convs("SSA", "SSA") + convs("CA", "CA"))
MANet.torch_parts = {"decoder": (decoder_lib.torch_part("decoder_iter_160000.pth"),),
                     "transform": (Part("transform", (TORCH_TRANSFORM,), "ma_module_iter_160000.pth"),)}
