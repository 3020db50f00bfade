"""Decoding and cutting images: any file PIL opens becomes 8-bit RGB, resized and cropped for the pipeline.

Images in any PIL mode are converted to 8-bit RGB: EXIF orientation applied, palette/CMYK/grayscale expanded,
16-bit scaled to 0..255, transparency composited on white; any size is resized to load_size. A file that cannot be
decoded (corrupt, truncated, empty, not an image) raises `BadImage`, which the sources turn into a skip. A large
file is decoded at reduced size (see `load_image` for the memory it takes).
"""

from __future__ import annotations

import io
import re
import sys
import os
import threading
import warnings

import numpy as np
from PIL import Image, ImageOps

from jaxtickets import storage
from jaxtickets.errors import UserError


class BadImage(UserError):
  """A file that cannot be decoded as an image; `reason` says why in a few words."""

  def __init__(self, message: str, reason: str):
    super().__init__(message)
    self.reason = reason


def _local_or_fetched(name: str):
  """What PIL opens: a local path as it is, an object store's file read into memory first."""
  return io.BytesIO(storage.read_bytes(name)) if storage.is_url(name) else name


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
  that reduced image; any other format is decoded once at full size as stored (1-4 bytes per pixel; at most 6 while
  a palette or 16-bit image widens to a mode that can be averaged) and shrunk by an integer factor before anything
  else touches it.
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
