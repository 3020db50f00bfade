"""A run's random streams, named once: which key or seed each random draw of a run comes from.

Replicate r draws from seed config.seed + r; the stand-in VGG from config.seed alone, so every replicate shares it
as it would share pretrained weights. Changing a number here changes every run's results (and resumes nothing).
"""

import enum

import jax


class Stream(enum.IntEnum):
  """The number each stream folds into its seed's key."""
  INIT = 0  # a replicate's theta_0 (the decoder and transform; a trained encoder starts from the VGG)
  VGG = 1  # the random stand-in VGG when config.model.vgg_weights is empty
  REINIT = 2  # random_reinit's fresh draw of every trained group
  STEPS = 3  # the train step's keys (the step folds in its index)


def key(seed: int, stream: Stream) -> jax.Array:
  """The key of `stream` under `seed`."""
  return jax.random.fold_in(jax.random.PRNGKey(seed), int(stream))


def random_prune_seed(seed: int, round_: int) -> int:
  """The numpy seed of random_prune's masks in `round_` of the replicate with `seed`."""
  return seed * 1009 + round_
