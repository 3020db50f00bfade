"""AdaAttN (Liu et al. 2021; Huage001/AdaAttN, released config `--shallow_layer --skip_connection_3`).

KeyLayout (models.md §6):
- encoder and loss network: `vgg_normalised` up to r51 (divisor 16: r41 + up2(r51) needs an even r41).
- transform = {'transformer': {attn_adain_4_1, attn_adain_5_1, merge_conv}, 'adaattn_3'}: attention-weighted
  mean/std per content position; keys concatenate norm(nearest-downsampled shallower taps) with norm(the tap).
- decoder: the mirrored decoder with the relu3_1 skip: [up2(decoder_layer_1(t)), adaattn_3(c31, s31)].
Parameter names follow the reference state dicts: transform/transformer/attn_adain_4_1/f <- attn_adain_4_1.f,
transform/adaattn_3/h <- (latest_net_adaattn_3) h, decoder/decoder_layer_2_14 <- decoder_layer_2.14.
1x1 convs are layers.Conv((1, 1)) with (1, 1, I, O) kernels, so every ported kernel is w.transpose(2, 3, 1, 0).

Losses (§6.4): global style L_g (mean/std, r21..r51, r11 excluded), local feature loss L_l (r21..r51, against a
parameter-free AdaAttN target from the frozen loss VGG), normalized content loss (r21..r51, weight 0 by default:
skipped statically). Metrics: 'total', 'global' (L_g), 'local' (L_l) and 'content_norm' when its weight is
non-zero.
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxtickets.models import layers
from jaxtickets.models import losses
from jaxtickets.models import vgg as vgg_lib
from jaxtickets.models.base import DECODER, TRANSFORM, StyleModel
from jaxtickets.models.torch_layout import Layer, KeyLayout, Part, convs

LOSS_TAPS = vgg_lib.TAPS[1:]  # r21..r51
KEY_TAPS = vgg_lib.TAPS[2:]  # r31..r51: the transform's keys
TRANSFORMER_MAX_SAMPLE = 256 * 256  # the reference's default: never reached at 256 or 512 px
SKIP_MAX_SAMPLE = 64 * 64  # adaattn_3 and the local loss
TEST_SEED = 6666  # the reference test script's seed, used by stylize when no rng is given

# The reference's init_net: conv weights ~ N(0, 0.02), biases 0 (decoder and transform).
adaattn_init = nn.initializers.normal(0.02)

# decoder_layer_2 convs: (Sequential index, full-width output channels, upsample x2 after it).
_DECODER_LAYER_2 = ((1, 256, False), (4, 256, False), (7, 256, False), (10, 128, True), (14, 128, False),
                    (17, 64, True), (21, 64, False))


def nearest_indices(in_size: int, out_size: int) -> np.ndarray:
  """Source rows of PyTorch's nearest resize: min(floor(dst * float32(in / out)), in - 1)."""
  scale = np.float32(in_size) / np.float32(out_size)
  idx = np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int64)
  return np.minimum(idx, in_size - 1)


def nearest_resize(x: jax.Array, out_h: int, out_w: int) -> jax.Array:
  """F.interpolate(mode='nearest') of NHWC `x` to (out_h, out_w); a strided slice for integer ratios."""
  h, w = x.shape[1:3]
  if (h, w) == (out_h, out_w):
    return x
  if h % out_h == 0 and w % out_w == 0:
    # floor(dst * k) = dst * k: the top-left pixel of each k x k cell (jax.image.resize picks another one).
    return x[:, ::h // out_h, ::w // out_w]
  return x[:, nearest_indices(h, out_h)][:, :, nearest_indices(w, out_w)]


def get_key(feats: dict, tap: str, shallow_layer: bool = True) -> jax.Array:
  """The attention key at `tap`: norm(nearest-downsampled shallower taps), shallow to deep, then norm(tap)."""
  h, w = feats[tap].shape[1:3]
  taps = vgg_lib.TAPS[:vgg_lib.TAPS.index(tap) + 1] if shallow_layer else (tap,)
  return jnp.concatenate([layers.normalize(nearest_resize(feats[t], h, w)) for t in taps], axis=-1)


def sample_positions(n: int, max_sample: int, rng: jax.Array | None, sample_index: jax.Array | None):
  """None when all n positions are used, else the index of the sampled positions (an explicit one, or the first
  `max_sample` of a random permutation of n drawn from `rng`, like the reference's randperm)."""
  if n <= max_sample:
    return None
  if sample_index is not None:
    return jnp.asarray(sample_index)
  if rng is None:
    raise ValueError(f"AdaAttN needs an rng (or a sample_index) to subsample {n} > {max_sample} style positions.")
  return jax.random.permutation(rng, n)[:max_sample]


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _sqrt_soft_grad(var: jax.Array, grad_eps: float) -> jax.Array:
  """sqrt(var) whose derivative is that of sqrt(var + grad_eps)."""
  return jnp.sqrt(var)


@_sqrt_soft_grad.defjvp
def _sqrt_soft_grad_jvp(grad_eps, primals, tangents):
  (var,), (dvar,) = primals, tangents
  return jnp.sqrt(var), dvar * 0.5 * jax.lax.rsqrt(var + grad_eps)


def _std_from_var(var: jax.Array, grad_eps: float) -> jax.Array:
  """sqrt(relu(var)) as in the reference; with grad_eps > 0 the gradient is that of sqrt(relu(var) + grad_eps)
  (finite at 0) while the value stays exact."""
  var = layers.relu(var)
  return _sqrt_soft_grad(var, grad_eps) if grad_eps else jnp.sqrt(var)


def attention_mean_std(q: jax.Array, k: jax.Array, v: jax.Array, grad_eps: float = 0.0):
  """(M, S) of AdaAttN: A = softmax_j(q_i . k_j) (no scaling), M = A v, S = sqrt(relu(A v^2 - M^2)).

  q (B, Nc, K), k (B, Ns, K), v (B, Ns, C); logits, softmax and moments in float32; returns (B, Nc, C) twice.
  """
  logits = jnp.einsum("bik,bjk->bij", q, k, preferred_element_type=jnp.float32)
  a = jax.nn.softmax(logits, axis=-1)
  v = v.astype(jnp.float32)
  c = v.shape[-1]
  # One pass over the (Nc, Ns) attention for both moments.
  moments = jnp.einsum("bij,bjc->bic", a, jnp.concatenate([v, v * v], axis=-1))
  mean, second = moments[..., :c], moments[..., c:]
  return mean, _std_from_var(second - mean * mean, grad_eps)


def adaptive_attention(content: jax.Array, q: jax.Array, k: jax.Array, v: jax.Array, max_sample: int,
                       rng=None, sample_index=None, grad_eps: float = 0.0) -> jax.Array:
  """S * norm(content) + M (float32, NHWC) with style positions of k and v subsampled above `max_sample`."""
  b, h, w, _ = content.shape
  q, k, v = q.reshape(b, h * w, -1), k.reshape(b, -1, k.shape[-1]), v.reshape(b, -1, v.shape[-1])
  idx = sample_positions(k.shape[1], max_sample, rng, sample_index)
  if idx is not None:
    k, v = k[:, idx], v[:, idx]
  mean, std = attention_mean_std(q, k, v, grad_eps)
  return std.reshape(b, h, w, -1) * layers.normalize(content) + mean.reshape(b, h, w, -1)


class AdaAttN(nn.Module):
  """One AdaAttN block: f, g (1x1 K->K) on the keys, h (1x1 C->C) on the raw style feature; no residual."""
  max_sample: int = TRANSFORMER_MAX_SAMPLE
  grad_eps: float = 0.0
  dtype: Any = jnp.float32

  def _conv(self, features: int, name: str) -> layers.Conv:
    return layers.Conv(features, (1, 1), dtype=self.dtype, param_dtype=jnp.float32, kernel_init=adaattn_init,
                       name=name)

  @nn.compact
  def __call__(self, content, style, content_key, style_key, rng=None, sample_index=None) -> jax.Array:
    kp, c = content_key.shape[-1], style.shape[-1]
    q = self._conv(kp, "f")(content_key.astype(self.dtype))
    k = self._conv(kp, "g")(style_key.astype(self.dtype))
    v = self._conv(c, "h")(style.astype(self.dtype))
    return adaptive_attention(content, q, k, v, self.max_sample, rng, sample_index, self.grad_eps)


class Transformer(nn.Module):
  """merge_conv(reflect_pad(AdaAttN4_1 + up2_nearest(AdaAttN5_1))), at r41 resolution."""
  grad_eps: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, c_feats, s_feats, c_keys, s_keys, rng=None) -> jax.Array:
    def block(tap, name):
      return AdaAttN(TRANSFORMER_MAX_SAMPLE, self.grad_eps, self.dtype, name=name)(
          c_feats[tap], s_feats[tap], c_keys[tap], s_keys[tap], rng)

    x = block("r41", "attn_adain_4_1") + layers.upsample_nearest2x(block("r51", "attn_adain_5_1"))
    c = c_feats["r41"].shape[-1]
    return layers.ReflectConv(c, dtype=self.dtype, kernel_init=adaattn_init, name="merge_conv")(x)


class Transform(nn.Module):
  """The 'transform' group: returns (the transformer output at r41, the adaattn_3 skip feature at r31)."""
  grad_eps: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, c_feats, s_feats, c_keys, s_keys, rng=None, sample_index=None):
    t = Transformer(self.grad_eps, self.dtype, name="transformer")(c_feats, s_feats, c_keys, s_keys, rng)
    skip = AdaAttN(SKIP_MAX_SAMPLE, self.grad_eps, self.dtype, name="adaattn_3")(
        c_feats["r31"], s_feats["r31"], c_keys["r31"], s_keys["r31"], rng, sample_index)
    return t, skip


class SkipDecoder(nn.Module):
  """Decoder(skip_connection_3=True): decoder_layer_1 (512->256, up x2), concat [it, skip] at r31, decoder_layer_2.

  Conv names are the reference's Sequential keys: decoder_layer_1_1 <- decoder_layer_1.1, decoder_layer_2_N <-
  decoder_layer_2.N. Returns the unclamped float32 image, 8x the r41 size.
  """
  width: float = 1.0
  dtype: Any = jnp.float32
  kernel_init: Any = adaattn_init

  @nn.compact
  def __call__(self, x: jax.Array, skip: jax.Array) -> jax.Array:
    def conv(features, name):
      return layers.ReflectConv(features, dtype=self.dtype, kernel_init=self.kernel_init, name=name)

    x = layers.relu(conv(vgg_lib.channels(256, self.width), "decoder_layer_1_1")(x.astype(self.dtype)))
    x = jnp.concatenate([layers.upsample_nearest2x(x), skip.astype(self.dtype)], axis=-1)
    for idx, c, up in _DECODER_LAYER_2:
      x = layers.relu(conv(vgg_lib.channels(c, self.width), f"decoder_layer_2_{idx}")(x))
      if up:
        x = layers.upsample_nearest2x(x)
    # No output activation in the reference.
    return conv(3, "decoder_layer_2_24")(x).astype(jnp.float32)


def local_feature_loss(g_taps: dict, c_taps: dict, s_taps: dict, c_keys: dict, s_keys: dict, rng,
                       max_sample: int = SKIP_MAX_SAMPLE, taps=LOSS_TAPS, sample_index=None) -> jax.Array:
  """Sum over taps of MSE(g, S * norm(c) + M), with the parameter-free AdaAttN (identity f, g, h) as target."""
  total = jnp.float32(0.0)
  for t in taps:
    target = adaptive_attention(c_taps[t], c_keys[t], s_keys[t], s_taps[t], max_sample, rng, sample_index)
    total += losses.mse(g_taps[t], jax.lax.stop_gradient(target))
  return total


class AdaAttNModel(StyleModel):
  """AdaAttN with an optionally trainable encoder; the loss uses the frozen loss VGG for every target.

  Loss weights (config.model.<name>_weight): style (global style loss, 10), local (local feature loss, 3),
  content (normalized content loss, 0: not computed when 0). Terms (metrics keys): global, local and, when its
  weight is non-zero, content_norm. config.model.std_grad_eps (default 0 = the reference) puts an eps under the
  attention std's sqrt for its gradient only.
  """
  name = "adaattn"
  own_groups = (DECODER, TRANSFORM)
  divisor = 16
  encoder_depth = "r51"
  loss_depth = "r51"
  # Global style L_g and local feature L_l over r21..r51; the normalized content loss is off in the reference (so
  # not computed). configs/adaattn.py takes these from here.
  loss_weights = {"style": 10.0, "local": 3.0, "content": 0.0}
  # The paper's names: L_l measures local stylization, not content, so 'content'/'style' would mislead.
  terms = ("global", "local")

  def __init__(self, model_config):
    super().__init__(model_config)
    self.grad_eps = float(getattr(model_config, "std_grad_eps", None) or 0.0)
    # content_norm is only computed (and reported) when weighted.
    self.terms = self.terms + (("content_norm",) if self.loss_weights["content"] else ())
    self.transform = Transform(self.grad_eps, self.dtype)
    self.decoder = SkipDecoder(self.width, self.dtype, self.decoder_kernel_init(adaattn_init))

  def init(self, rng: jax.Array, vgg_params: dict) -> dict:
    """{'decoder', 'transform': N(0, 0.02) init; 'encoder': copy of the VGG up to r51 (only when train_encoder)}."""
    # Host zeros and the keys' shapes only: the inits are traced from shapes, and eager jnp ops would compile a
    # program per op and shape.
    feats = {t: np.zeros((1, s, s, vgg_lib.channels(c, self.width)), np.float32)
             for t, s, c in (("r11", 32, 64), ("r21", 16, 128), ("r31", 8, 256), ("r41", 4, 512), ("r51", 2, 512))}
    keys = {t: np.zeros(k.shape, k.dtype)
            for t, k in jax.eval_shape(lambda f: {t: get_key(f, t) for t in KEY_TAPS}, feats).items()}
    r_dec, r_tr = jax.random.split(rng)
    params = {"transform": layers.init_params(self.transform, r_tr, feats, feats, keys, keys),
              "decoder": layers.init_params(self.decoder, r_dec, feats["r41"], feats["r31"])}
    if self.train_encoder:
      params["encoder"] = self.init_encoder(vgg_params)
    return params

  def _features(self, enc_params: dict, x: jax.Array) -> dict:
    return self.encoder.apply({"params": enc_params}, x)

  def _stylize_features(self, params, c_feats, s_feats, c_keys, s_keys, rng, sample_index=None):
    """(transformer output at r41, adaattn_3 skip at r31)."""
    return self.transform.apply({"params": params["transform"]}, c_feats, s_feats, c_keys, s_keys, rng,
                                sample_index)

  def stylize(self, params, vgg_params, content, style, alpha=1.0, rng=None, sample_index=None):
    """decoder(a * T + (1 - a) * c41, a * adaattn_3 + (1 - a) * c31); a = alpha blends the transformed r41
    feature and the skip feature with the content's (the reference has no alpha; alpha = 1 is the reference).
    `rng` (default: key(6666), the test seed) or `sample_index` picks the style positions adaattn_3 samples
    when r31 has more than 4096 (e.g. 512 px inputs)."""
    enc = self.encoder_params(params, vgg_params)
    cf, sf = self._features(enc, content), self._features(enc, style)
    ck = {t: get_key(cf, t) for t in KEY_TAPS}
    sk = {t: get_key(sf, t) for t in KEY_TAPS}
    rng = jax.random.key(TEST_SEED) if rng is None else rng
    t, skip = self._stylize_features(params, cf, sf, ck, sk, rng, sample_index)
    t = alpha * t.astype(jnp.float32) + (1.0 - alpha) * cf["r41"].astype(jnp.float32)
    skip = alpha * skip + (1.0 - alpha) * cf["r31"].astype(jnp.float32)
    return self.decoder.apply({"params": params["decoder"]}, t, skip)

  def loss(self, params, vgg_params, content, style, rng):
    """10 * global style + 3 * local feature (+ content_weight * normalized content when non-zero)."""
    vgg_params = vgg_lib.truncate(vgg_params, self.loss_depth)
    lossvgg = lambda x: self.vgg.apply({"params": vgg_params}, x)
    vc, vs = jax.lax.stop_gradient(lossvgg(content)), jax.lax.stop_gradient(lossvgg(style))
    # Keys of the frozen features: the local loss's, and the transform's too when the encoder is the loss VGG.
    c_keys = {t: get_key(vc, t) for t in LOSS_TAPS}
    s_keys = {t: get_key(vs, t) for t in LOSS_TAPS}
    if self.train_encoder:
      enc = params["encoder"]
      cf, sf = self._features(enc, content), self._features(enc, style)
      ck, sk = {t: get_key(cf, t) for t in KEY_TAPS}, {t: get_key(sf, t) for t in KEY_TAPS}
    else:
      cf, sf, ck, sk = vc, vs, c_keys, s_keys
    t, skip = self._stylize_features(params, cf, sf, ck, sk, rng)
    g = lossvgg(self.decoder.apply({"params": params["decoder"]}, t, skip))
    w = self.loss_weights
    l_global = losses.mean_std_style_loss(g, vs, taps=LOSS_TAPS)
    l_local = local_feature_loss(g, vc, vs, c_keys, s_keys, rng)
    total = w["style"] * l_global + w["local"] * l_local
    terms = {"global": l_global, "local": l_local}
    if w["content"]:
      terms["content_norm"] = losses.normalized_content_loss(g, vc, taps=LOSS_TAPS)
      total += w["content"] * terms["content_norm"]
    return total, self.named_metrics(total, terms)


Model = AdaAttNModel


# ------------------------------------------------------------------------------------------------------------
# PyTorch layout (models.md §6.6): three released files, the transform in two parts.

TORCH_DECODER = KeyLayout("AdaAttN decoder", (Layer("decoder_layer_1.1", "decoder_layer_1_1"),) + tuple(
    Layer(f"decoder_layer_2.{i}", f"decoder_layer_2_{i}") for i in (1, 4, 7, 10, 14, 17, 21, 24)))
_FGH = ("f", "g", "h")  # AdaAttN blocks have no out_conv
TORCH_TRANSFORMER = KeyLayout("AdaAttN transformer", convs("attn_adain_4_1", "attn_adain_4_1", _FGH)
                           + convs("attn_adain_5_1", "attn_adain_5_1", _FGH) + (Layer("merge_conv", "merge_conv"),))
TORCH_ADAATTN_3 = KeyLayout("AdaAttN adaattn_3", convs("", "", _FGH))
AdaAttNModel.torch_parts = {
    "decoder": (Part("decoder", (TORCH_DECODER,), "latest_net_decoder.pth"),),
    "transform": (Part("transform/transformer", (TORCH_TRANSFORMER,), "latest_net_transformer.pth"),
                  Part("transform/adaattn_3", (TORCH_ADAATTN_3,), "latest_net_adaattn_3.pth"))}
