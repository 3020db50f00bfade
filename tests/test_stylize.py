"""python -m jaxtickets.stylize: folders of odd-sized and grayscale images, .npy outputs, style mixes, every content x
style pair of --style_dir, content and style sizes, --crop, errors."""

import functools
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from jaxtickets.store import checkpoint
from jaxtickets.run import imp
from jaxtickets.tickets import inference
from jaxtickets.core import streams
from jaxtickets import config as config_lib, stylize
from jaxtickets.errors import UserError
from helpers import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def ported(tmp_path_factory):
  """Ported weights (model.json + params) of a tiny AdaIN, the fastest source to load from disk."""
  folder = tmp_path_factory.mktemp("ported")
  config = tiny_config()
  model, vgg = inference.model_and_vgg(config_lib.resolve(config).model)
  params = jax.device_get(model.init(jax.random.PRNGKey(3), vgg))
  checkpoint.save_params(str(folder / "params"), {"params": params, "vgg": vgg})
  checkpoint.save_json(str(folder / "model.json"), {"model": "adain", "model_config": config.model.to_dict()})
  return str(folder), inference.Stylizer(model, params, vgg), (model, params, vgg)


def direct(model, params, vgg, content, style, alpha=1.0):
  """The model's own stylize on one HxWx3 pair, with numpy's reflect padding to its divisor and the crop back: the
  promise of stylize_any_size, written apart from the Stylizer."""
  pad = lambda x: np.pad(x, ((0, -x.shape[0] % model.divisor), (0, -x.shape[1] % model.divisor), (0, 0)), "reflect")
  out = _jitted_stylize(model)(params, vgg, pad(content)[None], pad(style)[None], alpha)
  return np.asarray(out)[0, :content.shape[0], :content.shape[1]]


@functools.cache
def _jitted_stylize(model):
  return jax.jit(model.stylize, static_argnums=4)  # one per model: each shape compiles once (eager is slower)


def assert_close(got, want):
  """Equal to float rounding at the output's own scale (a random tiny network's outputs are small)."""
  scale = np.abs(want).max()
  assert scale > 0
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * scale)


def read(path):
  return np.asarray(Image.open(path), np.float32) / 255


@pytest.fixture(scope="module")
def tiny_ticket(tmp_path_factory):
  """Round 1 of a tiny run (1 step a round): a ticket with pruned weights, in its workdir."""
  from jaxtickets.store import workdir as workdir_lib

  workdir = str(tmp_path_factory.mktemp("run"))
  imp.run(config_lib.resolve(tiny_config(imp__rounds=1, train__steps=1)), workdir)
  return workdir_lib.ticket_dir(workdir, "imp", 1, 0)


def write_image(path, size, mode="RGB", seed=0):
  rng = np.random.default_rng(seed)
  w, h = size
  arr = rng.integers(0, 256, (h, w) if mode == "L" else (h, w, len(mode)), dtype=np.uint8)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(arr, mode).save(path)
  return str(path)


def test_folder_with_odd_sizes_and_grayscale_writes_one_output_per_input(tmp_path, ported):
  _, st, _ = ported
  content = tmp_path / "content"
  inputs = {"a.png": ((37, 45), "RGB"), "gray.png": ((30, 23), "L"), "sub/alpha.png": ((41, 33), "RGBA"),
            "sub/b.jpg": ((25, 51), "RGB")}
  for i, (name, (size, mode)) in enumerate(inputs.items()):
    write_image(content / name, size, mode, seed=i)
  (content / "notes.txt").write_text("not an image")
  style = write_image(tmp_path / "style.png", (29, 31), seed=9)
  written = stylize.run(st, str(content), [style], str(tmp_path / "out"), size=0)
  expected = sorted(str(tmp_path / "out" / os.path.splitext(n)[0]) + "_stylized_style.png" for n in inputs)
  assert sorted(written) == expected
  for name, ((w, h), _) in inputs.items():
    with Image.open(tmp_path / "out" / (os.path.splitext(name)[0] + "_stylized_style.png")) as img:
      assert img.size == (w, h) and img.mode == "RGB"  # native size kept (--size=0)
  # --size sets the shorter side, keeping the aspect ratio.
  (out,) = stylize.run(st, str(content / "a.png"), [style], str(tmp_path / "small.jpg"), size=24)
  with Image.open(out) as img:
    assert img.format == "JPEG" and img.size == (24, 29)


def test_npy_output_equals_the_models_own_stylize(tmp_path, ported):
  _, st, (model, params, vgg) = ported
  content = write_image(tmp_path / "c.png", (37, 29), seed=1)  # not a multiple of the divisor: padded, cropped
  s1, s2 = write_image(tmp_path / "s1.png", (32, 40), seed=2), write_image(tmp_path / "s2.png", (24, 24), seed=3)
  stylize.run(st, content, [s1], str(tmp_path / "one.npy"), size=0, alpha=0.7)
  c = read(content)
  want = direct(model, params, vgg, c, read(s1), alpha=0.7)
  got = np.load(tmp_path / "one.npy")
  assert got.dtype == np.float32 and got.shape == (29, 37, 3)
  assert_close(got, want)
  # Two styles with weights: the weighted sum of the single-style outputs.
  stylize.run(st, content, [s1, s2], str(tmp_path / "mix.npy"), style_weights=[3, 1], size=0)
  a, b = direct(model, params, vgg, c, read(s1)), direct(model, params, vgg, c, read(s2))
  assert np.abs(a - b).max() > 0.1 * np.abs(a).max()  # the styles matter, so the weights are seen
  assert_close(np.load(tmp_path / "mix.npy"), 0.75 * a + 0.25 * b)


def test_bad_input_is_one_sentence(tmp_path, ported):
  _, st, _ = ported
  img = write_image(tmp_path / "c.png", (16, 16))
  with pytest.raises(UserError, match="does not exist"):
    stylize.run(st, str(tmp_path / "missing.png"), [img], str(tmp_path / "o.png"))
  with pytest.raises(UserError, match="must be a folder"):
    stylize.run(st, str(tmp_path), [img], str(tmp_path / "o.png"))
  with pytest.raises(UserError, match="extension '.gif'"):
    stylize.run(st, img, [img], str(tmp_path / "o.gif"))
  with pytest.raises(UserError, match="do not fit 2 style"):
    stylize.run(st, img, [img, img], str(tmp_path / "o.png"), style_weights=[1.0])
  with pytest.raises(UserError, match="nope.png' does not exist"):
    stylize.run(st, img, [str(tmp_path / "nope.png")], str(tmp_path / "o.png"))


@pytest.mark.e2e
def test_cli_with_ported_weights(tmp_path, ported):
  folder, st, _ = ported
  content = write_image(tmp_path / "c.png", (27, 35), mode="L", seed=4)
  style = write_image(tmp_path / "s.png", (32, 32), seed=5)
  run = lambda *a: subprocess.run([sys.executable, "-m", "jaxtickets.stylize", *a], cwd=ROOT, capture_output=True,
                                  text=True, timeout=300)
  r = run(f"--weights={folder}", f"--content={content}", f"--style={style}", f"--out={tmp_path / 'o.npy'}",
          "--size=0", "--preserve_color")
  assert r.returncode == 0, r.stderr
  c = np.repeat(np.asarray(Image.open(content), np.float32)[..., None] / 255, 3, axis=-1)
  want = st.stylize(c, np.asarray(Image.open(style), np.float32) / 255, preserve_color=True)
  np.testing.assert_allclose(np.load(tmp_path / "o.npy"), want, rtol=1e-5, atol=1e-5)
  r = run(f"--ticket={tmp_path / 'no_ticket'}", f"--content={content}", f"--style={style}", "--out=o.png")
  assert r.returncode == 2 and f"error: No ticket at '{tmp_path / 'no_ticket'}'" in r.stderr
  assert "Traceback" not in r.stderr


@pytest.mark.e2e
def test_cli_with_a_ticket_writes_the_masked_trained_networks_output(tmp_path, tiny_ticket):
  from jaxtickets.models import get_model

  content = write_image(tmp_path / "c.png", (36, 28), seed=6)
  style = write_image(tmp_path / "s.png", (30, 34), seed=7)
  r = subprocess.run([sys.executable, "-m", "jaxtickets.stylize", f"--ticket={tiny_ticket}", f"--content={content}",
                      f"--style={style}", f"--out={tmp_path / 'o.npy'}", "--size=0"], cwd=ROOT, capture_output=True,
                     text=True, timeout=300)
  assert r.returncode == 0, r.stderr
  # The run's model and VGG as its config makes them (vgg_weights empty: random by config.seed), the ticket's weights
  # times its masks: pruned weights stay out even where the stored weights are not zero (the rewind point).
  config = tiny_config(imp__rounds=1, train__steps=1)
  model = get_model("adain")(config.model)
  vgg = jax.device_get(model.init_vgg(streams.key(config.seed, streams.Stream.VGG)))
  t = checkpoint.load_ticket(tiny_ticket)
  assert sum(int(np.size(m) - np.count_nonzero(m)) for m in jax.tree.leaves(t.masks)) > 0
  masked = lambda p: jax.tree.map(lambda w, m: np.where(m, w, 0), p, t.masks)
  got = np.load(tmp_path / "o.npy")  # float32 as computed: a tiny random network's outputs are far below 8 bits
  assert got.shape == (28, 36, 3)
  assert_close(got, direct(model, masked(t.trained_params), vgg, read(content), read(style)))
  rewind = inference.Stylizer.from_ticket(tiny_ticket, which="rewind")
  assert any(np.any(w[~m] != 0) for w, m in zip(jax.tree.leaves(t.rewind_params), jax.tree.leaves(t.masks)))
  want = direct(model, masked(t.rewind_params), vgg, read(content), read(style))
  assert_close(rewind.stylize(read(content), read(style)), want)
  unmasked = direct(model, t.rewind_params, vgg, read(content), read(style))
  assert np.abs(unmasked - want).max() > 1e-2 * np.abs(want).max()  # so the masks are seen


def test_style_dir_writes_every_pair_under_its_own_name(tmp_path, ported):
  _, st, _ = ported
  contents = [write_image(tmp_path / "content" / n, (24, 32), seed=i) for i, n in enumerate(("cat.png", "dog.jpg"))]
  styles = [write_image(tmp_path / "styles" / n, (32, 24), seed=5 + i) for i, n in enumerate(("wave.png", "ink.png"))]
  (tmp_path / "styles" / "readme.txt").write_text("not an image")
  out = tmp_path / "out"
  written = stylize.run(st, str(tmp_path / "content"), None, str(out), style_dir=str(tmp_path / "styles"), size=0,
                        alpha=0.8, ext=".npy")
  names = sorted(f"{c}_stylized_{s}.npy" for c in ("cat", "dog") for s in ("wave", "ink"))
  assert sorted(os.path.relpath(p, out) for p in written) == names == sorted(os.listdir(out))
  # Each file is what stylizing that pair alone writes; the two styles differ (nothing was overwritten).
  for c in contents:
    for s in styles:
      (alone,) = stylize.run(st, c, [s], str(tmp_path / "alone.npy"), size=0, alpha=0.8)
      name = f"{os.path.splitext(os.path.basename(c))[0]}_stylized_{os.path.splitext(os.path.basename(s))[0]}.npy"
      np.testing.assert_array_equal(np.load(out / name), np.load(alone))
  a, b = np.load(out / "cat_stylized_wave.npy"), np.load(out / "cat_stylized_ink.npy")
  assert np.abs(a - b).max() > 0.1 * np.abs(a).max()
  # One content file into a folder, a mix of styles: the styles' names joined.
  (mixed,) = stylize.run(st, contents[0], styles, str(out))
  assert os.path.basename(mixed) == "cat_stylized_wave+ink.png"


class _Shapes:
  """A stand-in stylizer: records the content and style shapes it is given and returns the content."""

  def __init__(self):
    self.seen = []

  def stylize_mix(self, content, styles, weights=None, alpha=1.0, *, preserve_color=False):
    self.seen.append((content.shape, [s.shape for s in styles]))
    return content


def test_content_size_style_size_and_crop(tmp_path):
  content = write_image(tmp_path / "c.png", (40, 60), seed=1)  # 40 wide, 60 high
  style = write_image(tmp_path / "s.png", (50, 30), seed=2)
  rec = _Shapes()
  (out,) = stylize.run(rec, content, [style], str(tmp_path / "o.npy"), content_size=20, style_size=16)
  assert rec.seen[-1] == ((30, 20, 3), [(16, 27, 3)])  # each shorter side its own size, aspect kept
  np.testing.assert_array_equal(np.load(out), stylize.load(content, 20))
  stylize.run(rec, content, [style], str(tmp_path / "o.npy"), size=24, style_size=0)
  assert rec.seen[-1] == ((36, 24, 3), [(30, 50, 3)])  # --size for the content, the style at its native size
  stylize.run(rec, content, [style], str(tmp_path / "o.npy"), content_size=20, style_size=16, crop=True)
  assert rec.seen[-1] == ((20, 20, 3), [(16, 16, 3)])
  # The centered square, its corner rounded as torchvision's CenterCrop: rows 5..24 of the 30x20 resize.
  img = np.asarray(Image.open(content))
  np.testing.assert_array_equal(np.load(tmp_path / "o.npy") * 255, stylize.resize_shorter(img, 20)[5:25])
  np.testing.assert_array_equal(stylize.load(content, 0, crop=True) * 255, img[10:50])
  with pytest.raises(UserError, match=r"^--style_size=-1 is not allowed"):
    stylize.run(rec, content, [style], str(tmp_path / "o.npy"), style_size=-1)


def test_style_dir_mistakes_are_one_sentence(tmp_path, ported):
  _, st, _ = ported
  img = write_image(tmp_path / "c.png", (16, 16))
  (tmp_path / "empty").mkdir()
  styles = tmp_path / "styles"
  for name in ("a.png", "b.png"):
    write_image(styles / name, (16, 16))
  cases = [
      (dict(style_dir=str(tmp_path / "empty")), r"The style folder '.*empty' has no images"),
      (dict(style_dir=str(tmp_path / "missing")), r"--style_dir='.*missing' is not a folder"),
      (dict(styles=[img], style_dir=str(styles)), r"Pass one of --style=FILE\[,FILE...\] .* not both"),
      (dict(style_dir=str(styles), style_weights=[1.0]), r"with --style_dir each style makes its own pair"),
      (dict(style_dir=str(styles), out=str(tmp_path / "one.png")), r"is one file, but --style_dir gives 2 styles"),
  ]
  for kwargs, message in cases:
    args = {"styles": None, "out": str(tmp_path / "out"), **kwargs}
    with pytest.raises(UserError, match=message):
      stylize.run(st, img, args.pop("styles"), args.pop("out"), **args)
  # Two inputs that would write one file.
  write_image(tmp_path / "two" / "x.png", (16, 16))
  write_image(tmp_path / "two" / "x.jpg", (16, 16))
  with pytest.raises(UserError, match=r"would both be written to '.*x_stylized_a.png': rename one"):
    stylize.run(st, str(tmp_path / "two"), None, str(tmp_path / "out"), style_dir=str(styles))


@pytest.mark.e2e
def test_cli_style_dir_and_its_mistakes(tmp_path, ported):
  folder, _, _ = ported
  content = write_image(tmp_path / "c.png", (24, 24), seed=1)
  for i, name in enumerate(("a.png", "b.jpg")):
    write_image(tmp_path / "styles" / name, (24, 24), seed=2 + i)
  run = lambda *a: subprocess.run([sys.executable, "-m", "jaxtickets.stylize", f"--weights={folder}", *a], cwd=ROOT,
                                  capture_output=True, text=True, timeout=300)
  r = run(f"--content_dir={tmp_path}", f"--style_dir={tmp_path / 'nope'}", f"--out={tmp_path / 'out'}")
  assert r.returncode == 2 and r.stderr.strip().splitlines() == [
      f"error: --style_dir='{tmp_path / 'nope'}' is not a folder: pass a folder of style images (or one image as "
      "--style=FILE)."]
  r = run(f"--content={content}", f"--style_dir={tmp_path / 'styles'}", f"--out={tmp_path / 'out'}", "--crop",
          "--content_size=16", "--style_size=8")
  assert r.returncode == 0, r.stderr
  assert sorted(os.listdir(tmp_path / "out")) == ["c_stylized_a.png", "c_stylized_b.png"]
  with Image.open(tmp_path / "out" / "c_stylized_a.png") as img:
    assert img.size == (16, 16)


def test_a_large_photo_is_decoded_reduced_for_the_size_asked_and_looks_the_same(tmp_path, monkeypatch):
  """A 3000x2000 JPEG stylized at --size=64 is decoded at a fraction of its pixels (JPEG's DCT scaling), and the
  image the model gets is the full decode's resize up to rounding."""
  from jaxtickets import data, stylize
  yy, xx = np.mgrid[0:2000, 0:3000]
  pixels = np.stack([xx * 255 // 2999, yy * 255 // 1999, (xx + yy) * 255 // 4998], -1).astype(np.uint8)
  path = str(tmp_path / "big.jpg")
  Image.fromarray(pixels).save(path, quality=95)
  asked = []
  load_image = data.load_image
  monkeypatch.setattr(data, "load_image", lambda p, min_size=None: asked.append(min_size) or load_image(p, min_size))
  got = stylize.load(path, 64)
  assert asked == [64] and got.shape == (64, 96, 3)
  full = stylize.resize_shorter(load_image(path), 64).astype(np.float32) / 255
  assert np.abs(got - full).mean() < 2 / 255


def test_an_output_under_a_file_is_one_sentence(tmp_path):
  (tmp_path / "taken").write_text("a file")
  with pytest.raises(UserError, match=r"'.*taken' is a file; choose another path"):
    stylize.save(str(tmp_path / "taken" / "out.png"), np.zeros((8, 8, 3), np.float32))
  stylize.save(str(tmp_path / "new" / "out.png"), np.zeros((8, 8, 3), np.float32))  # its folder is made
  assert (tmp_path / "new" / "out.png").is_file()
