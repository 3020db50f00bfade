"""Image sources (folders, scikit-image samples, TFDS array_record) and the grain training pipeline.

Training element i is global step i and a pure function of (the data settings, i): content and style are
drawn from independent seeded shuffles (repeated forever) and cropped with an RNG seeded from
(seed, global sample index), so restarting, resuming and changing the process count all see the
same global batches.

Images in any PIL mode are converted to 8-bit RGB: EXIF orientation applied, palette/CMYK/grayscale
expanded, 16-bit scaled to 0..255, transparency composited on white; any size is resized to
load_size. A file that cannot be decoded (corrupt, truncated, empty, not an image) is skipped: the
next readable image of the same split (by index, cyclically) takes its place, which depends only on
the files, so the dataset stays deterministic and random-access. Skips are counted in a `SkipLog`.
A large file is decoded at reduced size (see `load_image` for the memory it takes).
"""

from __future__ import annotations

import collections
import hashlib
import io
import os
import re
import sys
import threading
import warnings
from typing import Any, Sequence

import grain
import numpy as np
from PIL import Image, ImageOps

from jaxtickets import storage
from jaxtickets.errors import UserError

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.webp', '.bmp', '.tif', '.tiff')

# Files inside the installed scikit-image wheel (no pooch, no network).
DEMO_IMAGES = {
    'content': ('astronaut.png', 'chelsea.png', 'coffee.png', 'rocket.jpg'),
    'style': ('brick.png', 'grass.png', 'gravel.png', 'hubble_deep_field.jpg', 'ihc.png'),
    'eval_content': ('motorcycle_left.png', 'camera.png', 'coins.png', 'page.png'),
    'eval_style': ('retina.jpg', 'color.png', 'cell.png', 'microaneurysms.png'),
}

# Tags that keep the content, style and holdout random streams independent of each other.
_CONTENT, _STYLE, _HOLDOUT, _PAIRS = 0, 1, 2, 3


def _seed_int(*entropy: int) -> int:
  """A 32-bit seed derived from integers, for APIs that take a single int."""
  return int(np.random.SeedSequence([e % 2**63 for e in entropy]).generate_state(1)[0])


def _rng(*entropy: int) -> np.random.Generator:
  return np.random.default_rng([e % 2**63 for e in entropy])


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


def _local_or_fetched(name: str):
  """What PIL opens: a local path as it is, an object store's file read into memory first."""
  return io.BytesIO(storage.read_bytes(name)) if storage.is_url(name) else name


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


# ----------------------------------------------------------------------------- decoding


class BadImage(UserError):
  """A file that cannot be decoded as an image; `reason` says why in a few words."""

  def __init__(self, message: str, reason: str):
    super().__init__(message)
    self.reason = reason


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


def _to_rgb(img: Image.Image, sixteen_bit: bool = False) -> Image.Image:
  """Any PIL mode -> 8-bit RGB; transparency is composited on white. `sixteen_bit`: an 'I' image read from 16 bits."""
  if img.mode == 'RGB':
    return img
  if img.mode in ('I;16', 'I;16L', 'I;16B', 'I;16N', 'I', 'F'):
    arr = np.asarray(img).astype(np.float64)
    if img.mode == 'F':
      arr = arr * 255.0 if arr.max(initial=0.0) <= 1.0 else arr
    elif sixteen_bit or img.mode.startswith('I;16') or arr.max(initial=0.0) > 255:
      arr = arr / 257.0  # 16-bit range 0..65535 -> 0..255
    gray = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    return Image.fromarray(np.repeat(gray[..., None], 3, axis=-1))
  if img.mode == 'P':
    img = img.convert('RGBA' if 'transparency' in img.info else 'RGB')
  elif img.mode == 'L' and 'transparency' in img.info:
    img = img.convert('LA')
  if img.mode in ('RGBA', 'LA', 'PA', 'RGBa', 'La'):
    rgba = img.convert('RGBA')
    white = Image.new('RGBA', rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert('RGB')
  return img.convert('RGB')


# A large file is decoded at reduced size, keeping each side at least REDUCE_MARGIN x the size the pipeline asks
# for (load_size), so the final bilinear resize still averages over every pixel it drops (as PIL's own
# thumbnail does with its reducing_gap of 2). Files under REDUCE_FROM_PIXELS cost little to decode whole and keep
# exactly the pixels they always had (the demo's images, the studies' numbers).
REDUCE_MARGIN = 2
REDUCE_FROM_PIXELS = 4 * 1024 * 1024
_WARNED_LARGE: set[str] = set()  # files already named in a large-image warning (once per file and process)
_WARNED_LOCK = threading.Lock()


def silence_pil_bomb_warning() -> None:
  """PIL's own DecompressionBombWarning names no file; load_image says it with the file's name instead."""
  warnings.filterwarnings('ignore', category=Image.DecompressionBombWarning)


silence_pil_bomb_warning()


def reduction_factor(size: tuple[int, int], min_size: int | None) -> int:
  """The integer factor an image of `size` (w, h) may shrink by and keep both sides >= REDUCE_MARGIN * min_size
  (1 below REDUCE_FROM_PIXELS)."""
  if not min_size or size[0] * size[1] < REDUCE_FROM_PIXELS:
    return 1
  return max(1, min(size) // (REDUCE_MARGIN * int(min_size)))


def _reduce(img: Image.Image, factor: int) -> tuple[Image.Image, bool]:
  """(img shrunk by an integer factor with a box average, whether it was 16-bit), in a mode where averaging is
  right: palette indices and colour keys are widened to RGB(A) first (RGBA is averaged premultiplied)."""
  sixteen_bit = img.mode.startswith('I;16')
  if sixteen_bit:
    img = img.convert('I')  # Image.reduce has no 16-bit mode; 'I' keeps the values
  elif img.mode == 'PA' or (img.mode in ('P', 'L') and 'transparency' in img.info):
    img = img.convert('RGBA')
  elif img.mode in ('P', '1'):
    img = img.convert('RGB' if img.mode == 'P' else 'L')
  try:
    return img.reduce(factor), sixteen_bit
  except ValueError:  # a mode reduce does not know
    return _to_rgb(img, sixteen_bit).reduce(factor), False


def _warn_large(name: str, size: tuple[int, int]) -> None:
  """Names a file over PIL's decompression-bomb warning threshold, once per process."""
  with _WARNED_LOCK:
    if name in _WARNED_LARGE:
      return
    _WARNED_LARGE.add(name)
  w, h = size
  print(f"WARNING: the image '{name}' is {w}x{h} ({_pixels(w * h)} pixels, over PIL's decompression-bomb "
        f'threshold of {_pixels(Image.MAX_IMAGE_PIXELS)}); it is read at reduced size, and files over '
        f'{_pixels(2 * Image.MAX_IMAGE_PIXELS)} pixels are skipped.', file=sys.stderr, flush=True)


def _pixels(n: int) -> str:
  return f'{n / 1e6:.0f} M' if n >= 10**6 else f'{n:,}'


def _bomb_reason(e: Exception) -> str:
  pixels = re.search(r'\((\d+) pixels\)', str(e))
  got = f'{_pixels(int(pixels.group(1)))} pixels' if pixels else 'too many pixels'
  limit = _pixels(2 * (Image.MAX_IMAGE_PIXELS or 0))
  return f"{got}, over PIL's decompression-bomb limit of {limit} (2 x PIL.Image.MAX_IMAGE_PIXELS)"


def load_image(path_or_bytes: str | bytes | os.PathLike, min_size: int | None = None) -> np.ndarray:
  """Decodes a file (or encoded bytes) to uint8 HxWx3 RGB, EXIF-rotated, alpha on white.

  With `min_size`, a file of REDUCE_FROM_PIXELS or more and much larger than min_size is decoded at reduced size,
  each side kept at least REDUCE_MARGIN * min_size (the caller resizes it to min_size afterwards). Memory per
  decode: a JPEG is decoded straight at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling), about 3 bytes per pixel of
  that reduced image; any other format is decoded once at full size as stored (1-4 bytes per pixel; at most 6 while a palette or 16-bit
  image widens to a mode that can be averaged) and shrunk by an integer factor before anything else touches it.
  PIL's limit bounds the full size: a file over 2 x PIL.Image.MAX_IMAGE_PIXELS (179 M pixels) is refused as a bad
  image, so one decode holds at most about 1 GB. Measured for an 8000x6000 RGB file and min_size 512: PNG 0.2 GB
  peak (0.64 GB decoded whole), JPEG 0.04 GB. A file over MAX_IMAGE_PIXELS is named in a warning.
  """
  is_bytes = isinstance(path_or_bytes, (bytes, bytearray, memoryview))
  name = '<encoded bytes>' if is_bytes else os.fspath(path_or_bytes)
  try:
    with Image.open(io.BytesIO(bytes(path_or_bytes)) if is_bytes else _local_or_fetched(name)) as img:
      if Image.MAX_IMAGE_PIXELS and img.size[0] * img.size[1] > Image.MAX_IMAGE_PIXELS:
        _warn_large(name, img.size)
      if reduction_factor(img.size, min_size) >= 2:
        img.draft('RGB', (REDUCE_MARGIN * min_size, REDUCE_MARGIN * min_size))  # JPEG only; a no-op elsewhere
      img.load()
      sixteen_bit = False
      factor = reduction_factor(img.size, min_size)
      if factor >= 2:
        img, sixteen_bit = _reduce(img, factor)
      img = ImageOps.exif_transpose(img)
      arr = np.asarray(_to_rgb(img, sixteen_bit), dtype=np.uint8)
  except FileNotFoundError:
    raise BadImage(f"The image '{name}' does not exist: check the path.", 'missing') from None
  except Image.DecompressionBombError as e:
    reason = _bomb_reason(e)
    raise BadImage(f"The image '{name}' has {reason}: shrink the file, or raise PIL.Image.MAX_IMAGE_PIXELS if "
                   'you trust it.', reason) from None
  except Exception as e:  # pylint: disable=broad-except  (PIL raises many types for bad files)
    reason = f'{type(e).__name__}: {e}' if str(e) else type(e).__name__
    raise BadImage(
        f"The image '{name}' could not be read ({reason}): delete or replace the file.", reason) from None
  if arr.ndim != 3 or arr.shape[-1] != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
    raise BadImage(f"The image '{name}' decoded to shape {arr.shape}: replace the file.",
                   f'decoded to shape {arr.shape}')
  return arr


# ----------------------------------------------------------------------------- preprocessing


def _check_sizes(load_size: int, crop_size: int) -> None:
  if not 0 < crop_size <= load_size:
    raise UserError(
        f'config.data.crop_size={crop_size} must be positive and at most'
        f' config.data.load_size={load_size}: change one of them.')


def _resize(img: np.ndarray, load_size: int) -> np.ndarray:
  """Resize to load_size x load_size with PIL bilinear, like torchvision Resize((L, L)) on PIL."""
  if img.shape[:2] == (load_size, load_size):
    return img
  pil = Image.fromarray(np.asarray(img, dtype=np.uint8))
  return np.asarray(pil.resize((load_size, load_size), Image.Resampling.BILINEAR))


def _to_float(img: np.ndarray) -> np.ndarray:
  return np.asarray(img, dtype=np.float32) / np.float32(255.0)


def preprocess_train(img: np.ndarray, rng: np.random.Generator, load_size: int,
                     crop_size: int) -> np.ndarray:
  """Resize (aspect ratio not kept) then a random crop; float32 HxWx3 in [0, 1]."""
  _check_sizes(load_size, crop_size)
  img = _resize(img, load_size)
  top = int(rng.integers(0, load_size - crop_size + 1))
  left = int(rng.integers(0, load_size - crop_size + 1))
  return _to_float(img[top:top + crop_size, left:left + crop_size])


def preprocess_eval(img: np.ndarray, load_size: int, crop_size: int,
                    corner: tuple[int, int] | None = None) -> np.ndarray:
  """Resize (aspect ratio not kept) then a center crop, or the crop at `corner` (top, left); float32 HxWx3 in [0, 1]."""
  _check_sizes(load_size, crop_size)
  img = _resize(img, load_size)
  # Same rounding as torchvision CenterCrop.
  top = left = int(round((load_size - crop_size) / 2.0))
  if corner is not None:
    top, left = corner
  return _to_float(img[top:top + crop_size, left:left + crop_size])


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
