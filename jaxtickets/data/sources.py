"""Where images come from: folders (on disk or gs://), the demo's scikit-image samples, TFDS array_record splits.

A source is random access over uint8 RGB images. An unreadable file is skipped: the next readable image of the same
split (by index, cyclically) takes its place (`_Readable`), which depends only on the files, so the dataset stays
deterministic and random-access. Skips are counted in a `SkipLog`. Hosts of a pod check that they list the same files
(`check_listings_agree`).
"""

from __future__ import annotations

import collections
import hashlib
import os
import re
import sys
import threading
from typing import Any, Sequence

import grain
import numpy as np
from PIL import Image

from jaxtickets import storage
from jaxtickets.data.images import BadImage, _resize, _to_rgb, load_image
from jaxtickets.errors import UserError

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.webp', '.bmp', '.tif', '.tiff')

# Files inside the installed scikit-image wheel (no pooch, no network).
DEMO_IMAGES = {
    'content': ('astronaut.png', 'chelsea.png', 'coffee.png', 'rocket.jpg'),
    'style': ('brick.png', 'grass.png', 'gravel.png', 'hubble_deep_field.jpg', 'ihc.png'),
    'eval_content': ('motorcycle_left.png', 'camera.png', 'coins.png', 'page.png'),
    'eval_style': ('retina.jpg', 'color.png', 'cell.png', 'microaneurysms.png'),
}


class BoundedCache:
  """A thread-safe least-recently-used map holding at most `max_bytes` of values (the data threads share it)."""

  def __init__(self, max_bytes: int):
    self.max_bytes = max_bytes
    self._items: collections.OrderedDict = collections.OrderedDict()  # key -> (value, nbytes), oldest first
    self._bytes = 0
    self._lock = threading.Lock()

  def get(self, key):
    with self._lock:
      found = self._items.get(key)
      if found is None:
        return None
      self._items.move_to_end(key)
      return found[0]

  def put(self, key, value, nbytes: int) -> None:
    if nbytes > self.max_bytes:
      return
    with self._lock:
      if key in self._items:
        return
      self._items[key] = (value, nbytes)
      self._bytes += nbytes
      while self._bytes > self.max_bytes:
        _, (_, dropped) = self._items.popitem(last=False)
        self._bytes -= dropped


# Image files decoded and resized to load_size, per process: a small source (the demo, a folder of a few styles)
# is then decoded once instead of at every sample, where decoding and resizing would cost as much as a small
# model's train step.
# Keyed by the file's path, modification time and size, so a replaced file is read again.
_RESIZED = BoundedCache(max_bytes=256 << 20)


# ----------------------------------------------------------------------------- listing


def list_images(folder: str, what: str = 'content') -> list[str]:
  """All image files under `folder` (recursive; a local folder or a gs:// prefix), sorted, matched by extension."""
  storage.check_reachable(folder, f'config.data.{what} folder')
  if not storage.isdir(folder):
    raise UserError(
        f"The {what} folder '{folder}' does not exist: set config.data.{what} to a folder of"
        ' images, or run configs/adain.py:demo.')
  paths = [p for p in storage.walk_files(folder)
           if p.lower().endswith(IMAGE_EXTENSIONS) and not os.path.basename(p).startswith('.')]
  if not paths:
    raise UserError(
        f"The {what} folder '{folder}' has no images (looked recursively for"
        f" {', '.join(IMAGE_EXTENSIONS)}): put images there or point config.data.{what} elsewhere.")
  return sorted(paths)


def _listing_digests(paths: Sequence[str], folder: str) -> np.ndarray:
  """Each file's name relative to `folder`, hashed to an int32: what two hosts compare of their listings."""
  root = folder.rstrip('/' if storage.is_url(folder) else os.sep)
  rel = [p[len(root):].lstrip('/' + os.sep) for p in paths]
  return np.array([int.from_bytes(hashlib.sha256(r.encode()).digest()[:4], 'little', signed=True) for r in rel],
                  np.int32)


def first_listing_difference(listings: np.ndarray, counts: np.ndarray) -> tuple[int, int] | None:
  """(process, file index) of the first listing that differs from process 0's, and where (rows: each process's
  digests, padded; counts: each row's real length); None when every process lists the same files."""
  n = int(counts[0])
  for process, (row, count) in enumerate(zip(listings, counts)):
    common = min(n, int(count))
    differs = np.flatnonzero(row[:common] != listings[0, :common])
    if differs.size:
      return process, int(differs[0])
    if int(count) != n:
      return process, common
  return None


def check_listings_agree(data) -> None:
  """In a multi-process run, every process lists the same image files for each folder source, or the run stops
  naming the first file that differs (a partly copied dataset would silently give hosts different images).
  `data` is the run's settings.DataSpec.

  Collective: every process calls it at the same point.
  """
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_count() == 1:
    return
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  for what in ('content', 'style', 'eval_content', 'eval_style'):
    spec = data.source(what)
    if not spec or spec == 'demo' or spec.startswith('tfds:'):
      continue
    paths = list_images(spec, what)
    digests = _listing_digests(paths, spec)
    counts = np.asarray(multihost_utils.process_allgather(np.int32(len(digests))))
    padded = np.zeros(int(counts.max()), np.int32)
    padded[:len(digests)] = digests
    listings = np.asarray(multihost_utils.process_allgather(padded))
    found = first_listing_difference(listings, counts)
    if found is None:
      continue
    other, first = found
    mine = f"'{paths[first]}'" if first < len(paths) else f'past the end (it lists {len(paths)} files)'
    raise UserError(
        f"The hosts see different files in config.data.{what}='{spec}': process 0 and process {other} differ from "
        f'file {first} of the sorted listing on (here, on process {jax.process_index()}, that file is {mine}); copy '
        'the same data to every host or use one gs:// folder.')


def demo_images(kind: str) -> list[str]:
  """Paths of the scikit-image sample images used by the demo: kind is content/style/eval_*."""
  if kind not in DEMO_IMAGES:
    raise UserError(f"Unknown demo image kind '{kind}': use one of {', '.join(DEMO_IMAGES)}.")
  import skimage.data  # pylint: disable=g-import-not-at-top  (only the demo needs it)
  folder = os.path.dirname(skimage.data.__file__)
  paths = [os.path.join(folder, name) for name in DEMO_IMAGES[kind]]
  missing = [p for p in paths if not os.path.isfile(p)]
  if missing:
    raise UserError(f"The demo image '{missing[0]}' is missing: reinstall scikit-image.")
  return paths


class SkipLog:
  """The unreadable images skipped so far (shared by the data threads): counted, the first few logged."""

  SHOWN = 5

  def __init__(self, log=None):
    self._lock = threading.Lock()
    self._skipped: dict[str, str] = {}  # file (or record) -> reason, in the order found
    self._log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))

  def add(self, what: str, name: str, reason: str) -> None:
    with self._lock:
      if name in self._skipped:
        return
      self._skipped[name] = reason
      n = len(self._skipped)
    if n <= self.SHOWN:
      self._log(f"WARNING: skipping the unreadable {what} image '{name}' ({reason}); the next readable image "
                f'takes its place ({n} skipped so far).')
    elif n == self.SHOWN + 1:
      self._log('WARNING: more unreadable images are being skipped; the count and the first paths go to '
                'summary.json.')

  def merge(self, summary: dict) -> None:
    """Adds the skips a previous (interrupted) run recorded, so a resumed run reports them all."""
    with self._lock:
      for name, reason in (summary or {}).get('files', {}).items():
        self._skipped.setdefault(name, reason)

  def __len__(self) -> int:
    return len(self._skipped)

  def summary(self, first: int = 10) -> dict:
    """{'count': n, 'first': [the first paths], 'files': {path: reason}} for summary.json."""
    with self._lock:
      items = dict(self._skipped)
    return {'count': len(items), 'first': list(items)[:first], 'files': items}


# ----------------------------------------------------------------------------- sources


class ImageSource(grain.sources.RandomAccessDataSource):
  """Random access over a list of image files; items are uint8 HxWx3 RGB arrays."""

  def __init__(self, paths: Sequence[str], what: str = 'images', where: str | None = None,
               min_size: int | None = None):
    self._paths = list(paths)
    self._what = what
    self.min_size = min_size  # large files are decoded at reduced size, keeping this much (load_image)
    self.where = f"the {what} folder '{where}'" if where else f'the {len(self._paths)} {what} images'

  def __len__(self) -> int:
    return len(self._paths)

  def __getitem__(self, index) -> np.ndarray:
    return load_image(self._paths[int(index)], self.min_size)

  def cache_key(self, index: int) -> tuple | None:
    """The file's identity (path, modification time, size) for _RESIZED; None if it cannot be read."""
    path = self._paths[int(index)]
    if storage.is_url(path):
      return (path,)  # a stat per sample would cost a round trip to the store; a run's data do not change
    try:
      st = os.stat(path)
    except OSError:
      return None
    return (path, st.st_mtime_ns, st.st_size)

  def name(self, index: int) -> str:
    """A short human-readable name of item `index` (the file stem)."""
    return os.path.splitext(os.path.basename(self._paths[int(index)]))[0]

  def describe(self, index: int) -> str:
    """Where item `index` comes from, for warnings (the file path)."""
    return self._paths[int(index)]

  @property
  def paths(self) -> list[str]:
    return list(self._paths)

  def __repr__(self) -> str:
    first = f', first={self._paths[0]!r}' if self._paths else ''
    return f'ImageSource({self._what}, {len(self)} images{first})'


def _image_from_feature(value: Any, where: str) -> np.ndarray:
  """A TFDS image feature (decoded array or encoded bytes) -> uint8 HxWx3 RGB."""
  if isinstance(value, (bytes, bytearray, memoryview)):
    return load_image(bytes(value))
  arr = np.asarray(value)
  if arr.dtype.kind in ('S', 'O') and arr.ndim == 0:
    return load_image(arr.item())
  if arr.ndim == 2:
    arr = arr[..., None]
  if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4):
    raise UserError(f'The image in {where} has shape {arr.shape}: expected HxWx(1|3|4).')
  if arr.dtype == np.uint16:
    arr = np.rint(arr / 257.0)
  arr = np.clip(arr, 0, 255).astype(np.uint8)
  if arr.shape[-1] == 1:
    return np.repeat(arr, 3, axis=-1)
  if arr.shape[-1] == 4:
    return np.asarray(_to_rgb(Image.fromarray(arr)))
  return arr


class TfdsImageSource(grain.sources.RandomAccessDataSource):
  """Random access over a prepared TFDS (array_record) split; items are uint8 HxWx3 RGB."""

  def __init__(self, name: str, split: str, data_dir: str | None = None, image_key: str = 'image'):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  (slow, optional)
    self._name, self._split, self._key = name, split, image_key
    self._source = tfds.data_source(name, split=split, data_dir=data_dir)
    self.where = f'tfds:{name}:{split}'

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index) -> np.ndarray:
    record = self._source[int(index)]
    if self._key not in record:
      raise UserError(
          f"TFDS dataset '{self._name}' has no image feature '{self._key}' (it has"
          f" {', '.join(sorted(record))}): set config.data.tfds_image_key.")
    return _image_from_feature(record[self._key], f'tfds:{self._name}:{self._split}[{index}]')

  def name(self, index: int) -> str:
    return f'{self._name.replace("/", "_")}_{self._split}_{int(index)}'

  def describe(self, index: int) -> str:
    return f'tfds:{self._name}:{self._split}[{int(index)}]'

  def __repr__(self) -> str:
    return f'TfdsImageSource(tfds:{self._name}:{self._split}, {len(self)} images)'


def _open_tfds(spec: str, data, what: str) -> TfdsImageSource:
  """Opens 'tfds:NAME:SPLIT' with tfds.data_source (array_record, no TensorFlow)."""
  # NAME may carry a version ('coco/2017:1.1.0'); SPLIT may hold colons ('train[:50%]').
  match = re.fullmatch(r'([^:]+(?::[0-9.*]+)?):(.+)', spec[len('tfds:'):])
  if not match:
    raise UserError(
        f"config.data.{what}='{spec}' is not a TFDS spec: write it as 'tfds:NAME:SPLIT', e.g."
        " 'tfds:coco/2017:train'.")
  name, split = match.groups()
  data_dir = data.tfds_data_dir or None
  key = data.tfds_image_key or 'image'
  try:
    source = TfdsImageSource(name, split, data_dir=data_dir, image_key=key)
  except Exception as e:  # pylint: disable=broad-except  (tfds raises many types)
    reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
    raise UserError(
        f"config.data.{what}='{spec}' could not be opened ({type(e).__name__}: {reason}): prepare"
        f" it in array_record format with `tfds build {name} --file_format=array_record"
        " --data_dir=DIR` and set config.data.tfds_data_dir=DIR.") from None
  if len(source) == 0:
    raise UserError(f"config.data.{what}='{spec}' has no records: choose another split.")
  source[0]  # pylint: disable=pointless-statement  (fail now on a wrong image key)
  return source


def open_source(spec: str, data, what: str) -> grain.sources.RandomAccessDataSource:
  """Opens a source spec: a folder path, 'demo', or 'tfds:NAME:SPLIT' (with the settings.DataSpec `data`'s TFDS
  settings and load size)."""
  spec = (spec or '').strip()
  if not spec:
    raise UserError(
        f"config.data.{what} is not set: give a folder of images, 'demo' or 'tfds:NAME:SPLIT'.")
  if spec == 'demo':
    return ImageSource(demo_images(what), what, where='demo', min_size=data.load_size)
  if spec.startswith('tfds:'):
    return _open_tfds(spec, data, what)
  scheme = re.match(r'^([A-Za-z][A-Za-z0-9+.-]+):', spec)
  if scheme and not storage.is_url(spec) and not os.path.exists(spec):
    raise UserError(
        f"config.data.{what}='{spec}' has the unknown scheme '{scheme.group(1)}:': use a local"
        " folder, a gs:// folder, 'demo' or 'tfds:NAME:SPLIT'.")
  return ImageSource(list_images(spec, what), what, where=spec, min_size=data.load_size)


class _Readable:
  """Source index i of `indices`, or the next readable one after it (cyclically) when i's image is unreadable.

  The substitute depends only on the files, so the dataset stays a deterministic, random-access function.
  """

  def __init__(self, source, indices, what: str, skip_log: SkipLog):
    self.source, self.what, self.skip_log = source, what, skip_log
    self.indices = np.sort(np.asarray(indices, dtype=np.int64))
    self._bad: set[int] = set()  # known unreadable source indices (never decoded twice)

  def load(self, index: int) -> tuple[int, np.ndarray]:
    """(the source index used, its uint8 RGB image)."""
    n = len(self.indices)
    pos = int(np.searchsorted(self.indices, int(index)))
    first = None
    for t in range(n):
      cand = int(self.indices[(pos + t) % n])
      if cand in self._bad:
        continue
      try:
        return cand, self.source[cand]
      except BadImage as e:
        self._bad.add(cand)
        name = self.source.describe(cand) if hasattr(self.source, 'describe') else str(cand)
        first = first or f"'{name}': {e.reason}"
        self.skip_log.add(self.what, name, e.reason)
    where = getattr(self.source, 'where', repr(self.source))
    raise UserError(f'Every one of the {n} {self.what} images of {where} is unreadable (e.g. {first}): replace '
                    f'the files or point config.data.{self.what} at another source.')

  def load_resized(self, index: int, load_size: int) -> tuple[int, np.ndarray]:
    """load(index) with the image resized to load_size x load_size (read-only; kept in _RESIZED for files)."""
    key = self.source.cache_key(index) if hasattr(self.source, 'cache_key') else None
    if key is not None:
      found = _RESIZED.get((key, load_size))
      if found is not None:
        return int(index), found
    used, img = self.load(index)
    img = _resize(img, load_size)
    img.flags.writeable = False
    if key is not None and used == index:
      _RESIZED.put((key, load_size), img, img.nbytes)
    return used, img

  def __getitem__(self, index) -> np.ndarray:
    return self.load(index)[1]
