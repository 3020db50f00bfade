"""Using a ticket: a Stylizer built from a ticket, ported weights or an export, with style mixing and color keeping.

Style interpolation. The StyleModel interface exposes only `stylize` (content, style -> image), not the features
or the transform, so several styles are mixed at the image level: out = sum_k w_k * stylize(content, style_k).
This is not the feature-level interpolation of the AdaIN paper (decode(sum_k w_k AdaIN(f_c, f_s_k))): the decoder
is nonlinear, so a feature mix gives one coherent texture while an image mix overlays the single-style results.

Color preservation is Gatys et al.'s "luminance-only transfer" (Preserving Color in Neural Artistic Style
Transfer, 2016): both images are reduced to their YIQ luminance Y (as gray RGB images), the style's Y is
matched to the content's mean and standard deviation, the model stylizes these luminance images, and the
output's Y is recombined with the content's own chroma (I, Q). The result keeps the content's colors exactly.
"""

import dataclasses
import functools
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxtickets.store import checkpoint, workdir as workdir_lib
from jaxtickets import models
from jaxtickets.weights import files as weights_lib
from jaxtickets.errors import UserError

# FCC NTSC RGB -> YIQ; rows give Y, I, Q. The inverse is computed, so the round trip is exact to float precision.
RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114],
                       [0.595716, -0.274453, -0.321263],
                       [0.211456, -0.522591, 0.311135]], dtype=np.float64)
YIQ_TO_RGB = np.linalg.inv(RGB_TO_YIQ)
WHICH = ("trained", "rewind")


def rgb_to_yiq(x: np.ndarray) -> np.ndarray:
  """...x3 RGB -> ...x3 YIQ (float32)."""
  return (np.asarray(x, np.float64) @ RGB_TO_YIQ.T).astype(np.float32)


def yiq_to_rgb(x: np.ndarray) -> np.ndarray:
  """...x3 YIQ -> ...x3 RGB (float32), unclamped."""
  return (np.asarray(x, np.float64) @ YIQ_TO_RGB.T).astype(np.float32)


def luminance_inputs(content: np.ndarray, style: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Gray RGB images of the content's Y and of the style's Y matched to the content's Y mean and std."""
  yc, ys = rgb_to_yiq(content)[..., :1], rgb_to_yiq(style)[..., :1]
  mc, sc = yc.mean(axis=(1, 2), keepdims=True), yc.std(axis=(1, 2), keepdims=True)
  ms, ss = ys.mean(axis=(1, 2), keepdims=True), ys.std(axis=(1, 2), keepdims=True)
  ys = (ys - ms) / np.maximum(ss, 1e-6) * sc + mc
  gray = lambda y: np.repeat(y, 3, axis=-1).astype(np.float32)
  return gray(yc), gray(ys)


def keep_content_chroma(content: np.ndarray, stylized: np.ndarray) -> np.ndarray:
  """The stylized image's luminance Y with the content's chroma I, Q (same HxW)."""
  yiq = rgb_to_yiq(content)
  yiq[..., 0] = rgb_to_yiq(stylized)[..., 0]
  return yiq_to_rgb(yiq)


def mix_weights(weights: Sequence[float] | None, n: int) -> np.ndarray:
  """Style weights normalized to sum 1 (equal when None); they must be n non-negative numbers, not all 0."""
  if weights is None:
    return np.full(n, 1.0 / n)
  w = np.asarray(weights, dtype=np.float64)
  if w.shape != (n,) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
    raise UserError(f"The style weights {list(weights)} do not fit {n} style(s): give {n} non-negative numbers "
                    "that are not all zero, e.g. 0.5,0.5.")
  return w / w.sum()


def _as_batch(x, what: str) -> tuple[np.ndarray, bool]:
  """An NHWC float32 array (HWC gets a batch axis; the flag says so) or a UserError naming `what`."""
  x = np.asarray(x, dtype=np.float32)
  single = x.ndim == 3
  x = x[None] if single else x
  if x.ndim != 4 or x.shape[-1] != 3:
    raise UserError(f"The {what} image has shape {x.shape}: pass an HxWx3 or NxHxWx3 RGB array in [0, 1].")
  return x, single


@functools.lru_cache(maxsize=8)
def _stylize_fn(model):
  # alpha is static: models may branch on it in Python; jax.jit then caches one program per shape and alpha. One
  # function per model, so Stylizers of the same model (several tickets, rounds) share the traced programs.
  return jax.jit(model.stylize_any_size, static_argnums=(4,))


class Stylizer:
  """A model with fixed (masked) params and VGG; `stylize` takes images of any size."""

  def __init__(self, model, params, vgg_params, masks=None, model_config: dict | None = None):
    if masks is not None:
      params = jax.tree.map(lambda p, m: np.where(np.asarray(m, bool), p, np.zeros_like(p)), params, masks)
    self.model = model
    self.params = params  # host numpy, masked: exactly what is stylized with
    self.vgg_params = vgg_params
    self.masks = masks
    self.model_config = dict(model_config or {})
    self._device_params = jax.device_put(params)
    self._device_vgg = jax.device_put(vgg_params)
    self._fn = _stylize_fn(model)

  def stylize(self, content, style, alpha: float = 1.0, *, preserve_color: bool = False) -> np.ndarray:
    """Stylizes HxWx3 or NxHxWx3 float32 images in [0,1] of any size; the float32 output before clamping."""
    c, single = _as_batch(content, "content")
    s, _ = _as_batch(style, "style")
    if not 0.0 <= float(alpha) <= 1.0:
      raise UserError(f"alpha = {alpha} is not allowed: use a value in [0, 1] (1 = full style).")
    if len(s) != len(c):
      if len(s) != 1:
        raise UserError(f"{len(c)} content images and {len(s)} style images: give one style or one per content.")
      s = np.repeat(s, len(c), axis=0)
    if preserve_color:
      c_in, s_in = luminance_inputs(c, s)
    else:
      c_in, s_in = c, s
    out = np.asarray(jax.device_get(self._fn(self._device_params, self._device_vgg, jnp.asarray(c_in),
                                             jnp.asarray(s_in), float(alpha))), dtype=np.float32)
    if preserve_color:
      out = keep_content_chroma(c, out)
    return out[0] if single else out

  def stylize_mix(self, content, styles: Sequence, weights: Sequence[float] | None = None, alpha: float = 1.0,
                  *, preserve_color: bool = False) -> np.ndarray:
    """Several styles mixed with weights, at the image level (see the module docstring for why)."""
    if not styles:
      raise UserError("No style image was given: pass at least one.")
    w = mix_weights(weights, len(styles))
    out = None
    for wk, style in zip(w, styles):
      if wk == 0:
        continue
      part = np.float32(wk) * self.stylize(content, style, alpha, preserve_color=preserve_color)
      out = part if out is None else out + part
    return out

  @classmethod
  def from_ticket(cls, ticket_dir: str, which: str = "trained", vgg_weights: str | None = None,
                  allow_vgg_mismatch: bool = False) -> "Stylizer":
    """The ticket at workdir/tickets/<branch>/rep_<r>/round_NN; the model config comes from workdir/config.json,
    the VGG from where the run found it (or `vgg_weights`), checked against its record (weights.resolve_run_vgg)."""
    if which not in WHICH:
      raise UserError(f"which = {which!r} is not allowed: use 'trained' (the round's result) or 'rewind'.")
    ticket_dir = os.path.abspath(os.fspath(ticket_dir))
    if not checkpoint.ticket_exists(ticket_dir):
      checkpoint.load_ticket_metadata(ticket_dir)  # raises the UserError that names what is wrong
    workdir = workdir_lib.run_of_ticket(ticket_dir)
    spec = workdir_lib.load_run_settings(workdir, ticket_dir).model
    spec = dataclasses.replace(spec, vgg_weights=weights_lib.resolve_run_vgg(spec, workdir, vgg_weights,
                                                                              allow_vgg_mismatch))
    model, vgg = weights_lib.model_and_vgg(spec)
    ticket = checkpoint.load_ticket(ticket_dir)
    params = ticket.trained_params if which == "trained" else ticket.rewind_params
    _check_fits(model, vgg, params, ticket_dir)
    return cls(model, params, vgg, ticket.masks, model_config=model.config.to_dict())

  @classmethod
  def from_ported(cls, weights_dir: str) -> "Stylizer":
    """A model's ported weights: a directory written by scripts/port_weights.py (see jaxtickets.weights)."""
    weights_dir = os.path.abspath(os.fspath(weights_dir))
    if not os.path.isdir(weights_dir):
      raise UserError(f"No ported weights at '{weights_dir}': the directory does not exist; write it with "
                      "scripts/port_weights.py or check the path.")
    ported = weights_lib.load_ported(weights_dir, need_model=True)
    if ported.params is None:
      raise UserError(f"'{weights_dir}' holds VGG weights only: use it as config.model.vgg_weights, or port the "
                      "model's decoder (and transform) too.")
    if ported.vgg is None:
      raise UserError(f"The params checkpoint in '{weights_dir}' holds no 'vgg' part: port the weights again, "
                      "with --vgg.")
    model_config = {**(ported.model_config or {}), "name": ported.model}
    model = models.build(ported.model, {**weights_lib.RELEASED_MODEL, **model_config})
    _check_fits(model, ported.vgg, ported.params, weights_dir)
    return cls(model, ported.params, ported.vgg, model_config=model_config)

  @classmethod
  def from_export(cls, path: str) -> "Stylizer":
    """A file written by `python -m jaxtickets.export` (.npz or .safetensors)."""
    from jaxtickets.tickets import export_format

    e = export_format.load_export(path)
    model = models.build(e.model_name, e.model_config)
    vgg = e.vgg_params if e.vgg_params is not None else unused_vgg(model)
    return cls(model, e.params, vgg, e.masks, model_config=e.model_config)


# The model and VGG params of a run's settings.ModelSpec, built by the one function the trainer (imp.setup) builds
# them with.
model_and_vgg = weights_lib.model_and_vgg


def unused_vgg(model) -> dict:
  """Zeros in the VGG's shapes, for a model whose stylize never reads the VGG (see export)."""
  shapes = jax.eval_shape(model.init_vgg, jax.random.PRNGKey(0))
  return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)


def _check_fits(model, vgg, params, where: str) -> None:
  """UserError unless `params` have the leaves and shapes that model.init gives."""
  from jaxtickets.core import sparsity

  expected = jax.eval_shape(model.init, jax.random.PRNGKey(0), vgg)
  want = dict(zip(sparsity.leaf_paths(expected), (tuple(s.shape) for s in jax.tree.leaves(expected))))
  got = dict(zip(sparsity.leaf_paths(params), (tuple(np.shape(p)) for p in jax.tree.leaves(params))))
  fix = "use weights made for this model and config"
  if set(want) != set(got):
    odd = sorted(set(want) ^ set(got))
    raise UserError(f"The weights in '{where}' do not fit {model.name}: leaf '{odd[0]}' is "
                    f"{'missing' if odd[0] in want else 'unexpected'} ({len(odd)} leaves differ); {fix}.")
  for path, shape in want.items():
    if got[path] != shape:
      raise UserError(f"The weights in '{where}' do not fit {model.name}: '{path}' has shape {got[path]}, the "
                      f"model wants {shape}; {fix}.")


def stylize_reads_vgg(model, params, vgg) -> bool:
  """Whether model.stylize reads any VGG leaf (traced, not run); unknown cases count as reading it."""
  size = model.divisor * max(1, -(-64 // model.divisor))
  image = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  shape_of = lambda t: jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype), t)
  try:
    closed = jax.make_jaxpr(lambda v, p, c, s: model.stylize(p, v, c, s))(shape_of(vgg), shape_of(params), image, image)
  except Exception:  # pylint: disable=broad-except  (be safe: keep the VGG)
    return True
  jaxpr = closed.jaxpr
  n_vgg = len(jax.tree.leaves(vgg))
  used = {id(v) for eqn in jaxpr.eqns for v in eqn.invars} | {id(v) for v in jaxpr.outvars}
  return any(id(v) in used for v in jaxpr.invars[:n_vgg])


def load(source: str, which: str = "trained") -> Stylizer:
  """A Stylizer from a ticket dir, a ported-weights dir or an export file."""
  source = os.fspath(source)
  if os.path.isfile(source):
    return Stylizer.from_export(source)
  if weights_lib.is_ported(source):
    return Stylizer.from_ported(source)
  return Stylizer.from_ticket(source, which)


__all__ = ["Stylizer", "load", "mix_weights", "rgb_to_yiq", "yiq_to_rgb", "luminance_inputs",
           "keep_content_chroma", "stylize_reads_vgg"]
