"""The grain training pipeline and the fixed evaluation pairs, from a settings.DataSpec.

Training element i is global step i and a pure function of (the data settings, i): content and style are drawn
from independent seeded shuffles (repeated forever) and cropped with an RNG seeded from (seed, global sample
index), so restarting, resuming and changing the process count all see the same global batches. The held-out
images are a seeded split of the training sources (or their own sources), the same for every replicate.
"""

from __future__ import annotations

import sys
from typing import Any

import grain
import numpy as np

from jaxtickets.data.images import _check_sizes, preprocess_eval, preprocess_train
from jaxtickets.data.sources import BoundedCache, SkipLog, _Readable, open_source
from jaxtickets.errors import UserError

# Tags that keep the content, style and holdout random streams independent of each other.
_CONTENT, _STYLE, _HOLDOUT, _PAIRS = 0, 1, 2, 3


def _seed_int(*entropy: int) -> int:
  """A 32-bit seed derived from integers, for APIs that take a single int."""
  return int(np.random.SeedSequence([e % 2**63 for e in entropy]).generate_state(1)[0])


def _rng(*entropy: int) -> np.random.Generator:
  return np.random.default_rng([e % 2**63 for e in entropy])


# ----------------------------------------------------------------------------- holdout


def split_holdout(n: int, num_holdout: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """A seeded split of range(n) into (train, holdout) index arrays, each sorted."""
  if not 0 <= num_holdout < n:
    raise UserError(
        f'Cannot hold out {num_holdout} of {n} images and still train: lower'
        ' config.eval.num_pairs or set config.data.eval_content / eval_style.')
  perm = _rng(seed, _HOLDOUT).permutation(n)
  return np.sort(perm[num_holdout:]), np.sort(perm[:num_holdout])


def _train_and_holdout(data, what: str):
  """(source, train indices, holdout indices or None) for what in 'content'/'style'."""
  source = open_source(data.source(what), data, what)
  if data.source(f'eval_{what}'):
    return source, np.arange(len(source)), None
  tag = _CONTENT if what == 'content' else _STYLE
  try:
    train, hold = split_holdout(len(source), data.num_pairs, _seed_int(data.seed, tag))
  except UserError:
    raise UserError(
        f'The {what} source {source!r} has {len(source)} images, too few to hold out'
        f' config.eval.num_pairs={data.num_pairs} for evaluation: set'
        f' config.data.eval_{what} or lower config.eval.num_pairs.') from None
  return source, train, hold


# ----------------------------------------------------------------------------- training


class _LocalToGlobal:
  """Local sample m of this process -> global sample index in the global batch stream."""

  def __init__(self, local_batch: int, global_batch: int, process_index: int):
    self.b, self.g, self.p = local_batch, global_batch, process_index

  def __call__(self, m: int) -> int:
    step, k = divmod(int(m), self.b)
    return step * self.g + self.p * self.b + k


class _Sample:
  """Global sample index j -> {'content', 'style'} crops, a pure function of j."""

  def __init__(self, content, content_order, style, style_order, seed, load_size, crop_size):
    self.content, self.content_order = content, content_order
    self.style, self.style_order = style, style_order
    self.seed, self.load_size, self.crop_size = seed, load_size, crop_size

  def __call__(self, j: int) -> dict[str, np.ndarray]:
    # _Readable: an unreadable image is replaced, never raised
    _, c = self.content.load_resized(self.content_order[j], self.load_size)
    _, s = self.style.load_resized(self.style_order[j], self.load_size)
    return {
        'content': preprocess_train(c, _rng(self.seed, j, _CONTENT), self.load_size,
                                    self.crop_size),
        'style': preprocess_train(s, _rng(self.seed, j, _STYLE), self.load_size, self.crop_size),
    }


class _Order:
  """Infinite stream of source indices: a seeded shuffle, reshuffled each epoch (grain's shuffle().repeat()).

  grain draws each element with index_shuffle, whose cost hardly shrinks with the source, so a source of a few
  images would pay it at nearly every sample. A small source's epochs are therefore drawn whole, once per process,
  and kept (the same values): a run's rounds, and a study's runs, draw the same epochs again.
  """

  WHOLE_EPOCHS_UP_TO = 4096  # sources at most this long: a whole epoch is cheap to draw and to keep

  def __init__(self, indices: np.ndarray, seed: int):
    self._stream = grain.MapDataset.source([int(i) for i in indices]).shuffle(seed=seed).repeat(None)
    self._n = len(indices)
    self._key = (seed, np.asarray(indices, dtype=np.int64).tobytes())  # bytes cache their hash: cheap lookups

  def __getitem__(self, j: int) -> int:
    if self._n > self.WHOLE_EPOCHS_UP_TO:
      return self._stream[int(j)]
    epoch, position = divmod(int(j), self._n)
    return int(self._epoch(epoch)[position])

  def _epoch(self, epoch: int) -> np.ndarray:
    key = (*self._key, epoch)
    found = _EPOCHS.get(key)
    if found is None:
      found = np.array([self._stream[epoch * self._n + i] for i in range(self._n)])
      _EPOCHS.put(key, found, found.nbytes)
    return found


_EPOCHS = BoundedCache(max_bytes=32 << 20)  # (seed, indices, epoch) -> one epoch of a small source's order


def make_train_dataset(data, global_batch_size: int, process_index: int = 0,
                       process_count: int = 1, skip_log: SkipLog | None = None,
                       order_seed: int | None = None) -> grain.MapDataset:
  """Infinite MapDataset of a settings.DataSpec; element i is this process's slice of global batch i.

  `order_seed` (default data.seed) fixes the data order and the crops; the held-out split always follows
  data.seed, so replicates with their own order seeds train on the same images and share the evaluation pairs.
  Unreadable images are replaced by the next readable one and recorded in `skip_log`; a source with no
  readable image at all fails here, before training.
  """
  if global_batch_size <= 0 or global_batch_size % process_count:
    raise UserError(
        f'The global batch size {global_batch_size} must be a positive multiple of the'
        f' {process_count} processes: change config.train.batch_size.')
  if not 0 <= process_index < process_count:
    raise UserError(f'process_index={process_index} is not in [0, {process_count}).')
  _check_sizes(data.load_size, data.crop_size)
  content, c_train, _ = _train_and_holdout(data, 'content')
  style, s_train, _ = _train_and_holdout(data, 'style')
  seed = int(data.seed if order_seed is None else order_seed)
  skip_log = SkipLog() if skip_log is None else skip_log
  content = _Readable(content, c_train, 'content', skip_log)
  style = _Readable(style, s_train, 'style', skip_log)
  for side in (content, style):
    side.load(side.indices[0])  # a source with no readable image stops here, in one sentence
  sample = _Sample(content, _Order(c_train, _seed_int(seed, _CONTENT)),
                   style, _Order(s_train, _seed_int(seed, _STYLE)),
                   seed, int(data.load_size), int(data.crop_size))
  local = global_batch_size // process_count
  return (grain.MapDataset.range(0, sys.maxsize)
          .map(_LocalToGlobal(local, global_batch_size, process_index))
          .map(sample)
          .batch(local, drop_remainder=True))


def make_train_iterator(dataset: grain.MapDataset, start_step: int = 0, num_threads: int = 2,
                        prefetch: int = 2):
  """A resumable grain iterator whose first batch is global step `start_step`.

  The state ({'next_index': step}) counts global steps, so it is valid for any start_step.
  """
  options = grain.ReadOptions(num_threads=max(int(num_threads), 0),
                              prefetch_buffer_size=max(int(prefetch), 0))
  it = iter(dataset.to_iter_dataset(options))
  if start_step:
    it.set_state({'next_index': int(start_step)})
  return it


# ----------------------------------------------------------------------------- evaluation


def _eval_side(data, what: str):
  """(source, candidate indices) for the evaluation images of one side."""
  spec = data.source(f'eval_{what}')
  if spec:
    return open_source(spec, data, f'eval_{what}'), None
  source, _, hold = _train_and_holdout(data, what)
  return source, hold


def eval_pairs(data, skip_log: SkipLog | None = None) -> dict[str, Any]:
  """The fixed evaluation pairs of a settings.DataSpec: N = data.num_pairs (content, style) crops and names.

  An unreadable image is replaced by the next readable one of the same side (recorded in `skip_log`).
  """
  n = data.num_pairs
  if n <= 0:
    raise UserError(f'config.eval.num_pairs={n} must be positive to evaluate: set it to e.g. 8.')
  content, c_idx = _eval_side(data, 'content')
  style, s_idx = _eval_side(data, 'style')
  c_idx = np.arange(len(content)) if c_idx is None else c_idx
  s_idx = np.arange(len(style)) if s_idx is None else s_idx
  rng = _rng(data.seed, _PAIRS)
  perm_c, perm_s = rng.permutation(c_idx), rng.permutation(s_idx)
  nc, ns = len(perm_c), len(perm_s)
  # Pair k walks the (content, style) grid diagonal by diagonal: pairs stay distinct while
  # k < nc * ns, and each image is used as evenly as possible.
  d, a = np.divmod(np.arange(n) % (nc * ns), nc)
  ci, si = perm_c[a], perm_s[(a + d) % ns]
  load, crop = int(data.load_size), int(data.crop_size)
  skip_log = SkipLog() if skip_log is None else skip_log
  field = lambda w: f'eval_{w}' if data.source(f'eval_{w}') else w
  readable = (_Readable(content, c_idx, field('content'), skip_log), _Readable(style, s_idx, field('style'), skip_log))
  cache: dict[tuple[int, int], tuple[int, np.ndarray]] = {}

  def get(side, i, k):
    if (side, i) not in cache:
      cache[(side, i)] = readable[side].load_resized(int(i), load)
    used, img = cache[(side, i)]
    # The first use of a (content, style) combination is center-cropped; a repeat (more pairs than combinations)
    # gets its own crops at positions fixed by (seed, k), so no two pairs are the same images.
    corner = None
    if k >= nc * ns:
      corner = tuple(int(v) for v in _rng(data.seed, _PAIRS, k, side).integers(0, load - crop + 1, size=2))
    return used, preprocess_eval(img, load, crop, corner)

  pairs = [(get(0, a, k), get(1, b, k)) for k, (a, b) in enumerate(zip(ci, si))]
  return {
      'content': np.stack([c[1] for c, _ in pairs]),
      'style': np.stack([s[1] for _, s in pairs]),
      'names': [f'{content.name(c[0])}__{style.name(s[0])}' for c, s in pairs],
  }
