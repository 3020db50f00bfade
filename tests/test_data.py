"""Tests for jaxtickets.data: listing, decoding, preprocessing, the grain pipeline, TFDS."""

import dataclasses
import os
import tempfile

import numpy as np
import pytest
from PIL import Image

from jaxtickets import data, settings
from jaxtickets.data import images, pipeline, sources
from jaxtickets.errors import UserError


def _save(path, arr_or_img, **kwargs):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  img = arr_or_img if isinstance(arr_or_img, Image.Image) else Image.fromarray(arr_or_img)
  img.save(path, **kwargs)
  return str(path)


def _constant_folder(folder, colours, size=(24, 20)):
  """One constant-colour PNG per colour; returns the folder."""
  for k, colour in enumerate(colours):
    _save(os.path.join(folder, f'img{k:02d}.png'), Image.new('RGB', size, tuple(colour)))
  return str(folder)


def _noise_folder(folder, n, seed):
  rng = np.random.default_rng(seed)
  for k in range(n):
    size = (int(rng.integers(16, 40)), int(rng.integers(16, 40)))
    _save(os.path.join(folder, f'n{k}.png'), rng.integers(0, 256, size + (3,), dtype=np.uint8))
  return str(folder)


def _config(content, style, seed=0, num_pairs=2, eval_content='', eval_style='', load=16,
            crop=8):
  """The data settings (settings.DataSpec) the functions under test take."""
  return settings.DataSpec(content=content, style=style, eval_content=eval_content, eval_style=eval_style,
                           tfds_data_dir='', tfds_image_key='image', load_size=load, crop_size=crop,
                           num_threads=2, prefetch=2, num_pairs=num_pairs, seed=seed)


# ----------------------------------------------------------------------------- list_images


def test_list_images_recursive_and_by_extension(tmp_path):
  tiny = np.zeros((4, 4, 3), np.uint8)
  expected = [
      _save(tmp_path / 'a.jpg', tiny), _save(tmp_path / 'b.PNG', tiny, format='PNG'),
      _save(tmp_path / 'sub' / 'c.webp', tiny), _save(tmp_path / 'sub' / 'deep' / 'd.bmp', tiny),
      _save(tmp_path / 'sub' / 'E.JPEG', tiny, format='JPEG'),
  ]
  (tmp_path / 'notes.txt').write_text('not an image')
  (tmp_path / 'sub' / 'x.gif').write_bytes(b'GIF89a')
  assert data.list_images(str(tmp_path)) == sorted(expected)


def test_list_images_missing_and_empty_folder(tmp_path):
  missing = str(tmp_path / 'nope')
  with pytest.raises(UserError, match='nope') as e:
    data.list_images(missing, 'style')
  assert 'config.data.style' in str(e.value)
  (tmp_path / 'empty' / 'sub').mkdir(parents=True)
  (tmp_path / 'empty' / 'sub' / 'readme.txt').write_text('x')
  with pytest.raises(UserError, match='empty') as e:
    data.list_images(str(tmp_path / 'empty'))
  assert '.png' in str(e.value)


# ----------------------------------------------------------------------------- load_image


def _check_rgb(arr, shape):
  assert arr.dtype == np.uint8 and arr.shape == shape + (3,)


def test_load_grayscale_and_16bit(tmp_path):
  gray = np.arange(20 * 16, dtype=np.uint8).reshape(20, 16)
  out = data.load_image(_save(tmp_path / 'g.png', gray))
  _check_rgb(out, (20, 16))
  np.testing.assert_array_equal(out, np.repeat(gray[..., None], 3, -1))
  deep = (np.arange(20 * 16).reshape(20, 16) % 256 * 257).astype(np.uint16)
  path = _save(tmp_path / 'g16.png', deep)
  assert Image.open(path).mode.startswith('I')
  out = data.load_image(path)
  _check_rgb(out, (20, 16))
  np.testing.assert_array_equal(out[..., 1], deep // 257)


def test_load_rgba_composites_on_white(tmp_path):
  rgba = np.zeros((16, 16, 4), np.uint8)
  rgba[..., :3] = (200, 40, 0)
  rgba[:, :8, 3] = 255
  rgba[:, 8:, 3] = 0
  rgba[0, 0, 3] = 128
  out = data.load_image(_save(tmp_path / 'a.png', rgba))
  _check_rgb(out, (16, 16))
  np.testing.assert_array_equal(out[1, 1], (200, 40, 0))
  np.testing.assert_array_equal(out[1, 12], (255, 255, 255))
  np.testing.assert_allclose(out[0, 0], (228, 148, 128), atol=1)  # ~ (c*128 + 255*127) / 255


def test_load_palette_and_cmyk(tmp_path):
  pal = Image.new('P', (16, 12))
  pal.putpalette([10, 20, 30, 250, 0, 0] + [0] * 762)
  pal.putpixel((3, 2), 1)
  out = data.load_image(_save(tmp_path / 'p.png', pal))
  _check_rgb(out, (12, 16))
  np.testing.assert_array_equal(out[0, 0], (10, 20, 30))
  np.testing.assert_array_equal(out[2, 3], (250, 0, 0))
  pal.info['transparency'] = 0
  out = data.load_image(_save(tmp_path / 'pt.png', pal, transparency=0))
  np.testing.assert_array_equal(out[0, 0], (255, 255, 255))
  cmyk = Image.new('CMYK', (16, 12), (0, 255, 255, 0))  # pure red
  out = data.load_image(_save(tmp_path / 'c.jpg', cmyk, quality=100))
  _check_rgb(out, (12, 16))
  np.testing.assert_allclose(out[6, 8], (255, 0, 0), atol=3)


def test_load_applies_exif_orientation(tmp_path):
  rng = np.random.default_rng(0)
  arr = rng.integers(0, 256, (12, 20, 3), dtype=np.uint8)
  exif = Image.Exif()
  exif[0x0112] = 6  # Orientation: the stored image must be turned 90 degrees clockwise
  out = data.load_image(_save(tmp_path / 'r.png', arr, exif=exif))
  _check_rgb(out, (20, 12))
  np.testing.assert_array_equal(out, np.rot90(arr, k=-1))


def test_load_bytes_and_corrupt(tmp_path):
  arr = np.full((8, 8, 3), 77, np.uint8)
  path = _save(tmp_path / 'ok.png', arr)
  with open(path, 'rb') as f:
    np.testing.assert_array_equal(data.load_image(f.read()), arr)
  bad = tmp_path / 'bad.png'
  bad.write_bytes(b'\x89PNG\r\n\x1a\n this is not really a png')
  with pytest.raises(UserError, match='bad.png'):
    data.load_image(str(bad))
  truncated = tmp_path / 'cut.jpg'
  _save(truncated, np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
  truncated.write_bytes(truncated.read_bytes()[:300])
  with pytest.raises(UserError, match='cut.jpg'):
    data.load_image(str(truncated))


# ----------------------------------------------------------------------------- preprocess


def _quadrants(h, w):
  img = np.zeros((h, w, 3), np.uint8)
  img[:h // 2, :w // 2] = (255, 0, 0)
  img[:h // 2, w // 2:] = (0, 255, 0)
  img[h // 2:, :w // 2] = (0, 0, 255)
  img[h // 2:, w // 2:] = (255, 255, 255)
  return img


def test_preprocess_eval_resizes_then_center_crops():
  # 64 tall x 32 wide: the resize to 32x32 squashes it (aspect ratio not kept), so the quadrant
  # border lands at row/col 16; the center 16x16 crop covers rows/cols 8..23.
  out = data.preprocess_eval(_quadrants(64, 32), load_size=32, crop_size=16)
  assert out.dtype == np.float32 and out.shape == (16, 16, 3)
  assert out.min() >= 0.0 and out.max() <= 1.0
  np.testing.assert_array_equal(out[:6, :6], np.broadcast_to([1, 0, 0], (6, 6, 3)))
  np.testing.assert_array_equal(out[:6, 10:], np.broadcast_to([0, 1, 0], (6, 6, 3)))
  np.testing.assert_array_equal(out[10:, :6], np.broadcast_to([0, 0, 1], (6, 6, 3)))
  np.testing.assert_array_equal(out[10:, 10:], np.ones((6, 6, 3)))


def test_preprocess_train_is_a_window_of_the_resized_image():
  rng_img = np.random.default_rng(1)
  img = rng_img.integers(0, 256, (40, 24, 3), dtype=np.uint8)
  full = data.preprocess_eval(img, load_size=16, crop_size=16)
  offsets = set()
  for seed in range(20):
    out = data.preprocess_train(img, np.random.default_rng(seed), load_size=16, crop_size=8)
    assert out.dtype == np.float32 and out.shape == (8, 8, 3)
    hits = [(t, l) for t in range(9) for l in range(9)
            if np.array_equal(full[t:t + 8, l:l + 8], out)]
    assert hits
    offsets.add(hits[0])
  assert len(offsets) > 5  # the crop position is random


def test_preprocess_rejects_crop_larger_than_load():
  with pytest.raises(UserError, match='crop_size'):
    data.preprocess_eval(np.zeros((8, 8, 3), np.uint8), load_size=8, crop_size=16)


# ----------------------------------------------------------------------------- pipeline


@pytest.fixture
def noise_dirs(tmp_path):
  return _noise_folder(tmp_path / 'c', 7, 0), _noise_folder(tmp_path / 's', 6, 1)


def test_split_holdout():
  train, hold = data.split_holdout(10, 3, seed=5)
  assert len(hold) == 3 and sorted(np.concatenate([train, hold]).tolist()) == list(range(10))
  t2, h2 = data.split_holdout(10, 3, seed=5)
  np.testing.assert_array_equal(hold, h2)
  assert any(not np.array_equal(data.split_holdout(10, 3, s)[1], hold) for s in range(6, 10))
  with pytest.raises(UserError):
    data.split_holdout(3, 3, seed=0)


def test_train_dataset_deterministic_and_seeded(noise_dirs):
  a = data.make_train_dataset(_config(*noise_dirs, seed=3), global_batch_size=4)
  b = data.make_train_dataset(_config(*noise_dirs, seed=3), global_batch_size=4)
  c = data.make_train_dataset(_config(*noise_dirs, seed=4), global_batch_size=4)
  for i in (0, 5, 1000):
    x, y, z = a[i], b[i], c[i]
    assert x['content'].shape == (4, 8, 8, 3) and x['style'].shape == (4, 8, 8, 3)
    assert x['content'].dtype == np.float32
    for k in ('content', 'style'):
      np.testing.assert_array_equal(x[k], y[k])
    assert not np.array_equal(x['content'], z['content'])
  assert not np.array_equal(a[0]['content'], a[1]['content'])


def test_two_processes_split_the_global_batch(noise_dirs):
  cfg = _config(*noise_dirs, seed=1)
  one = data.make_train_dataset(cfg, global_batch_size=4)
  p0 = data.make_train_dataset(cfg, 4, process_index=0, process_count=2)
  p1 = data.make_train_dataset(cfg, 4, process_index=1, process_count=2)
  for i in (0, 3, 17):
    assert p0[i]['content'].shape == (2, 8, 8, 3)
    for k in ('content', 'style'):
      union = np.concatenate([p0[i][k], p1[i][k]])
      as_set = lambda x: sorted(img.tobytes() for img in x)
      assert as_set(union) == as_set(one[i][k])
      assert as_set(p0[i][k]) != as_set(p1[i][k])
  with pytest.raises(UserError, match='multiple'):
    data.make_train_dataset(cfg, 3, process_index=0, process_count=2)


def test_holdout_images_never_train(tmp_path):
  c_cols = [(10 * k + 5, 0, 0) for k in range(6)]
  s_cols = [(0, 10 * k + 5, 0) for k in range(5)]
  cfg = _config(_constant_folder(tmp_path / 'c', c_cols), _constant_folder(tmp_path / 's', s_cols),
                seed=2, num_pairs=2)
  ev = data.eval_pairs(cfg)
  held_c = {int(round(v * 255)) for v in ev['content'][:, 0, 0, 0]}
  held_s = {int(round(v * 255)) for v in ev['style'][:, 0, 0, 1]}
  assert len(held_c) == 2 and len(held_s) == 2  # the two pairs use both held-out images
  ds = data.make_train_dataset(cfg, global_batch_size=4)
  seen_c, seen_s = set(), set()
  for i in range(20):
    el = ds[i]
    for img in el['content']:
      assert (img == img[0, 0]).all()  # constant images stay constant, so colour = identity
      seen_c.add(int(round(img[0, 0, 0] * 255)))
    seen_s.update(int(round(v * 255)) for v in el['style'][:, 0, 0, 1])
  assert seen_c == {c[0] for c in c_cols} - held_c
  assert seen_s == {s[1] for s in s_cols} - held_s


def test_iterator_resume_and_start_step(noise_dirs):
  ds = data.make_train_dataset(_config(*noise_dirs, seed=0), global_batch_size=2)
  it = data.make_train_iterator(ds, num_threads=2, prefetch=2)
  for _ in range(3):
    next(it)
  state = it.get_state()
  expected = next(it)
  np.testing.assert_array_equal(expected['content'], ds[3]['content'])
  fresh = data.make_train_iterator(
      data.make_train_dataset(_config(*noise_dirs, seed=0), global_batch_size=2))
  fresh.set_state(state)
  got = next(fresh)
  for k in ('content', 'style'):
    np.testing.assert_array_equal(got[k], expected[k])
  it5 = data.make_train_iterator(ds, start_step=5, num_threads=0, prefetch=0)
  np.testing.assert_array_equal(next(it5)['style'], ds[5]['style'])
  np.testing.assert_array_equal(next(it5)['style'], ds[6]['style'])
  assert it5.get_state() == {'next_index': 7}


def test_eval_pairs_deterministic_from_eval_sources(tmp_path, noise_dirs):
  ec = _noise_folder(tmp_path / 'ec', 3, 7)
  es = _noise_folder(tmp_path / 'es', 2, 8)
  cfg = _config(*noise_dirs, num_pairs=5, eval_content=ec, eval_style=es, load=16, crop=12)
  a, b = data.eval_pairs(cfg), data.eval_pairs(cfg)
  assert a['content'].shape == (5, 12, 12, 3) and a['style'].shape == (5, 12, 12, 3)
  assert a['content'].dtype == np.float32 and len(a['names']) == 5
  np.testing.assert_array_equal(a['content'], b['content'])
  np.testing.assert_array_equal(a['style'], b['style'])
  assert a['names'] == b['names'] and len(set(a['names'])) == 5  # distinct pairs
  # With eval sources set, no training image is held out: step 0 (batch 7) is one whole epoch
  # of the 7 content images; with crop == load each crop is the whole resized image.
  cfg = dataclasses.replace(cfg, crop_size=16)
  batch = data.make_train_dataset(cfg, global_batch_size=7)[0]['content']
  whole = [data.preprocess_eval(data.load_image(p), 16, 16)
           for p in data.list_images(noise_dirs[0])]
  as_set = lambda x: sorted(img.tobytes() for img in x)
  assert as_set(batch) == as_set(whole)


# ----------------------------------------------------------------------------- sources


def test_demo_images_and_dataset():
  for kind in ('content', 'style', 'eval_content', 'eval_style'):
    paths = data.demo_images(kind)
    assert paths and all(os.path.isfile(p) for p in paths)
  cfg = _config('demo', 'demo', num_pairs=2, eval_content='demo', eval_style='demo', load=32,
                crop=16)
  el = data.make_train_dataset(cfg, global_batch_size=2)[0]
  assert el['content'].shape == (2, 16, 16, 3) and el['style'].shape == (2, 16, 16, 3)
  ev = data.eval_pairs(cfg)
  assert ev['content'].shape == (2, 16, 16, 3)


def test_open_source_bad_specs(tmp_path):
  cfg = _config('', '')
  with pytest.raises(UserError, match='config.data.content'):
    data.open_source('', cfg, 'content')
  with pytest.raises(UserError, match="unknown scheme 'hf:'"):
    data.open_source('hf:some/dataset', cfg, 'content')
  with pytest.raises(UserError, match='missing_dir'):
    data.open_source(str(tmp_path / 'missing_dir'), cfg, 'style')
  with pytest.raises(UserError, match='tfds:NAME:SPLIT'):
    data.open_source('tfds:justaname', cfg, 'content')


def _build_tiny_tfds(tmp_path):
  """Prepares a 3-image array_record TFDS dataset from image files (no TensorFlow needed)."""
  tfds = pytest.importorskip('tensorflow_datasets')
  paths = [_save(tmp_path / 'raw' / f'{k}.png', Image.new('RGB', (20, 16), (60 * k, 10, 200)))
           for k in range(2)]
  paths.append(_save(tmp_path / 'raw' / 'gray.png', np.full((16, 20), 99, np.uint8)))

  class JaxticketsTinyImages(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version('1.0.0')

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
          {'image': tfds.features.Image(shape=(None, None, 3))}))

    def _split_generators(self, dl_manager):
      return {'train': self._generate_examples()}

    def _generate_examples(self):
      for k, p in enumerate(paths):
        yield k, {'image': p}

  builder = JaxticketsTinyImages(data_dir=str(tmp_path / 'tfds'), file_format='array_record')
  builder.download_and_prepare()
  return str(tmp_path / 'tfds')


def test_tfds_source(tmp_path, monkeypatch):
  # TFDS leaves an empty mkdtemp folder each time it builds a dataset's info: keep it out of the machine's /tmp.
  monkeypatch.setattr(tempfile, 'tempdir', str(tmp_path))
  data_dir = _build_tiny_tfds(tmp_path)
  cfg = _config('tfds:jaxtickets_tiny_images:train', 'tfds:jaxtickets_tiny_images:train',
                num_pairs=1)
  cfg = dataclasses.replace(cfg, tfds_data_dir=data_dir)
  src = data.open_source(cfg.content, cfg, 'content')
  assert len(src) == 3
  colours = sorted(tuple(src[k][0, 0]) for k in range(3))
  assert colours == [(0, 10, 200), (60, 10, 200), (99, 99, 99)]
  assert all(src[k].shape == (16, 20, 3) and src[k].dtype == np.uint8 for k in range(3))
  el = data.make_train_dataset(cfg, global_batch_size=2)[0]
  assert el['content'].shape == (2, 8, 8, 3)
  cfg = dataclasses.replace(cfg, tfds_image_key='picture')
  with pytest.raises(UserError, match='tfds_image_key'):
    data.open_source(cfg.content, cfg, 'content')
  with pytest.raises(UserError, match='array_record'):
    data.open_source('tfds:no_such_dataset_xyz:train', cfg, 'content')


def test_crops_vary_per_sample(tmp_path, noise_dirs):
  one = _noise_folder(tmp_path / 'one', 1, 3)
  cfg = _config(one, one, eval_content=noise_dirs[0], eval_style=noise_dirs[1])
  el = data.make_train_dataset(cfg, global_batch_size=8)[0]
  # One image, eight samples: the crops differ because each sample has its own seeded RNG.
  assert len({img.tobytes() for img in el['content']}) > 3
  assert len({img.tobytes() for img in el['style']}) > 3


# ----------------------------------------------------------------------------- unreadable images


def _write_bad_files(folder):
  """One file of each unreadable kind; returns their paths."""
  os.makedirs(folder, exist_ok=True)
  trunc = os.path.join(folder, 'truncated.jpg')
  _save(trunc, np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
  with open(trunc, 'r+b') as f:
    f.truncate(300)
  corrupt = os.path.join(folder, 'corrupt.png')
  with open(corrupt, 'wb') as f:
    f.write(b'\x89PNG\r\n\x1a\n' + bytes(range(200)))
  text = os.path.join(folder, 'notes.jpg')
  with open(text, 'w') as f:
    f.write('this is a text file with an image extension\n')
  empty = os.path.join(folder, 'empty.png')
  open(empty, 'wb').close()
  return [trunc, corrupt, text, empty]


def test_unreadable_image_is_replaced_by_the_next_readable_one(tmp_path):
  colours = [(10 * k, 0, 0) for k in range(6)]
  folder = _constant_folder(tmp_path / 'c', colours)
  # img02 and img03 become unreadable; img05 too (wraps around to img00).
  for k in (2, 3, 5):
    with open(os.path.join(folder, f'img{k:02d}.png'), 'wb') as f:
      f.write(b'not an image')
  logs = []
  skips = data.SkipLog(logs.append)
  src = data.ImageSource(data.list_images(folder), 'content', where=folder)
  readable = sources._Readable(src, np.arange(6), 'content', skips)
  assert [readable.load(i)[0] for i in range(6)] == [0, 1, 4, 4, 4, 0]
  assert readable[2][0, 0, 0] == 40  # img04's red value
  assert len(skips) == 3 and skips.summary()['first'] == [os.path.join(folder, f'img{k:02d}.png') for k in (2, 3, 5)]
  assert len(logs) == 3 and all('skipping the unreadable content image' in m for m in logs)
  assert 'UnidentifiedImageError' in skips.summary()['files'][os.path.join(folder, 'img02.png')]
  # Substitutes stay inside the given split: index 3 of the subset [1, 3] falls back to 1, never to 4.
  sub = sources._Readable(src, [1, 3], 'content', data.SkipLog(logs.append))
  assert sub.load(3)[0] == 1
  # A resumed run merges the skips recorded before.
  again = data.SkipLog(logs.append)
  again.merge(skips.summary())
  assert len(again) == 3


def test_dataset_with_bad_files_is_deterministic_and_trains_on_good_ones(tmp_path):
  c = _constant_folder(tmp_path / 'c', [(200, 0, 0), (0, 200, 0)])
  bad = _write_bad_files(tmp_path / 'c')
  s = _noise_folder(tmp_path / 's', 3, 1)
  cfg = _config(c, s, eval_content='demo', eval_style='demo')
  skips = data.SkipLog(lambda m: None)
  a = data.make_train_dataset(cfg, global_batch_size=3, skip_log=skips)
  b = data.make_train_dataset(cfg, global_batch_size=3)
  for i in range(4):  # 12 samples: every content file is drawn at least once
    np.testing.assert_array_equal(a[i]['content'], b[i]['content'])
    colours = {tuple(np.round(img[0, 0] * 255).astype(int)) for img in a[i]['content']}
    assert colours <= {(200, 0, 0), (0, 200, 0)}
  assert sorted(skips.summary()['first']) == sorted(bad)


def test_every_file_bad_stops_with_one_sentence(tmp_path):
  folder = str(tmp_path / 'c')
  _write_bad_files(folder)
  cfg = _config(folder, _noise_folder(tmp_path / 's', 2, 1), eval_content='demo', eval_style='demo')
  with pytest.raises(UserError) as e:
    data.make_train_dataset(cfg, global_batch_size=2, skip_log=data.SkipLog(lambda m: None))
  msg = str(e.value)
  assert msg.startswith(f"Every one of the 4 content images of the content folder '{folder}' is unreadable")
  assert 'config.data.content' in msg and '\n' not in msg


def test_load_48_bit_rgb_png(tmp_path):
  import struct
  import zlib

  arr = np.zeros((4, 5, 3), np.uint16)
  arr[..., 0], arr[..., 1], arr[..., 2] = 65535, 32896, 2570
  raw = b''.join(b'\x00' + arr[y].astype('>u2').tobytes() for y in range(4))
  chunk = lambda t, d: struct.pack('>I', len(d)) + t + d + struct.pack('>I', zlib.crc32(t + d))
  path = tmp_path / 'rgb16.png'
  path.write_bytes(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', 5, 4, 16, 2, 0, 0, 0)) +
                   chunk(b'IDAT', zlib.compress(raw)) + chunk(b'IEND', b''))
  out = data.load_image(str(path))
  _check_rgb(out, (4, 5))
  np.testing.assert_allclose(out[0, 0], np.asarray([65535, 32896, 2570]) / 257, atol=1)


@pytest.mark.parametrize('n', [3, 40])
def test_order_is_grains_shuffle_repeated_with_whole_epochs_kept(monkeypatch, n):
  """_Order draws the values of grain's shuffle().repeat() (the independent formulation), across epochs, through
  the per-process epoch cache (small sources) and element by element (large ones)."""
  indices = np.arange(100, 100 + 2 * n, 2)
  grain_stream = pipeline.grain.MapDataset.source([int(i) for i in indices]).shuffle(seed=7).repeat(None)
  monkeypatch.setattr(pipeline._Order, 'WHOLE_EPOCHS_UP_TO', 10)
  monkeypatch.setattr(pipeline, '_EPOCHS', sources.BoundedCache(max_bytes=1 << 20))
  order = pipeline._Order(indices, 7)
  again = pipeline._Order(indices, 7)  # a second run of the process: its epochs come from the cache
  drawn = [order[j] for j in range(4 * n)]
  assert drawn == [grain_stream[j] for j in range(4 * n)] == [again[j] for j in range(4 * n)]
  assert sorted(drawn[:n]) == list(indices) and drawn[:n] != drawn[n:2 * n]  # a permutation, reshuffled per epoch
  assert len(pipeline._EPOCHS._items) == (4 if n <= 10 else 0)


def test_bounded_cache_drops_the_least_recently_used_beyond_its_bytes():
  cache = sources.BoundedCache(max_bytes=10)
  for key in 'abc':
    cache.put(key, key.upper(), 4)
  assert cache.get('a') is None and cache.get('b') == 'B'  # 'a' went when 'c' made 12 bytes
  cache.put('d', 'D', 4)  # 'c' is now the least recently used
  assert (cache.get('b'), cache.get('c'), cache.get('d')) == ('B', None, 'D')
  cache.put('huge', 'H', 11)  # larger than the whole cache: not kept, nothing dropped for it
  assert cache.get('huge') is None and cache.get('b') == 'B'


def test_resized_images_are_decoded_once_and_a_replaced_file_is_read_again(tmp_path, monkeypatch):
  folder = _noise_folder(tmp_path / 'c', 2, 3)
  src = data.ImageSource(data.list_images(folder), 'content', where=folder)
  monkeypatch.setattr(sources, '_RESIZED', sources.BoundedCache(max_bytes=1 << 20))
  readable = sources._Readable(src, np.arange(2), 'content', data.SkipLog(lambda m: None))
  expected = images._resize(data.load_image(src.paths[1]), 16)
  calls = []
  real_getitem = data.ImageSource.__getitem__
  monkeypatch.setattr(data.ImageSource, '__getitem__', lambda self, i: calls.append(i) or real_getitem(self, i))
  for _ in range(3):
    used, img = readable.load_resized(1, 16)
    assert used == 1 and not img.flags.writeable
    np.testing.assert_array_equal(img, expected)
  assert calls == [1]
  # Replaced by another image (new size and modification time): decoded again, the new pixels returned.
  new = np.full((30, 30, 3), 77, np.uint8)
  _save(src.paths[1], new)
  os.utime(src.paths[1], ns=(1, 10**9 + 12345))
  np.testing.assert_array_equal(readable.load_resized(1, 16)[1], images._resize(new, 16))
  assert calls == [1, 1]
