"""The interface every style-transfer model implements, plus what models share (VGG building, dtype, weights)."""

import json
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxtickets.errors import UserError
from jaxtickets.models import DECODER_INITS, GROUPS, SHARED_FIELDS
from jaxtickets.models import vgg as vgg_lib
from jaxtickets.models.layers import init_params
from jaxtickets.models.torch_layout import Part

ENCODER, DECODER, TRANSFORM = GROUPS
_DATA_SOURCES = ("vgg_weights", "init_from")  # where weights come from: they are arguments, not part of the model


def _field(options: Any, name: str, default: Any) -> Any:
  """`options.name` (the model's options: config.model), or `default` when the field is absent or None (a model's
  own fields, e.g. a loss weight, whose default is the reference implementation's value)."""
  value = getattr(options, name, None)
  return default if value is None else value


def _fresh_copy(a: jax.Array) -> jax.Array:
  """`a` in a new buffer: through the host outside a trace (an eager jnp copy compiles an op per leaf shape)."""
  if isinstance(a, jax.core.Tracer):
    return jnp.array(a, copy=True)
  return jax.device_put(np.array(a))


class StyleModel:
  """A style-transfer model: pure, jittable functions of explicit params; the object holds only settings.

  Params come in two trees: `params` (top-level keys = `groups`, each one of models.GROUPS)
  and `vgg_params` (the frozen loss VGG up to `loss_depth`). When `train_encoder` is False the stylizing encoder
  reads `vgg_params`. Only `trained_groups` (default: all of `groups`) get gradients and can be pruned; the others
  (e.g. LST's pre-trained decoder) ride along in `params` unchanged. `torch_parts` names the released PyTorch
  files that jaxtickets.weights.port reads into the 'decoder' and 'transform' groups (set at the end of each
  model's file).

  `loss` reports 'total' plus the model's own names: `terms` (its loss terms, in display order: logs, TensorBoard,
  results.csv, the report's per-term intervals and curves) and `extra_metrics` (other scalars that are no loss
  term, so nothing is compared with the dense network on them).
  """
  name: str = ""
  divisor: int = 1
  own_groups: tuple[str, ...] = (DECODER,)  # the groups besides the optional trained encoder, in GROUPS order
  encoder_depth: str = "r41"
  loss_depth: str = "r41"
  loss_weights: dict[str, float] = {}
  torch_parts: dict[str, tuple[Part, ...]] = {}  # 'decoder'/'transform' -> its released files' layouts
  # The encoder file the upstream test scripts load (strictly, the whole VGG19): what export --format=torch writes
  torch_encoder: Part = Part("encoder", (vgg_lib.VGG_NORMALISED,), "vgg_normalised.pth")
  terms: tuple[str, ...] = ()
  extra_metrics: tuple[str, ...] = ()

  def __init__(self, model_config):
    self.config = model_config
    fields = model_config.to_dict() if hasattr(model_config, "to_dict") else dict(model_config)
    fields = {k: v for k, v in fields.items() if k not in _DATA_SOURCES}
    # Models are pure functions of their settings: equal settings are the same model, so jitted functions that
    # take a model as a static argument (or are cached per model) are traced once per process.
    self._identity = (type(self).__module__, type(self).__qualname__, json.dumps(fields, sort_keys=True, default=repr))
    # The fields every model reads; one a config lacks takes SHARED_FIELDS' value, the one source of defaults
    # (config.default_config is built from it; config.validate checks the values before any model is built).
    shared = lambda name: _field(model_config, name, SHARED_FIELDS[name])
    self.width = float(shared("width"))
    self.train_encoder = bool(shared("train_encoder"))
    self.dtype = getattr(jnp, shared("dtype"))  # a name in config.DTYPES
    self.decoder_init = str(shared("decoder_init"))  # a name in models.DECODER_INITS
    self.groups = ((ENCODER,) if self.train_encoder else ()) + tuple(self.own_groups)
    # Each loss weight can be overridden by a config field named '<loss>_weight'.
    self.loss_weights = {k: float(_field(model_config, f"{k}_weight", v)) for k, v in self.loss_weights.items()}
    self.vgg = vgg_lib.VGGEncoder(depth=self.loss_depth, width=self.width, dtype=self.dtype)
    self.encoder = vgg_lib.VGGEncoder(depth=self.encoder_depth, width=self.width, dtype=self.dtype)

  def __eq__(self, other):
    return isinstance(other, StyleModel) and other._identity == self._identity  # pylint: disable=protected-access

  def __hash__(self):
    return hash(self._identity)

  def decoder_kernel_init(self, reference: Any):
    """The decoder's kernel initializer: the model's `reference` one, or He-normal when model.decoder_init says so."""
    if self.decoder_init == "he_normal":
      return nn.initializers.he_normal()
    if self.decoder_init != "reference":
      raise UserError(f"config.model.decoder_init = {self.decoder_init!r}: use one of {', '.join(DECODER_INITS)}.")
    return reference

  @property
  def metric_names(self) -> tuple[str, ...]:
    """Every key of the metrics `loss` returns: 'total', then the terms, then the extra metrics."""
    return ("total", *self.terms, *self.extra_metrics)

  def named_metrics(self, total: jax.Array, values: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """`loss`'s metrics dict: `values` (exactly the declared terms and extra metrics, checked while tracing) and
    'total'."""
    declared = (*self.terms, *self.extra_metrics)
    if set(values) != set(declared):
      raise ValueError(f"{type(self).__name__}.loss reports {sorted(values)}, but the model declares "
                       f"{list(declared)}.")
    return {**{k: values[k] for k in declared}, "total": total}

  @property
  def trained_groups(self) -> tuple[str, ...]:
    """The groups the optimizer updates (and pruning may touch)."""
    return tuple(self.groups)

  def init_vgg(self, rng: jax.Array) -> dict:
    """Random VGG params up to `loss_depth` (the stand-in when no pretrained weights are loaded)."""
    x = jnp.zeros((1, 16, 16, 3), jnp.float32)
    return init_params(self.vgg, rng, x)

  def encoder_params(self, params: dict, vgg_params: dict) -> dict:
    """The stylizing encoder's params: the trained copy, or the frozen VGG truncated to `encoder_depth`."""
    if self.train_encoder:
      return params["encoder"]
    return vgg_lib.truncate(vgg_params, self.encoder_depth)

  def init_encoder(self, vgg_params: dict) -> dict:
    """A trainable copy of the VGG up to `encoder_depth`, in fresh buffers so donating it spares vgg_params."""
    return jax.tree.map(_fresh_copy, vgg_lib.truncate(vgg_params, self.encoder_depth))

  def init(self, rng: jax.Array, vgg_params: dict) -> dict:
    """The trainable params, keyed by group."""
    raise NotImplementedError

  def reinit(self, rng: jax.Array, vgg_params: dict, params: dict) -> dict:
    """The random-reinitialisation baseline's weights: every trained group re-drawn, frozen groups kept from `params`.

    Each group is re-drawn from the distribution its theta_0 came from, so the baseline changes the draw and not the
    init's scale: the decoder and transform with their layers' initializers (as `init`), a trained encoder (a copy of
    the VGG in theta_0) with the random VGG's He-normal init, layer by layer. With a pretrained VGG loaded, theta_0's
    encoder is those weights, which no distribution reproduces; the He-normal draw a random VGG would have is the
    natural stand-in, and the baseline then owes nothing to the pretrained weights.
    """
    fresh = self.init(rng, vgg_params)
    if "encoder" in fresh:
      # self.encoder has the VGG's initializer (vgg_lib.vgg_init), the one init_vgg draws the random VGG with.
      fresh["encoder"] = init_params(self.encoder, jax.random.fold_in(rng, 1), jnp.zeros((1, 16, 16, 3), jnp.float32))
    return {g: (fresh[g] if g in self.trained_groups else v) for g, v in params.items()}

  def stylize(self, params: dict, vgg_params: dict, content: jax.Array, style: jax.Array,
              alpha: float = 1.0) -> jax.Array:
    """Stylizes NHWC float images in [0,1]; returns the unclamped float32 NHWC output."""
    raise NotImplementedError

  def stylize_any_size(self, params: dict, vgg_params: dict, content: jax.Array, style: jax.Array,
                       alpha: float = 1.0) -> jax.Array:
    """`stylize` for any image sizes: reflect-pads both images up to multiples of `divisor` and crops the output
    back to the content's size (the reference code would fail on such sizes)."""
    def pad(x):
      h, w = x.shape[1:3]
      ph, pw = -h % self.divisor, -w % self.divisor
      if not (ph or pw):
        return x
      if min(h, w) < 2:
        raise UserError(f"An image of {h}x{w} pixels is too small to stylize: use images at least 2 pixels a side.")
      # Reflection needs pad < side; repeat it for tiny images (edge mode beyond that).
      mode = "reflect" if ph < h and pw < w else "edge"
      return jnp.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)), mode=mode)

    h, w = content.shape[1:3]
    out = self.stylize(params, vgg_params, pad(content), pad(style), alpha)
    return out[:, :h, :w]

  def loss(self, params: dict, vgg_params: dict, content: jax.Array, style: jax.Array,
           rng: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(weighted total loss, metrics of float32 scalars keyed by `metric_names`) for a batch of content and style
    images."""
    raise NotImplementedError
