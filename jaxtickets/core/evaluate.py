"""Scores a network on the run's fixed held-out content/style pairs with the frozen loss VGG."""

import functools
import math

import jax
import numpy as np

from jaxtickets.core import sparsity


RECON_PSNR = "recon_psnr"  # dB, the held-out content reconstructed through the network with itself as the style
FLAT_PSNR = "flat_psnr"  # dB, a flat image of the content's mean colour: what a network that learned nothing scores
# The stylized output's spread: its pixels' standard deviation (clipped to [0, 1]), the largest over the colour
# channels, so a flat colour of any hue counts as constant.
OUTPUT_STD = "output_std"
CONSTANT_OUTPUT_STD = 1e-3  # below this on every pair, the output is one colour whatever the input: a dead network

# Why a trained network counts as collapsed (collapse_reason): its comparisons would measure the death, not pruning.
NAN_LOSS = "NaN loss"
BELOW_FLAT = "reconstruction below a flat image"
CONSTANT_OUTPUT = "constant output"


def psnr(x, reference):
  """Peak signal-to-noise ratio in dB of `x` against `reference`, images in [0, 1]."""
  mse = jax.numpy.mean((x.astype(jax.numpy.float32) - reference.astype(jax.numpy.float32)) ** 2)
  return 10.0 * jax.numpy.log10(1.0 / jax.numpy.maximum(mse, 1e-10))


@functools.lru_cache(maxsize=8)
def make_eval_fn(model):
  """Per-pair metrics (every name of model.metric_names, the learnability check's RECON_PSNR and FLAT_PSNR, and the
  stylized output's OUTPUT_STD) for a chunk of pairs, under one jit (one per model and process)."""

  @jax.jit
  def eval_fn(params, masks, vgg_params, content, style):
    params = sparsity.apply_masks(params, masks)
    key = jax.random.PRNGKey(0)  # fixed: models with random loss terms score every round alike

    def one(c, s):
      _, metrics = model.loss(params, vgg_params, c[None], s[None], key)
      # The content stylized with itself as the style: a network that has learned the task gives it back.
      recon = jax.numpy.clip(model.stylize(params, vgg_params, c[None], c[None])[0], 0.0, 1.0)
      flat = jax.numpy.broadcast_to(c.mean(axis=(0, 1)), c.shape)
      out = jax.numpy.clip(model.stylize(params, vgg_params, c[None], s[None])[0], 0.0, 1.0).astype(jax.numpy.float32)
      spread = jax.numpy.max(jax.numpy.std(out, axis=(0, 1)))
      return {**metrics, RECON_PSNR: psnr(recon, c), FLAT_PSNR: psnr(flat, c), OUTPUT_STD: spread}

    return jax.vmap(one)(content, style)

  return eval_fn


def evaluate(eval_fn, params, masks, vgg_params, pairs, batch_size: int) -> dict:
  """Mean of each metric over all pairs, as Python floats, and under 'per_pair' every pair's values (lists, in the
  pairs' order: the verdict's intervals pair them with the dense network's); pairs are scored in chunks."""
  content, style = np.asarray(pairs["content"]), np.asarray(pairs["style"])
  n = len(content)
  chunks = []
  for start in range(0, n, batch_size):
    idx = np.arange(start, start + batch_size) % n  # pad the last chunk by wrapping, then drop the extras
    out = jax.device_get(eval_fn(params, masks, vgg_params, content[idx], style[idx]))
    keep = min(batch_size, n - start)
    chunks.append({k: np.asarray(v)[:keep] for k, v in out.items()})
  per_pair = {k: np.concatenate([c[k] for c in chunks]).astype(np.float64) for k in chunks[0]}
  means = {k: float(np.mean(v)) for k, v in per_pair.items()}
  out = {**means, "per_pair": {k: v.tolist() for k, v in per_pair.items()}}
  if "names" in pairs:  # 'content__style' per pair: the statistics average a combination's crops into one unit
    out["pair_names"] = list(pairs["names"])
  return out


def collapse_reason(metrics: dict) -> str | None:
  """Why a trained network's evaluation `metrics` (a ticket's) show it collapsed, or None: a non-finite loss
  (NAN_LOSS), an output of one colour on every pair (CONSTANT_OUTPUT), or a mean reconstruction PSNR below the flat
  image's (BELOW_FLAT). Tickets evaluated before OUTPUT_STD existed count as not constant."""
  per_pair = metrics.get("per_pair") or {}
  losses = ("total", *metrics.get("terms", ()))
  values = [metrics[k] for k in losses if k in metrics] + [v for k in losses for v in per_pair.get(k, ())]
  if any(v is None or not math.isfinite(v) for v in values):  # JSON may hold a NaN as null
    return NAN_LOSS
  # Before BELOW_FLAT: a constant output reconstructs no better than a flat image either, and says more.
  spread = per_pair.get(OUTPUT_STD) or ([metrics[OUTPUT_STD]] if OUTPUT_STD in metrics else [])
  if spread and all(v is not None and v < CONSTANT_OUTPUT_STD for v in spread):
    return CONSTANT_OUTPUT
  if metrics.get(RECON_PSNR) is not None and metrics.get(FLAT_PSNR) is not None:
    if not metrics[RECON_PSNR] >= metrics[FLAT_PSNR]:  # a NaN PSNR counts as below
      return BELOW_FLAT
  return None


def stylize_pairs(model, params, masks, vgg_params, pairs) -> np.ndarray:
  """The stylized held-out pairs, clipped to [0, 1], for image grids."""
  out = _stylize(model, params, masks, vgg_params, pairs["content"], pairs["style"])
  return np.clip(np.asarray(out), 0.0, 1.0)


@functools.partial(jax.jit, static_argnums=0)
def _stylize(model, params, masks, vgg_params, content, style):
  # The masks applied inside the jit: applied outside, every leaf shape compiles an op of its own.
  return model.stylize(sparsity.apply_masks(params, masks), vgg_params, content, style)
