"""jaxtickets.data.load_image on large files (reduced decoding, PIL's decompression-bomb limits) and TIFF."""

import warnings

import numpy as np
import pytest
from PIL import Image

from jaxtickets import config as config_lib, data
from jaxtickets.data import images, sources

NEED = 64  # the size the pipeline resizes to (config.data.load_size)


def _smooth(w, h, seed=0):
  """A smooth colour field (random 6x4 colours upscaled bicubically) with a little noise: cheap at any size."""
  rng = np.random.default_rng(seed)
  small = Image.fromarray(rng.integers(30, 226, (4, 6, 3), dtype=np.uint8))
  arr = np.asarray(small.resize((w, h), Image.Resampling.BICUBIC), dtype=np.int16)
  return np.clip(arr + rng.integers(-3, 4, arr.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope='module')
def large(tmp_path_factory):
  """A 3000x2000 image (6 M pixels, over images.REDUCE_FROM_PIXELS) as PNG and JPEG."""
  folder = tmp_path_factory.mktemp('large')
  arr = _smooth(3000, 2000)
  paths = {'png': str(folder / 'big.png'), 'jpg': str(folder / 'big.jpg')}
  Image.fromarray(arr).save(paths['png'], compress_level=1)
  Image.fromarray(arr).save(paths['jpg'], quality=95)
  return paths


@pytest.mark.parametrize('fmt,expected', [('png', (134, 200)), ('jpg', (250, 375))])
def test_a_large_image_is_decoded_reduced_and_resizes_like_a_full_decode(large, fmt, expected):
  reduced = data.load_image(large[fmt], min_size=NEED)
  # PNG: an integer factor of 15 keeps the short side >= 2 x 64; JPEG: libjpeg's 1/8 scale, the smallest it has.
  assert reduced.shape == expected + (3,) and min(reduced.shape[:2]) >= images.REDUCE_MARGIN * NEED
  full = data.load_image(large[fmt])
  assert full.shape == (2000, 3000, 3)
  diff = np.abs(images._resize(reduced, NEED).astype(int) - images._resize(full, NEED).astype(int))
  assert diff.mean() < 1.0 and diff.max() <= 8


def test_images_under_the_floor_keep_every_pixel(tmp_path):
  arr = _smooth(300, 200, seed=1)
  path = str(tmp_path / 'small.png')
  Image.fromarray(arr).save(path)
  np.testing.assert_array_equal(data.load_image(path, min_size=8), arr)  # 1/37 of it would do, still whole


def _mode_image(mode, w=96, h=64):
  """An image of `mode` whose colours vary smoothly, so a box average and a full decode agree."""
  rgb = Image.fromarray(_smooth(w, h, seed=2))
  if mode == 'P+transparency':
    img = rgb.convert('P', palette=Image.Palette.ADAPTIVE, colors=16)
    img.info['transparency'] = 0
    return img, {'transparency': 0}
  if mode == 'I;16':
    gray = np.asarray(rgb.convert('L'), np.uint16) * 257
    return Image.fromarray(gray), {}  # uint16: mode I;16
  if mode == 'LA':
    la = rgb.convert('LA')
    alpha = np.tile(np.linspace(0, 255, w, dtype=np.uint8), (h, 1))
    la.putalpha(Image.fromarray(alpha))
    return la, {}
  return rgb.convert(mode), {}


@pytest.mark.parametrize('mode', ['P+transparency', 'LA', 'I;16', '1', 'L', 'RGBA'])
def test_reduction_in_every_mode_matches_a_full_decode(tmp_path, monkeypatch, mode):
  """Palette indices, colour keys and 16-bit values are widened before averaging, not averaged as they are."""
  monkeypatch.setattr(images, 'REDUCE_FROM_PIXELS', 0)  # small files, so that each mode is cheap to check
  img, kwargs = _mode_image(mode)
  path = str(tmp_path / 'm.png')
  img.save(path, **kwargs)
  reduced = data.load_image(path, min_size=8)
  assert reduced.shape == (16, 24, 3)  # factor 4 keeps the short side at 2 x 8
  full = data.load_image(path)
  diff = np.abs(images._resize(reduced, 8).astype(int) - images._resize(full, 8).astype(int))
  tolerance = 40 if mode == '1' else 4  # 1-bit: dithered, so the two averages see different dots
  assert diff.mean() < tolerance / 4 and diff.max() <= tolerance


@pytest.mark.parametrize('ext', ['.tif', '.tiff'])
def test_tiff_is_listed_and_read(tmp_path, ext):
  arr = _smooth(40, 30, seed=3)
  path = str(tmp_path / f'photo{ext}')
  Image.fromarray(arr).save(path, compression='tiff_lzw')
  assert data.list_images(str(tmp_path)) == [path]
  np.testing.assert_array_equal(data.load_image(path), arr)


def test_decompression_bomb_warning_and_limit_name_the_file(tmp_path, monkeypatch, capsys):
  monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', 1000)  # PIL warns over 1,000 pixels and refuses over 2,000
  monkeypatch.setattr(images, '_WARNED_LARGE', set())
  images.silence_pil_bomb_warning()  # as on import (pytest resets the warning filters for each test)
  large = str(tmp_path / 'large.png')
  bomb = str(tmp_path / 'bomb.png')
  Image.new('RGB', (40, 40), (9, 9, 9)).save(large)
  Image.new('RGB', (50, 50), (9, 9, 9)).save(bomb)

  with warnings.catch_warnings(record=True) as caught:
    assert data.load_image(large).shape == (40, 40, 3)
    data.load_image(large)
  assert not [w for w in caught if w.category is Image.DecompressionBombWarning]  # PIL's, naming no file
  err = capsys.readouterr().err
  assert err.count(f"the image '{large}' is 40x40 (1,600 pixels") == 1  # once per file

  with pytest.raises(data.BadImage, match="bomb.png' has 2,500 pixels, over PIL's decompression-bomb limit of 2,000"):
    data.load_image(bomb)
  # In a source, the file is skipped by name like any other unreadable image.
  src = data.ImageSource([bomb, large], 'style', min_size=8)
  messages = []
  used, img = sources._Readable(src, np.arange(2), 'style', data.SkipLog(messages.append)).load(0)
  assert used == 1 and img.shape == (40, 40, 3)
  assert len(messages) == 1 and f"'{bomb}' (2,500 pixels, over" in messages[0]


def test_open_source_decodes_for_the_configs_load_size(tmp_path):
  Image.new('RGB', (8, 8)).save(tmp_path / 'a.png')
  cfg = config_lib.default_config()
  cfg.data.load_size = 48
  assert data.open_source(str(tmp_path), config_lib.resolve(cfg).data, 'content').min_size == 48
