"""python -m jaxtickets.stylize: folders of odd-sized and grayscale images, .npy outputs, style mixes, errors."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from jaxtickets import checkpoint, inference, stylize
from jaxtickets.errors import UserError
from conftest import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def ported(tmp_path_factory):
  """Ported weights (model.json + params) of a tiny AdaIN, the fastest source to load from disk."""
  folder = tmp_path_factory.mktemp("ported")
  config = tiny_config()
  model, vgg = inference.model_and_vgg(config)
  params = jax.device_get(model.init(jax.random.PRNGKey(3), vgg))
  checkpoint.save_params(str(folder / "params"), {"params": params, "vgg": vgg})
  checkpoint.save_json(str(folder / "model.json"), {"model": "adain", "model_config": config.model.to_dict()})
  return str(folder), inference.Stylizer(model, params, vgg)


def write_image(path, size, mode="RGB", seed=0):
  rng = np.random.default_rng(seed)
  w, h = size
  arr = rng.integers(0, 256, (h, w) if mode == "L" else (h, w, len(mode)), dtype=np.uint8)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(arr, mode).save(path)
  return str(path)


def test_folder_with_odd_sizes_and_grayscale_writes_one_output_per_input(tmp_path, ported):
  _, st = ported
  content = tmp_path / "content"
  inputs = {"a.png": ((37, 45), "RGB"), "gray.png": ((30, 23), "L"), "sub/alpha.png": ((41, 33), "RGBA"),
            "sub/b.jpg": ((25, 51), "RGB")}
  for i, (name, (size, mode)) in enumerate(inputs.items()):
    write_image(content / name, size, mode, seed=i)
  (content / "notes.txt").write_text("not an image")
  style = write_image(tmp_path / "style.png", (29, 31), seed=9)
  written = stylize.run(st, str(content), [style], str(tmp_path / "out"), size=0)
  expected = sorted(str(tmp_path / "out" / os.path.splitext(n)[0]) + ".png" for n in inputs)
  assert sorted(written) == expected
  for name, ((w, h), _) in inputs.items():
    with Image.open(tmp_path / "out" / (os.path.splitext(name)[0] + ".png")) as img:
      assert img.size == (w, h) and img.mode == "RGB"  # native size kept (--size=0)
  # --size sets the shorter side, keeping the aspect ratio.
  (out,) = stylize.run(st, str(content / "a.png"), [style], str(tmp_path / "small.jpg"), size=24)
  with Image.open(out) as img:
    assert img.format == "JPEG" and img.size == (24, 29)


def test_npy_output_equals_the_stylizer(tmp_path, ported):
  _, st = ported
  content = write_image(tmp_path / "c.png", (37, 29), seed=1)
  s1, s2 = write_image(tmp_path / "s1.png", (32, 40), seed=2), write_image(tmp_path / "s2.png", (24, 24), seed=3)
  stylize.run(st, content, [s1], str(tmp_path / "one.npy"), size=0, alpha=0.7)
  c = np.asarray(Image.open(content), np.float32) / 255
  want = st.stylize(c, np.asarray(Image.open(s1), np.float32) / 255, alpha=0.7)
  got = np.load(tmp_path / "one.npy")
  assert got.dtype == np.float32 and got.shape == (29, 37, 3)
  np.testing.assert_array_equal(got, want)
  # Two styles with weights: the weighted sum of the single-style outputs.
  stylize.run(st, content, [s1, s2], str(tmp_path / "mix.npy"), style_weights=[3, 1], size=0)
  a = st.stylize(c, np.asarray(Image.open(s1), np.float32) / 255)
  b = st.stylize(c, np.asarray(Image.open(s2), np.float32) / 255)
  np.testing.assert_allclose(np.load(tmp_path / "mix.npy"), 0.75 * a + 0.25 * b, rtol=1e-5, atol=1e-6)


def test_bad_input_is_one_sentence(tmp_path, ported):
  _, st = ported
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


def test_cli_with_ported_weights(tmp_path, ported):
  folder, st = ported
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
  assert r.returncode != 0 and f"error: No ticket at '{tmp_path / 'no_ticket'}'" in r.stderr
  assert "Traceback" not in r.stderr
